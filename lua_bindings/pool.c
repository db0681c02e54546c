/*
** pool.c -- the C part of `pool` (module "_pool"): forking pool workers,
** the framing of task and result messages and the pool's I/O thread.
** The worker's side of the frames and the ring is pool_worker.c, the
** packed form of map chunks pool_pack.c; the rest (Pool, ThreadPool,
** AsyncResult, the worker's task loop) is lib/pool.lua.
**
** Each worker has its own socketpair with the parent (tasks go down it)
** and its own shared-memory ring (results come back through it; see
** pl_ring).  The parent remembers, per worker, the tasks it sent in
** order: results come back in that order, and the worker records in
** its ring the job it took, so when its socket reaches end of file (the
** worker died) the task it was running is known exactly.  That task
** fails with WorkerLostError; what it finished is still in its ring;
** the tasks queued behind it were never started and go back to the
** pending queue.  This is how the pool never hangs.
**
** The I/O thread is plain C: it never touches Lua, so tasks flow to the
** workers and results flow back while Lua threads hold the GIL.  It
** keeps few tasks in flight per worker (one while tasks are long, up to
** 128 while they take microseconds), which balances the load and keeps
** the workers busy.  Lua takes finished results with core:wait(), which
** blocks with the GIL released.  Submitting never waits for the I/O
** thread (a list of its own), and wakes it only when a worker has room.
**
** Functions without upvalues of their own are pickled once per pool and
** sent once per worker (definition frames); tasks then name them by id.
**
** Frames (host byte order, same machine):
**   parent -> worker:  u32 len, u64 job, u32 #payload, payload, extra
**                      (len = 12 + #payload + #extra; extra: a map
**                      chunk, raw, outside the signed pickle; job < 0:
**                      the definition of function -job)
**   worker -> parent:  u32 len, u64 job, u8 ok, payload   (len = 9 + #payload)
*/
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/wait.h>

#include "mt_core.h"
#include "pickle.h"
#include "pool_pack.h"
#include "pool_ring.h"
#include "shm.h"

#define PL_MAXIOV 64

/* ------------------------------------------------------------ frames */

typedef struct pl_frame {
  struct pl_frame *next;
  uint64_t job;             /* a definition (see below): -fid */
  uint32_t fid;             /* the cached function the task calls; 0: none */
  size_t len, sent;         /* the whole frame, and how much is written */
  char data[];
} pl_frame;

typedef struct pl_fifo {
  pl_frame *head, *tail;
  size_t count;
} pl_fifo;

static void fifo_push(pl_fifo *q, pl_frame *f) {
  f->next = NULL;
  if (q->tail) q->tail->next = f;
  else q->head = f;
  q->tail = f;
  q->count++;
}

static pl_frame *fifo_pop(pl_fifo *q) {
  pl_frame *f = q->head;
  if (f == NULL) return NULL;
  q->head = f->next;
  if (q->head == NULL) q->tail = NULL;
  q->count--;
  f->next = NULL;
  return f;
}

/* Puts the whole of 'from' in front of 'to', keeping its order. */
static void fifo_prepend(pl_fifo *to, pl_fifo *from) {
  if (from->head == NULL) return;
  from->tail->next = to->head;
  if (to->tail == NULL) to->tail = from->tail;
  to->head = from->head;
  to->count += from->count;
  from->head = from->tail = NULL;
  from->count = 0;
}

static void fifo_free(pl_fifo *q) {
  pl_frame *f;
  while ((f = fifo_pop(q)) != NULL) free(f);
}

/* A definition frame gives a worker the pickle of a function that
** tasks then name by a small id (fid): a function without upvalues of
** its own is pickled, signed and checked once per pool, loaded once per
** worker.  Its job field is -fid; it gets no result. */
static int is_def(const pl_frame *f) { return (int64_t)f->job < 0; }

/* Removes the definitions from q (a dead worker's: the next one gets
** its own). */
static void drop_defs(pl_fifo *q) {
  pl_fifo keep = { NULL, NULL, 0 };
  pl_frame *f;
  while ((f = fifo_pop(q)) != NULL) {
    if (is_def(f)) free(f);
    else fifo_push(&keep, f);
  }
  *q = keep;
}

/* ------------------------------------------------------------ events */

enum { EV_RESULT = 1, EV_LOST = 2, EV_EXITED = 3, EV_CANCELLED = 4 };

typedef struct pl_event {
  struct pl_event *next;
  int kind;
  int ok;                   /* RESULT: success; LOST/EXITED: respawn wanted */
  int slot;
  uint64_t job;             /* 0 for LOST/EXITED with no task lost */
  size_t len;
  char data[];              /* RESULT: the payload; LOST/EXITED: a message */
} pl_event;

/* ------------------------------------------------------ result rings */

/* pl_ring: see pool_ring.h */
static void ring_reset(pl_ring *r) {
  atomic_store(&r->head, 0);
  atomic_store(&r->tail, 0);
  atomic_store(&r->took, 0);
  atomic_store(&r->parent_idle, 0);
  atomic_store(&r->worker_waits, 0);
}

/* ----------------------------------------------------------- workers */

enum { W_EMPTY, W_LIVE, W_RESPAWN, W_DEAD };

typedef struct pl_worker {
  int state;
  pid_t pid;
  int fd;                   /* the parent's end, non-blocking; -1: closed */
  int shut;                 /* its write side shut: it gets no more tasks */
  int open;                 /* io_dispatch: may get tasks this round */
  pl_fifo inflight;         /* sent (or being sent), oldest first */
  pl_frame *unsent;         /* first frame of inflight not fully written */
  long given;               /* tasks given during its life */
  long done;                /* results received during its life */
  double service;           /* estimated seconds per task; < 0: unknown */
  double mark;              /* when its current task began, roughly */
  char *ibuf;
  size_t ilen, icap;
  unsigned char *known;     /* known[fid]: this worker has that function */
  size_t nknown;
} pl_worker;

typedef struct pl_core {
  pthread_mutex_t mu;
  pthread_cond_t cond;      /* an event arrived, or the I/O thread ended */
  int refs;                 /* the userdata, the I/O thread, waiters */
  int efd;                  /* eventfd that wakes the I/O thread */
  int poked;
  int closing, terminating, finished, started;
  int io_up;                /* the I/O thread runs io_main (see start_io) */
  mt_thread *handler;       /* the pool's result thread (core:adopt) */
  struct pl_core *next_core, *prev_core;   /* every core of the process */
  pid_t owner;              /* the process that made the pool */
  long maxtasks;            /* per worker; 0: unlimited */
  int nworkers;
  pl_worker *w;
  struct pollfd *pfd;       /* the I/O thread's, nworkers + 1 (kept here,
                               reachable, not on its stack: a forked
                               worker has no I/O thread) */
  int *pslot;
  pl_ring *rings;           /* shared with the workers, one per slot */
  struct pl_def { char *p; size_t len; } *defs;   /* defs[fid]: a pickle */
  size_t ndefs;
  pl_fifo pending;
  /* Submissions go through a list of their own under a mutex held only
  ** for a push: the submitting Lua thread never waits while the I/O
  ** thread holds c->mu for a write or a drain.  The I/O thread is woken
  ** for new tasks only when some worker has room for them (hungry);
  ** otherwise it takes them when results come back. */
  pthread_mutex_t in_mu;
  pl_fifo incoming;
  int hungry, in_poked, in_closed;
  pl_event *ev_head, *ev_tail;
  size_t nev, evbytes;      /* events queued, and their bytes */
  double last_take;         /* when Lua last took events */
  double service_hint;      /* the latest estimate of any worker; < 0: none */
} pl_core;

static const char CORE_MT[] = "mtlua.pool_core";

/* Every fd of every pool of this process, so that a new worker closes
** the ones that are not its own (a worker keeping a sibling's socket
** open would hide that sibling's death). */
static pthread_mutex_t fds_mu = PTHREAD_MUTEX_INITIALIZER;
static int *fds_list;
static int fds_count, fds_cap;

static void fds_add(int fd) {
  pthread_mutex_lock(&fds_mu);
  if (fds_count == fds_cap) {
    int cap = fds_cap ? fds_cap * 2 : 32;
    int *p = realloc(fds_list, (size_t)cap * sizeof *p);
    if (p == NULL) { pthread_mutex_unlock(&fds_mu); return; }
    fds_list = p;
    fds_cap = cap;
  }
  fds_list[fds_count++] = fd;
  pthread_mutex_unlock(&fds_mu);
}

static void fds_remove(int fd) {
  pthread_mutex_lock(&fds_mu);
  for (int i = 0; i < fds_count; i++)
    if (fds_list[i] == fd) { fds_list[i] = fds_list[--fds_count]; break; }
  pthread_mutex_unlock(&fds_mu);
}

static void close_fd(int *fd) {
  if (*fd >= 0) {
    fds_remove(*fd);
    close(*fd);
    *fd = -1;
  }
}

/* ------------------------------------------------------------ forking */

/* Forking while another thread is inside malloc leaves the child's
** allocator locked when the allocator has no fork handlers (glibc's
** has; AddressSanitizer's has not: a new worker then hung at its first
** allocation).  Every allocation of an I/O thread happens under its
** core's mutex, so a fork holds all of them, and the fd list's lock:
** no pool thread is inside malloc or holds a pool lock at the fork. */
static pthread_mutex_t cores_mu = PTHREAD_MUTEX_INITIALIZER;
static struct pl_core *cores;

/* I/O threads that ended: a thread's exit frees memory too, so a fork
** (and a new pool) first waits for them to be gone.  cores_mu held. */
static pthread_t ended_io[64];
static int nended_io;
static atomic_int io_exiting;   /* I/O threads past their loop, not listed */
static pthread_cond_t io_ended_cond = PTHREAD_COND_INITIALIZER;

static void reap_ended_io(void) {
  for (int i = 0; i < nended_io; i++) pthread_join(ended_io[i], NULL);
  nended_io = 0;
}

/* At exit, the ended ones are joined too, after waiting a little for
** those that are ending (a sanitizer counts a joinable thread that
** ended and was never joined as leaked). */
static void reap_at_exit(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  ts.tv_sec += 2;
  pthread_mutex_lock(&cores_mu);
  while (atomic_load(&io_exiting) > 0)
    if (pthread_cond_timedwait(&io_ended_cond, &cores_mu, &ts) == ETIMEDOUT) break;
  reap_ended_io();
  pthread_mutex_unlock(&cores_mu);
}

static void register_reaper(void) { atexit(reap_at_exit); }
static pthread_once_t reaper_once = PTHREAD_ONCE_INIT;

static void io_ended(void) {
  pthread_mutex_lock(&cores_mu);
  if (nended_io == (int)(sizeof ended_io / sizeof ended_io[0])) reap_ended_io();
  ended_io[nended_io++] = pthread_self();
  atomic_fetch_sub(&io_exiting, 1);
  pthread_cond_broadcast(&io_ended_cond);
  pthread_mutex_unlock(&cores_mu);
}

static void cores_link(struct pl_core *c) {
  pthread_mutex_lock(&cores_mu);
  reap_ended_io();
  c->prev_core = NULL;
  c->next_core = cores;
  if (cores) cores->prev_core = c;
  cores = c;
  pthread_mutex_unlock(&cores_mu);
}

static void cores_unlink(struct pl_core *c) {   /* cores_mu held */
  if (c->prev_core) c->prev_core->next_core = c->next_core;
  else cores = c->next_core;
  if (c->next_core) c->next_core->prev_core = c->prev_core;
}

static void fork_prepare(void) {
  pthread_mutex_lock(&cores_mu);
  reap_ended_io();
  for (struct pl_core *c = cores; c; c = c->next_core) pthread_mutex_lock(&c->mu);
  pthread_mutex_lock(&fds_mu);
}

static void fork_parent(void) {
  pthread_mutex_unlock(&fds_mu);
  for (struct pl_core *c = cores; c; c = c->next_core) pthread_mutex_unlock(&c->mu);
  pthread_mutex_unlock(&cores_mu);
}

/* In the child the parent's pools are not ours: their locks are made
** usable (free), nothing else. */
static void fork_child(void) {
  pthread_mutex_init(&fds_mu, NULL);
  for (struct pl_core *c = cores; c; c = c->next_core) {
    pthread_mutex_init(&c->mu, NULL);
    pthread_mutex_init(&c->in_mu, NULL);
    pthread_cond_init(&c->cond, NULL);
  }
  pthread_mutex_init(&cores_mu, NULL);
  pthread_cond_init(&io_ended_cond, NULL);
  nended_io = 0;   /* the parent's threads, not ours */
  atomic_store(&io_exiting, 0);
}

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void core_unref(pl_core *c) {
  pthread_mutex_lock(&c->mu);
  int last = --c->refs == 0;
  pthread_mutex_unlock(&c->mu);
  if (!last) return;
  /* frees under cores_mu: a fork elsewhere waits for them (see above) */
  pthread_mutex_lock(&cores_mu);
  cores_unlink(c);
  for (size_t i = 0; i < c->ndefs; i++) free(c->defs[i].p);
  free(c->defs);
  for (int i = 0; i < c->nworkers; i++) {
    fifo_free(&c->w[i].inflight);
    free(c->w[i].ibuf);
    free(c->w[i].known);
    close_fd(&c->w[i].fd);
  }
  fifo_free(&c->pending);
  fifo_free(&c->incoming);
  pthread_mutex_destroy(&c->in_mu);
  while (c->ev_head) {
    pl_event *e = c->ev_head;
    c->ev_head = e->next;
    free(e);
  }
  close_fd(&c->efd);
  munmap(c->rings, (size_t)c->nworkers * sizeof *c->rings);
  pthread_mutex_destroy(&c->mu);
  pthread_cond_destroy(&c->cond);
  free(c->w);
  free(c->pfd);
  free(c->pslot);
  free(c);
  pthread_mutex_unlock(&cores_mu);
}

/* Wakes the I/O thread (c->mu held).  One write until it has looked. */
static void core_poke(pl_core *c) {
  if (c->poked) return;
  uint64_t one = 1;
  c->poked = 1;
  if (write(c->efd, &one, sizeof one) < 0) { /* full counter: awake anyway */ }
}

static void push_event(pl_core *c, int kind, uint64_t job, int ok, int slot,
                       const char *data, size_t len) {
  pl_event *e = malloc(sizeof *e + len);
  if (e == NULL) return;   /* out of memory: the waiter will see a lost job */
  e->next = NULL;
  e->kind = kind;
  e->job = job;
  e->ok = ok;
  e->slot = slot;
  e->len = len;
  if (len) memcpy(e->data, data, len);
  if (c->ev_tail) c->ev_tail->next = e;
  else c->ev_head = e;
  c->ev_tail = e;
  c->nev++;
  c->evbytes += len;
}

static void cancel_fifo(pl_core *c, pl_fifo *q) {
  pl_frame *f;
  while ((f = fifo_pop(q)) != NULL) {
    push_event(c, EV_CANCELLED, f->job, 0, -1, NULL, 0);
    free(f);
  }
}

/* ------------------------------------------------------ the I/O thread */

/* How many tasks a worker may hold: one while its tasks are long (the
** load stays balanced and a lost worker fails one task), more while
** they are short, so that it never waits for the parent.  A worker
** that has finished nothing yet goes by the pool's latest estimate:
** with a limit of one, a map's chunks all went to the worker that had
** run an earlier apply while the other sat idle after its first. */
static size_t worker_limit(const pl_core *c, const pl_worker *w) {
  double service = w->service >= 0 ? w->service : c->service_hint;
  if (service < 0) return 1;
  if (service < 20e-6) return 128;
  if (service < 200e-6) return 32;
  if (service < 2e-3) return 8;
  if (service < 20e-3) return 2;
  return 1;
}

static int worker_room(pl_core *c, pl_worker *w) {
  if (w->state != W_LIVE || w->shut) return 0;
  if (c->maxtasks > 0 && w->given >= c->maxtasks) return 0;
  /* refill only below half the limit, then up to it: tasks go out in
  ** batches, one write and one wake-up of the worker for many */
  size_t lim = worker_limit(c, w);
  return w->inflight.count == 0 || w->inflight.count <= lim / 2;
}

static void io_write(pl_core *c, pl_worker *w) {
  while (w->unsent != NULL && w->fd >= 0) {
    struct iovec iov[PL_MAXIOV];
    int n = 0;
    for (pl_frame *f = w->unsent; f != NULL && n < PL_MAXIOV; f = f->next, n++) {
      iov[n].iov_base = f->data + f->sent;
      iov[n].iov_len = f->len - f->sent;
    }
    struct msghdr msg;
    memset(&msg, 0, sizeof msg);
    msg.msg_iov = iov;
    msg.msg_iovlen = (size_t)n;
    ssize_t r = sendmsg(w->fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (r < 0) {
      if (errno == EINTR) continue;
      return;   /* EAGAIN: poll says when; EPIPE: end of file is coming */
    }
    size_t left = (size_t)r;
    while (left > 0 && w->unsent != NULL) {
      pl_frame *f = w->unsent;
      size_t rest = f->len - f->sent;
      if (left >= rest) { f->sent = f->len; left -= rest; w->unsent = f->next; }
      else { f->sent += left; left = 0; }
    }
  }
  (void)c;
}

static void push_out(pl_worker *w, pl_frame *f) {
  fifo_push(&w->inflight, f);
  if (w->unsent == NULL) w->unsent = f;
}

/* Makes sure worker w has function fid before a task of it: queues its
** definition, once per worker life. */
static void give_def(pl_core *c, pl_worker *w, uint32_t fid) {
  if (fid == 0 || fid >= c->ndefs || c->defs[fid].p == NULL) return;
  if (fid < w->nknown && w->known[fid]) return;
  if (fid >= w->nknown) {
    size_t n = w->nknown ? w->nknown : 16;
    while (n <= fid) n *= 2;
    unsigned char *k = realloc(w->known, n);
    if (k == NULL) return;   /* the worker reports the unknown function */
    memset(k + w->nknown, 0, n - w->nknown);
    w->known = k;
    w->nknown = n;
  }
  size_t plen = c->defs[fid].len;
  pl_frame *f = malloc(sizeof *f + PL_HDR_TASK + plen);
  if (f == NULL) return;
  uint32_t flen = (uint32_t)(12 + plen), p32 = (uint32_t)plen;
  uint64_t j = (uint64_t)(-(int64_t)fid);
  f->job = j;
  f->fid = 0;
  f->len = PL_HDR_TASK + plen;
  f->sent = 0;
  memcpy(f->data, &flen, 4);
  memcpy(f->data + 4, &j, 8);
  memcpy(f->data + 12, &p32, 4);
  memcpy(f->data + PL_HDR_TASK, c->defs[fid].p, plen);
  push_out(w, f);
  w->known[fid] = 1;
}

static void give(pl_core *c, pl_worker *w, pl_frame *f) {
  if (w->inflight.count == 0) w->mark = now();
  give_def(c, w, f->fid);
  push_out(w, f);
  w->given++;
}

/* Hands pending tasks out one at a time, each to the least loaded of
** the workers that were low when the round began (see worker_room:
** tasks go out in batches, one write and one wake-up of the worker for
** many), each up to its limit; then writes what it can without
** waiting.  Least loaded first (tasks given and not done: a queued
** definition is no task): map chunks submitted one by one spread over
** the workers instead of piling up on the first. */
static void io_dispatch(pl_core *c) {
  for (int i = 0; i < c->nworkers; i++) c->w[i].open = worker_room(c, &c->w[i]);
  while (c->pending.head != NULL) {
    pl_worker *best = NULL;
    for (int i = 0; i < c->nworkers; i++) {
      pl_worker *w = &c->w[i];
      if (!w->open) continue;
      if (w->inflight.count >= worker_limit(c, w) || (c->maxtasks > 0 && w->given >= c->maxtasks)) {
        w->open = 0;
        continue;
      }
      if (best == NULL || w->given - w->done < best->given - best->done) best = w;
    }
    if (best == NULL) break;
    give(c, best, fifo_pop(&c->pending));
  }
  for (int i = 0; i < c->nworkers; i++)
    if (c->w[i].unsent != NULL) io_write(c, &c->w[i]);
}

/* Once closing and nothing is left to give, idle workers are told
** (end of file on their socket) to finish. */
static void io_shutdowns(pl_core *c) {
  if (!c->closing || c->pending.head != NULL) return;
  for (int i = 0; i < c->nworkers; i++) {
    pl_worker *w = &c->w[i];
    if (w->state == W_LIVE && !w->shut && w->inflight.count == 0 && w->fd >= 0) {
      shutdown(w->fd, SHUT_WR);
      w->shut = 1;
    }
  }
}

static void describe_status(char *buf, size_t size, pid_t pid, int st, int known) {
  if (!known)
    snprintf(buf, size, "Worker %ld died (its exit status is unknown)", (long)pid);
  else if (WIFSIGNALED(st))
    snprintf(buf, size, "Worker %ld died: killed by signal %d (%s)", (long)pid,
             WTERMSIG(st), strsignal(WTERMSIG(st)));
  else
    snprintf(buf, size, "Worker %ld died: exit code %d", (long)pid,
             WIFEXITED(st) ? WEXITSTATUS(st) : -1);
}

/* End of file on a worker's socket: it exited or died.  Reaps it; its
** running task (the oldest fully sent one without a result) is lost,
** the rest go back to the pending queue. */
static void io_worker_gone(pl_core *c, int slot) {
  pl_worker *w = &c->w[slot];
  pid_t pid = w->pid;
  int st = 0, known;
  close_fd(&w->fd);
  pthread_mutex_unlock(&c->mu);
  pid_t r;
  do r = waitpid(pid, &st, 0); while (r < 0 && errno == EINTR);
  known = r == pid;
  pthread_mutex_lock(&c->mu);
  char msg[160];
  describe_status(msg, sizeof msg, pid, st, known);
  w->ilen = 0;
  if (c->terminating) {
    cancel_fifo(c, &w->inflight);
    w->unsent = NULL;
    w->state = W_DEAD;
    return;
  }
  /* the task it took and did not answer, if any: only that one is
  ** lost (a task written to a worker that was dying is not) */
  uint64_t lost = 0;
  drop_defs(&w->inflight);
  pl_frame *head = w->inflight.head;
  if (head != NULL && head->sent == head->len && atomic_load(&c->rings[slot].took) == head->job) {
    lost = head->job;
    free(fifo_pop(&w->inflight));
  }
  for (pl_frame *f = w->inflight.head; f != NULL; f = f->next) f->sent = 0;
  fifo_prepend(&c->pending, &w->inflight);
  w->unsent = NULL;
  int respawn = !(c->closing && c->pending.head == NULL);
  w->state = respawn ? W_RESPAWN : W_DEAD;
  int clean = lost == 0 && known && WIFEXITED(st) && WEXITSTATUS(st) == 0;
  push_event(c, clean ? EV_EXITED : EV_LOST, lost, respawn, slot, msg, strlen(msg));
}

/* Takes the complete result frames out of a worker's input buffer. */
static int io_parse(pl_core *c, int slot) {
  pl_worker *w = &c->w[slot];
  size_t off = 0;
  while (w->ilen - off >= 4) {
    uint32_t len;
    memcpy(&len, w->ibuf + off, 4);
    if (len < 9 || len > PL_MAXFRAME) return -1;
    if (w->ilen - off < 4 + (size_t)len) break;
    uint64_t job;
    memcpy(&job, w->ibuf + off + 4, 8);
    pl_frame *head;
    while ((head = w->inflight.head) != NULL && is_def(head) && head != w->unsent)
      free(fifo_pop(&w->inflight));   /* read by now */
    if (head == NULL || head->job != job || head == w->unsent) return -1;
    free(fifo_pop(&w->inflight));
    push_event(c, EV_RESULT, job, w->ibuf[off + 12] != 0, slot,
               w->ibuf + off + PL_HDR_RESULT, len - 9);
    double t = now(), took = t - w->mark;
    w->service = w->service < 0 ? took : 0.7 * w->service + 0.3 * took;
    c->service_hint = w->service;
    w->mark = t;
    w->done++;
    off += 4 + (size_t)len;
  }
  if (off > 0) {
    memmove(w->ibuf, w->ibuf + off, w->ilen - off);
    w->ilen -= off;
  }
  return 0;
}

static int grow_ibuf(pl_worker *w, size_t extra) {
  size_t need = w->ilen + extra;
  if (need <= w->icap) return 0;
  size_t cap = w->icap ? w->icap : 65536;
  while (cap < need) cap *= 2;
  char *p = realloc(w->ibuf, cap);
  if (p == NULL) return -1;
  w->ibuf = p;
  w->icap = cap;
  return 0;
}

/* Takes what the worker of 'slot' put in its ring, parses the complete
** frames, and wakes the worker if it waits for room.  -1: garbage or no
** memory (the worker is then treated as dead). */
static int io_drain(pl_core *c, int slot) {
  pl_worker *w = &c->w[slot];
  pl_ring *r = &c->rings[slot];
  for (;;) {
    uint64_t head = atomic_load_explicit(&r->head, memory_order_relaxed);
    uint64_t tail = atomic_load(&r->tail);
    if (tail == head) return 0;
    size_t n = (size_t)(tail - head);
    if (n > PL_RING || grow_ibuf(w, n) < 0) return -1;
    size_t at = (size_t)(head % PL_RING), first = PL_RING - at;
    if (first > n) first = n;
    memcpy(w->ibuf + w->ilen, r->data + at, first);
    memcpy(w->ibuf + w->ilen + first, r->data, n - first);
    w->ilen += n;
    atomic_store(&r->head, tail);
    if (atomic_load(&r->worker_waits)) {
      atomic_fetch_add(&r->space_seq, 1);
      shm_futex_wake(&r->space_seq, 1);
    }
    if (io_parse(c, slot) < 0) return -1;
  }
}

/* The worker's socket is readable: wake-up bytes (the results are in
** its ring), or end of file: it is gone, and its ring holds all it
** finished. */
static void io_read(pl_core *c, int slot) {
  pl_worker *w = &c->w[slot];
  char junk[256];
  for (;;) {
    ssize_t r = read(w->fd, junk, sizeof junk);
    if (r > 0) continue;
    if (r < 0 && errno == EINTR) continue;
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      if (io_drain(c, slot) == 0) return;
    } else {
      io_drain(c, slot);   /* end of file or error: what it left */
    }
    break;
  }
  if (w->pid > 0) kill(w->pid, SIGKILL);   /* make sure it is gone */
  io_worker_gone(c, slot);
}

/* Before sleeping in poll: asks every live worker for a wake-up byte,
** then looks at the rings once more (a result written before the
** request was seen would otherwise wait for the next one).  Returns 1
** when some ring holds data: do not sleep. */
static int io_ask_wakeups(pl_core *c) {
  int busy = 0;
  for (int i = 0; i < c->nworkers; i++) {
    pl_ring *r = &c->rings[i];
    if (c->w[i].state != W_LIVE || c->w[i].fd < 0) continue;
    atomic_store(&r->parent_idle, 1);
    if (atomic_load(&r->tail) != atomic_load_explicit(&r->head, memory_order_relaxed)) busy = 1;
  }
  return busy;
}

static void io_drain_all(pl_core *c) {
  for (int i = 0; i < c->nworkers; i++) {
    pl_worker *w = &c->w[i];
    if (w->state != W_LIVE || w->fd < 0) continue;
    atomic_store_explicit(&c->rings[i].parent_idle, 0, memory_order_relaxed);
    if (io_drain(c, i) < 0) {
      if (w->pid > 0) kill(w->pid, SIGKILL);
      io_worker_gone(c, i);
    }
  }
}

/* Moves the submitted tasks to the pending queue (c->mu held); 'close'
** refuses further ones (the I/O thread ends). */
static void io_take_incoming(pl_core *c, int close) {
  pthread_mutex_lock(&c->in_mu);
  fifo_prepend(&c->incoming, &c->pending);   /* pending first, in order */
  pl_fifo t = c->pending;
  c->pending = c->incoming;
  c->incoming = t;
  c->in_poked = 0;
  if (close) c->in_closed = 1;
  pthread_mutex_unlock(&c->in_mu);
}

/* Before sleeping: tells submitters whether a new task should wake us
** (a worker has room).  Returns 1 when tasks came in meanwhile that a
** worker has room for: do not sleep. */
static int io_set_hungry(pl_core *c) {
  int hungry = 0;
  for (int i = 0; i < c->nworkers && !hungry; i++) hungry = worker_room(c, &c->w[i]);
  pthread_mutex_lock(&c->in_mu);
  c->hungry = hungry;
  int now_work = hungry && c->incoming.head != NULL;
  pthread_mutex_unlock(&c->in_mu);
  return now_work;
}

static int io_done(pl_core *c) {
  if (!c->closing && !c->terminating) return 0;
  for (int i = 0; i < c->nworkers; i++)
    if (c->w[i].state == W_LIVE || c->w[i].state == W_RESPAWN) return 0;
  if (c->pending.head != NULL && !c->terminating) return 0;
  cancel_fifo(c, &c->pending);
  return 1;
}

static void *io_main(void *arg) {
  pl_core *c = arg;
  struct pollfd *pfd = c->pfd;
  int *slot = c->pslot;
  pthread_mutex_lock(&c->mu);
  c->io_up = 1;
  pthread_cond_broadcast(&c->cond);
  for (;;) {
    io_take_incoming(c, 0);
    io_dispatch(c);
    io_shutdowns(c);
    if (c->ev_head) pthread_cond_broadcast(&c->cond);
    if (io_done(c)) break;
    int n = 1;
    pfd[0].fd = c->efd;
    pfd[0].events = POLLIN;
    for (int i = 0; i < c->nworkers; i++) {
      pl_worker *w = &c->w[i];
      if (w->fd < 0) continue;
      pfd[n].fd = w->fd;
      pfd[n].events = POLLIN | (w->unsent ? POLLOUT : 0);
      slot[n++] = i;
    }
    int busy = io_ask_wakeups(c) | io_set_hungry(c);
    pthread_mutex_unlock(&c->mu);
    int r = poll(pfd, (nfds_t)n, busy ? 0 : -1);
    pthread_mutex_lock(&c->mu);
    io_drain_all(c);
    if (r < 0) continue;
    if (pfd[0].revents & POLLIN) {
      uint64_t v;
      if (read(c->efd, &v, sizeof v) < 0) { /* EAGAIN: another read took it */ }
      c->poked = 0;
    }
    for (int k = 1; k < n; k++) {
      pl_worker *w = &c->w[slot[k]];
      if (w->fd != pfd[k].fd) continue;   /* replaced meanwhile */
      if (pfd[k].revents & POLLOUT) io_write(c, w);
      if (w->fd == pfd[k].fd && (pfd[k].revents & (POLLIN | POLLHUP | POLLERR)))
        io_read(c, slot[k]);
    }
  }
  io_take_incoming(c, 1);
  cancel_fifo(c, &c->pending);
  atomic_fetch_add(&io_exiting, 1);   /* no cores_mu: it comes before c->mu */
  c->finished = 1;
  pthread_cond_broadcast(&c->cond);
  pthread_mutex_unlock(&c->mu);
  core_unref(c);
  io_ended();
  return NULL;
}

/* ------------------------------------------------------- Lua: the core */

static pl_core **core_box(lua_State *L) {
  return (pl_core **)luaL_checkudata(L, 1, CORE_MT);
}

static pl_core *checkcore(lua_State *L) {
  pl_core *c = *core_box(L);
  if (c == NULL) luaL_error(L, "pool core already released");
  return c;
}

/* _pool.new(nworkers, maxtasks, fork) -> core.  'fork' is
** _multiprocessing.fork, which ties each worker's life to this
** process's however the worker was forked (see multiprocessing.c): a
** prctl(PR_SET_PDEATHSIG) of our own would follow the forking thread,
** and a pool made in a short-lived thread would lose its workers with
** it.  The I/O thread starts with the first worker. */
static int core_new(lua_State *L) {
  lua_Integer n = luaL_checkinteger(L, 1);
  lua_Integer maxtasks = luaL_optinteger(L, 2, 0);
  luaL_checktype(L, 3, LUA_TFUNCTION);
  if (n < 1 || n > 4096) return mt_raise(L, "ValueError", "Number of processes must be at least 1");
  pl_core **box = lua_newuserdatauv(L, sizeof *box, 1);
  *box = NULL;
  luaL_setmetatable(L, CORE_MT);
  lua_pushvalue(L, 3);
  lua_setiuservalue(L, -2, 1);
  pl_core *c = calloc(1, sizeof *c);
  if (c == NULL) return luaL_error(L, "not enough memory");
  c->w = calloc((size_t)n, sizeof *c->w);
  c->pfd = calloc((size_t)n + 1, sizeof *c->pfd);
  c->pslot = calloc((size_t)n + 1, sizeof *c->pslot);
  c->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  c->rings = mmap(NULL, (size_t)n * sizeof *c->rings, PROT_READ | PROT_WRITE,
                  MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE | MAP_POPULATE, -1, 0);
  if (c->rings == MAP_FAILED) c->rings = NULL;
  if (c->w == NULL || c->pfd == NULL || c->pslot == NULL || c->efd < 0 || c->rings == NULL) {
    int e = errno;
    if (c->efd >= 0) close(c->efd);
    if (c->rings) munmap(c->rings, (size_t)n * sizeof *c->rings);
    free(c->w);
    free(c->pfd);
    free(c->pslot);
    free(c);
    return mt_raise(L, "OSError", "[Errno %d] pool: %s", e, strerror(e));
  }
  fds_add(c->efd);
  pthread_mutex_init(&c->mu, NULL);
  pthread_mutex_init(&c->in_mu, NULL);
  pthread_cond_init(&c->cond, NULL);
  c->refs = 1;
  c->owner = getpid();
  c->maxtasks = maxtasks > 0 ? (long)maxtasks : 0;
  c->nworkers = (int)n;
  for (int i = 0; i < n; i++) { c->w[i].fd = -1; c->w[i].service = -1; }
  c->service_hint = -1;
  cores_link(c);
  *box = c;
  return 1;
}

static void start_io(lua_State *L, pl_core *c) {
  pthread_t th;
  pthread_attr_t attr;
  pthread_attr_init(&attr);   /* joinable: reaped by reap_ended_io */
  pthread_once(&reaper_once, register_reaper);
  c->refs++;
  int rc = pthread_create(&th, &attr, io_main, c);
  pthread_attr_destroy(&attr);
  if (rc != 0) {
    c->refs--;
    mt_raise(L, "RuntimeError", "can't start the pool's I/O thread");
  }
  c->started = 1;
  /* A starting thread allocates (its TLS, a sanitizer's records)
  ** outside our locks: the next fork waits until it is in io_main. */
  pthread_mutex_lock(&c->mu);
  while (!c->io_up) pthread_cond_wait(&c->cond, &c->mu);
  pthread_mutex_unlock(&c->mu);
}

/* The result thread lives as long as the pool's workers, so a worker
** it forks (a replacement) dies with this process through
** PR_SET_PDEATHSIG, which follows the forking thread; other threads fork
** with _multiprocessing.fork, whose lifeline costs a watcher thread in
** the child (a thread made after a fork, which ThreadSanitizer
** handles badly: replacements are frequent under maxtasksperchild). */
static int handler_fork(lua_State *L) {
  pid_t parent = getpid();
  pid_t pid = mt_fork(L);
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(1);   /* it died before the prctl */
  }
  lua_pushinteger(L, pid);
  return 1;
}

/* In a new worker: nothing of the parent's pools but its own socket. */
static void child_setup(int keep) {
  setpgid(0, 0);                       /* terminate() kills its children too */
  signal(SIGPIPE, SIG_DFL);
  for (int i = 0; i < fds_count; i++)  /* no lock: the only thread now */
    if (fds_list[i] != keep) close(fds_list[i]);
  fds_count = 0;
  fds_add(keep);
}

/* Runs worker_main(fd, ...) in the child; never returns. */
static void child_run(lua_State *L, int fd, int nargs) {
  lua_pushcfunction(L, mt_msghandler);
  lua_pushvalue(L, 3);
  lua_pushinteger(L, fd);
  for (int i = 0; i < nargs; i++) lua_pushvalue(L, 4 + i);
  int status = 0;
  int base = lua_gettop(L) - nargs - 2;
  /* One collection step now, before any task: the first one writes to
  ** objects inherited from the parent, copying their pages, and a task
  ** would wait for that (a full collection would copy every page of a
  ** large parent's heap into every worker). */
  lua_gc(L, LUA_GCSTEP, 0);
  if (lua_pcall(L, nargs + 1, 1, base) != LUA_OK) {
    mt_format_error(L, -1);
    fprintf(stderr, "Process PoolWorker-%ld:\n%s\n", (long)getpid(), lua_tostring(L, -1));
    status = 1;
  } else if (lua_isinteger(L, -1)) {
    status = (int)lua_tointeger(L, -1);
  }
  fflush(NULL);
  _exit(status);
}

/* The parent's end of a worker's socket holds a whole map's share of
** chunks where the system allows (net.core.wmem_max caps it; a failure
** leaves the default): with the default ~200 KB, a worker finishing a
** chunk found the next one half written and waited for the I/O thread
** to wake and write the rest. */
static void set_sndbuf(int fd) {
  int size = 1 << 20;
  (void)setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
}

/* core:spawn(slot, worker_main, ...) -> pid: forks the worker of that
** slot; in the child worker_main(fd, ...) runs, then the child exits.
** Returns nothing once the pool is being terminated. */
static int core_spawn(lua_State *L) {
  pl_core *c = checkcore(L);
  lua_Integer slot = luaL_checkinteger(L, 2) - 1;
  luaL_checktype(L, 3, LUA_TFUNCTION);
  int nargs = lua_gettop(L) - 3;
  if (slot < 0 || slot >= c->nworkers) return luaL_argerror(L, 2, "no such worker slot");
  pthread_mutex_lock(&c->mu);
  int state = c->w[slot].state, stopping = c->terminating;
  pthread_mutex_unlock(&c->mu);
  if (state == W_LIVE) return luaL_error(L, "worker slot %d is in use", (int)slot + 1);
  if (stopping) return 0;   /* terminated meanwhile: no replacement */
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
    return mt_raise(L, "OSError", "[Errno %d] socketpair: %s", errno, strerror(errno));
  fds_add(sv[0]);
  fds_add(sv[1]);
  set_sndbuf(sv[0]);
  ring_reset(&c->rings[slot]);   /* its last worker is reaped */
  if (c->handler != NULL && mt_self(L) == c->handler) lua_pushcfunction(L, handler_fork);
  else lua_getiuservalue(L, 1, 1);   /* _multiprocessing.fork */
  fork_prepare();
  int st = lua_pcall(L, 0, 1, 0);
  pid_t pid = st == LUA_OK ? (pid_t)lua_tointeger(L, -1) : -1;
  if (pid == 0) fork_child();
  else fork_parent();
  if (st != LUA_OK) {   /* no fd may leak */
    close_fd(&sv[0]);
    close_fd(&sv[1]);
    return lua_error(L);
  }
  lua_pop(L, 1);
  if (pid == 0) {
    child_setup(sv[1]);
    pw_enter(&c->rings[slot]);
    child_run(L, sv[1], nargs);
  }
  close_fd(&sv[1]);
  setpgid(pid, pid);
  fcntl(sv[0], F_SETFL, fcntl(sv[0], F_GETFL) | O_NONBLOCK);
  pthread_mutex_lock(&c->mu);
  pl_worker *w = &c->w[slot];
  w->state = W_LIVE;
  w->pid = pid;
  w->fd = sv[0];
  w->shut = 0;
  w->given = w->done = 0;
  w->ilen = 0;
  if (w->known) memset(w->known, 0, w->nknown);
  w->unsent = NULL;
  core_poke(c);
  pthread_mutex_unlock(&c->mu);
  if (!c->started) start_io(L, c);
  lua_pushinteger(L, pid);
  return 1;
}

/* A task frame with room for 'elen' bytes of extra after the payload. */
static pl_frame *new_task(lua_State *L, lua_Integer job, const char *payload,
                          size_t plen, size_t elen, lua_Integer fid) {
  if (plen > PL_MAXFRAME - 32 || elen > PL_MAXFRAME - 32 - plen) {
    mt_raise(L, "ValueError", "pool: task of %d bytes is too large", (int)(plen + elen));
    return NULL;
  }
  size_t len = plen + elen;
  pl_frame *f = malloc(sizeof *f + PL_HDR_TASK + len);
  if (f == NULL) { luaL_error(L, "not enough memory"); return NULL; }
  uint32_t flen = (uint32_t)(12 + len), p32 = (uint32_t)plen;
  uint64_t j = (uint64_t)job;
  f->job = j;
  f->fid = fid > 0 && fid < 0x7fffffff ? (uint32_t)fid : 0;
  f->len = PL_HDR_TASK + len;
  f->sent = 0;
  memcpy(f->data, &flen, 4);
  memcpy(f->data + 4, &j, 8);
  memcpy(f->data + 12, &p32, 4);
  memcpy(f->data + PL_HDR_TASK, payload, plen);
  return f;
}

/* A task frame made with room for more extra than it took: its length
** fields say what it holds, and the rest goes back to the allocator. */
static pl_frame *shrink_task(pl_frame *f, size_t plen, size_t elen) {
  uint32_t flen = (uint32_t)(12 + plen + elen);
  f->len = PL_HDR_TASK + plen + elen;
  memcpy(f->data, &flen, 4);
  pl_frame *g = realloc(f, sizeof *f + f->len);
  return g != NULL ? g : f;
}

/* Hands a task to the I/O thread (it owns f from here). */
static int push_task(lua_State *L, pl_core *c, pl_frame *f) {
  pthread_mutex_lock(&c->in_mu);
  if (c->in_closed) {
    pthread_mutex_unlock(&c->in_mu);
    free(f);
    return mt_raise(L, "ValueError", "Pool not running");
  }
  fifo_push(&c->incoming, f);
  int wake = c->hungry && !c->in_poked;
  if (wake) c->in_poked = 1;
  pthread_mutex_unlock(&c->in_mu);
  if (wake) {
    uint64_t one = 1;
    if (write(c->efd, &one, sizeof one) < 0) { /* full counter: awake anyway */ }
  }
  return 0;
}

/* core:submit(job, payload, extra?, fid?): queues a task for the I/O
** thread; fid names the cached function it calls (core:define). */
static int core_submit(lua_State *L) {
  pl_core *c = checkcore(L);
  lua_Integer job = luaL_checkinteger(L, 2);
  size_t plen, elen = 0;
  const char *payload = luaL_checklstring(L, 3, &plen);
  const char *extra = luaL_optlstring(L, 4, "", &elen);
  lua_Integer fid = luaL_optinteger(L, 5, 0);
  pl_frame *f = new_task(L, job, payload, plen, elen, fid);
  memcpy(f->data + PL_HDR_TASK + plen, extra, elen);
  return push_task(L, c, f);
}

/* core:submit_chunk(job, payload, items, i, j, fid?): a map chunk task
** whose extra is items[i..j], packed straight into the frame (no string
** in between); a chunk that cannot be packed goes pickled. */
static int core_submit_chunk(lua_State *L) {
  pl_core *c = checkcore(L);
  lua_Integer job = luaL_checkinteger(L, 2);
  size_t plen;
  const char *payload = luaL_checklstring(L, 3, &plen);
  luaL_checktype(L, 4, LUA_TTABLE);
  lua_Integer i = luaL_checkinteger(L, 5), j = luaL_checkinteger(L, 6);
  lua_Integer fid = luaL_optinteger(L, 7, 0);
  if (j < i) j = i - 1;
  if (j - i >= 0x7ffffff) return mt_raise(L, "ValueError", "pool: chunk of %d items is too large", (int)(j - i + 1));
  size_t elen = pp_packed_max((size_t)(j - i + 1));
  pl_frame *f = new_task(L, job, payload, plen, elen, fid);
  size_t used = pp_pack_into(L, 4, i, j, f->data + PL_HDR_TASK + plen);
  if (used > 0) {
    f = shrink_task(f, plen, used);
  } else {
    free(f);
    size_t xlen;
    pp_pickle_slice(L, 4, i, j);
    const char *x = lua_tolstring(L, -1, &xlen);
    f = new_task(L, job, payload, plen, xlen, fid);
    memcpy(f->data + PL_HDR_TASK + plen, x, xlen);
  }
  return push_task(L, c, f);
}

/* Whether no task is queued or in flight: the last result of a map
** is then in, and lingering for more would only delay it.  c->mu held
** (in_mu comes after it). */
static int all_done(pl_core *c) {
  if (c->pending.head != NULL) return 0;
  for (int i = 0; i < c->nworkers; i++)
    if (c->w[i].state == W_LIVE && c->w[i].inflight.count > 0) return 0;
  pthread_mutex_lock(&c->in_mu);
  int none = c->incoming.head == NULL;
  pthread_mutex_unlock(&c->in_mu);
  return none;
}

/* While results stream in (Lua took some less than 2 ms ago), waits up
** to half a millisecond for more: the result thread then takes the GIL
** once per batch instead of once per result.  A lone result (apply
** after a pause) goes through at once, and so do bulky ones (map
** chunks: unpacking one is worth more than the hand-off saved, and it
** overlaps the workers' next ones).  c->mu held. */
#define PL_BULK (64u * 1024u)
static void linger(pl_core *c) {
  if (c->nev >= 256 || c->evbytes >= PL_BULK || c->finished || now() - c->last_take > 2e-3) return;
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  ts.tv_nsec += 500000;
  if (ts.tv_nsec >= 1000000000) { ts.tv_sec++; ts.tv_nsec -= 1000000000; }
  while (c->nev < 256 && c->evbytes < PL_BULK && !c->finished && !all_done(c))
    if (pthread_cond_timedwait(&c->cond, &c->mu, &ts) == ETIMEDOUT) break;
}

/* core:wait(timeout?) -> events | nil: blocks (GIL released) until the
** I/O thread has news; nil once it ended and every event was taken.
** Events come flat, five values each: kind, job, ok (RESULT) or slot,
** data (RESULT: the payload; LOST/EXITED: a message), respawn wanted. */
static int core_wait(lua_State *L) {
  pl_core *c = checkcore(L);
  double timeout = luaL_optnumber(L, 2, -1);
  pl_event *list;
  int finished;
  pthread_mutex_lock(&c->mu);
  if (c->ev_head == NULL && !c->finished && timeout != 0) {
    c->refs++;
    pthread_mutex_unlock(&c->mu);
    mt_blocking_begin(L);   /* the GIL before c->mu, never the reverse */
    pthread_mutex_lock(&c->mu);
    if (timeout < 0) {
      while (c->ev_head == NULL && !c->finished) pthread_cond_wait(&c->cond, &c->mu);
    } else {
      struct timespec ts;
      clock_gettime(CLOCK_REALTIME, &ts);
      double t = (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9 + timeout;
      ts.tv_sec = (time_t)t;
      ts.tv_nsec = (long)((t - (double)ts.tv_sec) * 1e9);
      while (c->ev_head == NULL && !c->finished)
        if (pthread_cond_timedwait(&c->cond, &c->mu, &ts) == ETIMEDOUT) break;
    }
    linger(c);
    c->refs--;
    list = c->ev_head;
    c->ev_head = c->ev_tail = NULL;
    c->nev = c->evbytes = 0;
    c->last_take = now();
    finished = c->finished;
    pthread_mutex_unlock(&c->mu);
    mt_blocking_end(L);
  } else {
    list = c->ev_head;
    c->ev_head = c->ev_tail = NULL;
    c->nev = c->evbytes = 0;
    c->last_take = now();
    finished = c->finished;
    pthread_mutex_unlock(&c->mu);
  }
  if (list == NULL && finished) { lua_pushnil(L); return 1; }
  lua_createtable(L, 64, 0);
  lua_Integer i = 0;
  while (list != NULL) {
    pl_event *e = list;
    list = e->next;
    lua_pushinteger(L, e->kind);
    lua_rawseti(L, -2, ++i);
    lua_pushinteger(L, (lua_Integer)e->job);
    lua_rawseti(L, -2, ++i);
    if (e->kind == EV_RESULT) lua_pushboolean(L, e->ok);
    else lua_pushinteger(L, e->slot + 1);
    lua_rawseti(L, -2, ++i);
    if (e->kind == EV_CANCELLED) lua_pushboolean(L, 0);
    else lua_pushlstring(L, e->data, e->len);
    lua_rawseti(L, -2, ++i);
    lua_pushboolean(L, e->kind != EV_RESULT && e->ok);   /* respawn wanted */
    lua_rawseti(L, -2, ++i);
    free(e);
  }
  lua_pushinteger(L, i);
  lua_setfield(L, -2, "n");
  return 1;
}

/* core:adopt(yes): the calling thread is (true) or stops being (false)
** the pool's result thread (see handler_fork). */
static int core_adopt(lua_State *L) {
  pl_core *c = checkcore(L);
  c->handler = lua_toboolean(L, 2) ? mt_self(L) : NULL;
  return 0;
}

/* core:define(fid, pickle): the function that tasks with this fid call. */
static int core_define(lua_State *L) {
  pl_core *c = checkcore(L);
  lua_Integer fid = luaL_checkinteger(L, 2);
  size_t len;
  const char *p = luaL_checklstring(L, 3, &len);
  luaL_argcheck(L, fid > 0 && fid < 0x7fffffff, 2, "bad function id");
  if (len > PL_MAXFRAME - 32) return mt_raise(L, "ValueError", "pool: function of %d bytes is too large", (int)len);
  char *copy = malloc(len ? len : 1);
  if (copy == NULL) return luaL_error(L, "not enough memory");
  memcpy(copy, p, len);
  pthread_mutex_lock(&c->mu);
  if ((size_t)fid >= c->ndefs) {
    size_t n = c->ndefs ? c->ndefs : 16;
    while (n <= (size_t)fid) n *= 2;
    struct pl_def *d = realloc(c->defs, n * sizeof *d);
    if (d == NULL) {
      pthread_mutex_unlock(&c->mu);
      free(copy);
      return luaL_error(L, "not enough memory");
    }
    memset(d + c->ndefs, 0, (n - c->ndefs) * sizeof *d);
    c->defs = d;
    c->ndefs = n;
  }
  free(c->defs[fid].p);
  c->defs[fid].p = copy;
  c->defs[fid].len = len;
  pthread_mutex_unlock(&c->mu);
  return 0;
}

/* core:close(): no more tasks; workers finish what is queued, then exit. */
static int core_close(lua_State *L) {
  pl_core *c = checkcore(L);
  pthread_mutex_lock(&c->mu);
  c->closing = 1;
  core_poke(c);
  pthread_mutex_unlock(&c->mu);
  return 0;
}

/* Kills every worker and its children (each worker leads a process
** group); the I/O thread reaps them and cancels every task left. */
static void core_kill_all(pl_core *c) {
  pthread_mutex_lock(&c->mu);
  c->terminating = 1;
  for (int i = 0; i < c->nworkers; i++) {
    pl_worker *w = &c->w[i];
    if (w->state == W_LIVE && w->pid > 0) {
      kill(-w->pid, SIGKILL);
      kill(w->pid, SIGKILL);
    }
    if (w->state == W_RESPAWN) w->state = W_DEAD;
  }
  cancel_fifo(c, &c->pending);
  pthread_mutex_lock(&c->in_mu);
  cancel_fifo(c, &c->incoming);
  c->in_closed = 1;
  pthread_mutex_unlock(&c->in_mu);
  if (c->started) core_poke(c);
  else c->finished = 1;   /* no I/O thread: nothing else will end it */
  pthread_cond_broadcast(&c->cond);
  pthread_mutex_unlock(&c->mu);
}

static int core_terminate(lua_State *L) {
  core_kill_all(checkcore(L));
  return 0;
}

/* Gives a slot up (its worker could not be replaced). */
static int core_abandon(lua_State *L) {
  pl_core *c = checkcore(L);
  lua_Integer slot = luaL_checkinteger(L, 2) - 1;
  luaL_argcheck(L, slot >= 0 && slot < c->nworkers, 2, "no such worker slot");
  pthread_mutex_lock(&c->mu);
  if (c->w[slot].state == W_RESPAWN) c->w[slot].state = W_DEAD;
  core_poke(c);
  pthread_mutex_unlock(&c->mu);
  return 0;
}

/* core:debug() -> a line describing the core (for diagnosing hangs) */
static int core_debug(lua_State *L) {
  pl_core *c = checkcore(L);
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  pthread_mutex_lock(&c->mu);
  pthread_mutex_lock(&c->in_mu);
  lua_pushfstring(L, "pending=%d incoming=%d hungry=%d in_poked=%d poked=%d nev=%d closing=%d finished=%d",
                  (int)c->pending.count, (int)c->incoming.count, c->hungry, c->in_poked, c->poked,
                  (int)c->nev, c->closing, c->finished);
  pthread_mutex_unlock(&c->in_mu);
  luaL_addvalue(&b);
  for (int i = 0; i < c->nworkers; i++) {
    pl_worker *w = &c->w[i];
    pl_ring *r = &c->rings[i];
    lua_pushfstring(L, "\n  w%d state=%d pid=%d fd=%d inflight=%d unsent=%s given=%d done=%d ilen=%d ring=%d idle=%d waits=%d took=%d",
                    i, w->state, (int)w->pid, w->fd, (int)w->inflight.count, w->unsent ? "yes" : "no",
                    (int)w->given, (int)w->done, (int)w->ilen,
                    (int)(atomic_load(&r->tail) - atomic_load(&r->head)), (int)atomic_load(&r->parent_idle),
                    (int)atomic_load(&r->worker_waits), (int)atomic_load(&r->took));
    luaL_addvalue(&b);
  }
  pthread_mutex_unlock(&c->mu);
  luaL_pushresult(&b);
  return 1;
}

/* core:pids() -> array of the live workers' pids */
static int core_pids(lua_State *L) {
  pl_core *c = checkcore(L);
  lua_newtable(L);
  pthread_mutex_lock(&c->mu);
  lua_Integer n = 0;
  for (int i = 0; i < c->nworkers; i++)
    if (c->w[i].state == W_LIVE) {
      lua_pushinteger(L, c->w[i].pid);
      lua_rawseti(L, -2, ++n);
    }
  pthread_mutex_unlock(&c->mu);
  return 1;
}

/* A pool dropped or left at exit: its workers must not outlive it.
** In a forked child (a worker) the pool is its parent's: hands off. */
static int core_gc(lua_State *L) {
  pl_core **box = core_box(L);
  pl_core *c = *box;
  if (c == NULL) return 0;
  *box = NULL;
  if (c->owner != getpid()) return 0;   /* leaked on purpose: see above */
  core_kill_all(c);
  core_unref(c);
  return 0;
}

static const luaL_Reg core_methods[] = {
  {"spawn", core_spawn},
  {"submit", core_submit},
  {"submit_chunk", core_submit_chunk},
  {"define", core_define},
  {"adopt", core_adopt},
  {"wait", core_wait},
  {"close", core_close},
  {"terminate", core_terminate},
  {"abandon", core_abandon},
  {"pids", core_pids},
  {"debug", core_debug},
  {NULL, NULL}
};

static const luaL_Reg pool_funcs[] = {
  {"new", core_new},
  {NULL, NULL}
};

int luaopen_mt_pool(lua_State *L) {
  if (luaL_newmetatable(L, CORE_MT)) {
    luaL_newlib(L, core_methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, core_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_pop(L, 1);
  luaL_newlib(L, pool_funcs);
  pw_setfuncs(L);
  pp_setfuncs(L);
  return 1;
}
