/*
** shm.c -- shared memory across processes (module "_shm"): anonymous
** segments, robust process-shared mutexes, futex waits (shm.h is the C
** API), and on top of them the queue classes of multiprocessing:
** Queue, JoinableQueue and SimpleQueue.
**
** A queue is one segment: a header (counters, the mutex, futex words)
** and a ring of bytes holding pickled messages, each a 4-byte length
** then the pickle.  put() pickles, takes the mutex, copies the message
** in and returns: the item is visible to get/qsize/empty at once (there
** is no feeder thread as in CPython).  Like CPython's, a put waits only
** for maxsize, never for a reader: a full ring that nobody drains grows
** (the memfd grows in place inside a 1 GiB address reservation, each
** process maps the new part when it next takes the mutex) and shrinks
** back once emptied.  A message larger than the biggest ring is
** streamed: its writer owns the ring's tail ('wstream') and copies
** chunks as space appears; one reader claims it ('rstream') and copies
** chunks out.  A process that dies holding the mutex or in the middle
** of a stream is noticed (EOWNERDEAD, or a liveness check when a wait
** times out) and its half-done work is undone, so the queue goes on.
**
** The Lua API (classes Queue, JoinableQueue, SimpleQueue, also
** exported by lib/multiprocessing.lua):
**   Queue(maxsize=0) / Queue{maxsize=}; put(v, block, timeout) or
**   put(v, {block=, timeout=}); put_nowait(v); get(block, timeout) or
**   get{...}; get_nowait(); qsize(); empty(); full(); close();
**   join_thread() (returns at once after close(): no feeder thread);
**   cancel_join_thread() (nothing to cancel); JoinableQueue adds
**   task_done() and join(), counted in the segment so they work across
**   processes.  __reduce__ lets pickle pass a queue to a process that
**   did not inherit it: _shm.rebuild_queue(pid, fd, token, kind) maps
**   /proc/<pid>/fd/<fd>; the sending process must still be alive when
**   the receiver unpickles it.
*/
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <linux/futex.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>

#include "mt_core.h"
#include "pickle.h"
#include "shm.h"

/* ------------------------------------------------------------ segments */

int shm_segment_create(shm_segment *seg, size_t size, const char *tag) {
  int fd = memfd_create(tag, MFD_CLOEXEC);
  if (fd < 0) return errno;
  if (ftruncate(fd, (off_t)size) != 0) { int e = errno; close(fd); return e; }
  void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) { int e = errno; close(fd); return e; }
  seg->base = p;
  seg->size = size;
  seg->fd = fd;
  return 0;
}

int shm_segment_attach(shm_segment *seg, pid_t pid, int fd) {
  char path[64];
  struct stat st;
  snprintf(path, sizeof path, "/proc/%d/fd/%d", (int)pid, fd);
  int myfd = open(path, O_RDWR | O_CLOEXEC);
  if (myfd < 0) return errno;
  if (fstat(myfd, &st) != 0 || st.st_size <= 0) { close(myfd); return EINVAL; }
  void *p = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, myfd, 0);
  if (p == MAP_FAILED) { int e = errno; close(myfd); return e; }
  seg->base = p;
  seg->size = (size_t)st.st_size;
  seg->fd = myfd;
  return 0;
}

/* The mapping is moved into a PROT_NONE reservation of 'reserve' bytes
** (no memory), with the file mapped at its start only as far as
** 'mapped' bytes; growing maps the new part in place (shm_segment_cover).
** So the mapping never moves: a mutex in it must keep its address
** while held (glibc's robust list points at it).  Nothing past the
** file's end is readable: a read there faults (SIGBUS), and whatever
** reads all of a process's memory would crawl through it -- valgrind's
** leak check at exit faulted once per word on a 256 MiB reservation. */
int shm_segment_reserve(shm_segment *seg, size_t reserve, size_t mapped) {
  void *r = mmap(NULL, reserve, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (r == MAP_FAILED) return errno;
  if (mmap(r, mapped, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, seg->fd, 0) == MAP_FAILED) {
    int e = errno;
    munmap(r, reserve);
    return e;
  }
  munmap(seg->base, seg->size);
  seg->base = r;
  seg->size = reserve;
  return 0;
}

int shm_segment_cover(shm_segment *seg, size_t *mapped, size_t need) {
  if (need <= *mapped) return 0;
  if (need > seg->size) return ENOMEM;
  char *at = (char *)seg->base + *mapped;
  if (mmap(at, need - *mapped, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED,
           seg->fd, (off_t)*mapped) == MAP_FAILED)
    return errno;
  *mapped = need;
  return 0;
}

void shm_segment_close(shm_segment *seg) {
  if (seg->base != NULL) munmap(seg->base, seg->size);
  if (seg->fd >= 0) close(seg->fd);
  seg->base = NULL;
  seg->fd = -1;
}

/* ------------------------------------------------------------- mutexes */

int shm_mutex_init(pthread_mutex_t *m) {
  pthread_mutexattr_t a;
  pthread_mutexattr_init(&a);
  pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
  pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
  int r = pthread_mutex_init(m, &a);
  pthread_mutexattr_destroy(&a);
  return r;
}

int shm_mutex_lock(lua_State *L, pthread_mutex_t *m) {
  int r = pthread_mutex_trylock(m);
  if (r == EBUSY) {   /* held only for copies: wait without the GIL */
    mt_blocking_begin(L);
    r = pthread_mutex_lock(m);
    mt_blocking_end(L);
  }
  if (r == EOWNERDEAD) {
    pthread_mutex_consistent(m);
    return 1;
  }
  if (r != 0) mt_raise(L, "OSError", "[Errno %d] shared lock: %s", r, strerror(r));
  return 0;
}

void shm_mutex_unlock(pthread_mutex_t *m) {
  pthread_mutex_unlock(m);
}

/* --------------------------------------------------------------- futex */

void shm_futex_wait(_Atomic uint32_t *word, uint32_t expected, double seconds) {
  struct timespec ts;
  if (seconds < 0) seconds = 0;
  ts.tv_sec = (time_t)seconds;
  ts.tv_nsec = (long)((seconds - (double)ts.tv_sec) * 1e9);
  syscall(SYS_futex, (uint32_t *)word, FUTEX_WAIT, expected, &ts, NULL, 0);
}

void shm_futex_wake(_Atomic uint32_t *word, int n) {
  syscall(SYS_futex, (uint32_t *)word, FUTEX_WAKE, n, NULL, NULL, 0);
}

void shm_push_ref(lua_State *L, int narr, int fd, uint64_t token, int kind) {
  lua_createtable(L, narr, 0);
  lua_pushinteger(L, getpid());
  lua_rawseti(L, -2, 1);
  lua_pushinteger(L, fd);
  lua_rawseti(L, -2, 2);
  lua_pushinteger(L, (lua_Integer)token);
  lua_rawseti(L, -2, 3);
  lua_pushinteger(L, kind);
  lua_rawseti(L, -2, 4);
}

/* A zombie still answers kill(pid, 0): read its state instead. */
int shm_pid_alive(pid_t pid) {
  char path[64], buf[256];
  snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return 0;
  buf[n] = '\0';
  const char *p = strrchr(buf, ')');   /* the name may hold spaces */
  if (p == NULL || p[1] == '\0') return 1;
  return p[2] != 'Z' && p[2] != 'X';
}

/* -------------------------------------------------------------- queues */

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ __volatile__("yield");
#endif
}

#define Q_MAGIC 0x4d5451756575653aULL
#define Q_HDRSIZE 4096                /* the header's page; the ring follows */
#define Q_RINGSIZE (256 * 1024)       /* the ring's first size, a power of two */
#define Q_RINGMAX ((uint64_t)1 << 30) /* it grows up to this (the reservation) */
#define Q_SHRINK_FROM (8u << 20)      /* an emptied ring this big shrinks back */
#define Q_GROW_AFTER 0.002            /* a full ring nobody reads grows after this */
#define Q_SLICE 0.05                  /* waits wake this often: Ctrl-C, dead peers */
#define Q_SPIN_NS 30000               /* spin this long before sleeping */

enum { Q_QUEUE, Q_JOINABLE, Q_SIMPLE, Q_NKINDS };
static const char *const q_classnames[Q_NKINDS] = {
  "multiprocessing.Queue", "multiprocessing.JoinableQueue", "multiprocessing.SimpleQueue"
};

/* The shared part.  Fields are changed under 'mutex'; those read
** without it (qsize, spinning) are read and written atomically. */
typedef struct q_shared {
  /* what every put and get writes, packed into two cache lines: a
  ** hand-off between processes on two CPUs moves each line it touches */
  pthread_mutex_t mutex;
  uint64_t head, tail;         /* bytes read / written since creation */
  int64_t items;               /* put, not yet claimed by a get */
  int64_t complete;            /* whole messages in the ring */
  _Atomic uint32_t not_empty, not_full, all_done;   /* futex sequences */
  _Atomic uint32_t getters, putters, joiners;       /* sleepers on them */
  int64_t unfinished;          /* JoinableQueue: puts not task_done'd */
  int32_t wstream, rstream;    /* pids streaming a big message in / out */
  int32_t stream_aborted;      /* the claimed stream's writer gave up */
  int32_t stream_orphaned;     /* the stream's reader gave up */
  /* rarely written, on a line of their own */
  uint64_t magic __attribute__((aligned(64)));
  uint64_t token;              /* checked when another process maps it */
  uint64_t capacity;           /* the ring's size now (it grows, shrinks) */
  int32_t fixed;               /* its maker could not reserve room to grow */
  int64_t maxsize;             /* items; <= 0: unbounded */
  uint64_t stream_start, stream_end;
} q_shared;

typedef struct q_handle {
  q_shared *sh;
  shm_segment seg;             /* reserved for Q_HDRSIZE + Q_RINGMAX */
  size_t mapped;               /* bytes of the segment mapped in this process */
  int closed;                  /* close() was called in this process */
  char *buf;                   /* where messages are copied out */
  size_t bufsize;
} q_handle;

static const char Q_KEY = 'Q';
static const char Q_MT[] = "mtlua.shm_queue";

#define LOAD(x) __atomic_load_n(&(x), __ATOMIC_ACQUIRE)
#define STORE(x, v) __atomic_store_n(&(x), (v), __ATOMIC_RELEASE)

static q_handle *q_check(lua_State *L) {
  q_handle *q = (q_handle *)mt_checkobject(L, 1, &Q_KEY, "Queue");
  if (q->sh == NULL) mt_raise(L, "ValueError", "queue is not initialised");
  return q;
}

static char *ring_at(q_shared *sh, uint64_t pos) {
  return (char *)sh + Q_HDRSIZE + (pos & (sh->capacity - 1));
}

static void ring_write(q_shared *sh, uint64_t pos, const char *src, size_t n) {
  size_t off = (size_t)(pos & (sh->capacity - 1));
  size_t first = (size_t)sh->capacity - off;
  if (first > n) first = n;
  memcpy(ring_at(sh, pos), src, first);
  memcpy((char *)sh + Q_HDRSIZE, src + first, n - first);
}

static void ring_read(q_shared *sh, uint64_t pos, char *dst, size_t n) {
  size_t off = (size_t)(pos & (sh->capacity - 1));
  size_t first = (size_t)sh->capacity - off;
  if (first > n) first = n;
  if (dst != NULL) {
    memcpy(dst, ring_at(sh, pos), first);
    memcpy(dst + first, (char *)sh + Q_HDRSIZE, n - first);
  }
}

static uint64_t ring_free(q_shared *sh) {
  return sh->capacity - (sh->tail - sh->head);
}

static void wake(_Atomic uint32_t *seq, _Atomic uint32_t *sleepers, int n) {
  if (atomic_load(sleepers) > 0) {
    atomic_fetch_add(seq, 1);
    shm_futex_wake(seq, n);
  }
}

static void wake_everyone(q_shared *sh) {
  wake(&sh->not_empty, &sh->getters, INT_MAX);
  wake(&sh->not_full, &sh->putters, INT_MAX);
}

/* Undoes what a dead process left half done in a stream.  Mutex held. */
static void q_repair(q_shared *sh) {
  pid_t me = getpid();
  if (sh->wstream != 0 && sh->wstream != me && !shm_pid_alive(sh->wstream)) {
    if (sh->rstream != 0) {   /* its reader drops the partial message */
      STORE(sh->head, sh->tail);
      sh->stream_aborted = 1;
    } else {                  /* unclaimed: cut it off the ring */
      STORE(sh->tail, sh->stream_start);
      STORE(sh->items, sh->items - 1);
      sh->unfinished--;
    }
    sh->wstream = 0;
    wake_everyone(sh);
  }
  if (sh->rstream != 0 && sh->rstream != me && !shm_pid_alive(sh->rstream)) {
    if (sh->wstream != 0) {   /* the writer drops the rest */
      STORE(sh->head, sh->tail);
      sh->stream_orphaned = 1;
    } else {
      STORE(sh->head, sh->stream_end);
    }
    sh->rstream = 0;
    sh->stream_aborted = 0;
    wake_everyone(sh);
  }
}

/* Takes the mutex, and maps what another process added to the ring. */
static void q_lock(lua_State *L, q_handle *q) {
  q_shared *sh = q->sh;
  if (shm_mutex_lock(L, &sh->mutex)) q_repair(sh);
  int e = shm_segment_cover(&q->seg, &q->mapped, Q_HDRSIZE + (size_t)sh->capacity);
  if (e != 0) {
    shm_mutex_unlock(&sh->mutex);
    mt_raise(L, "MemoryError", "Queue: cannot map its grown ring: %s", strerror(e));
  }
}

/* Sleeps (mutex held on entry and on return) until *seq moves, a slice
** passes or the deadline does.  The first call of a wait only spins a
** little, watching *watch, without the mutex: a producer and consumer
** then hand items over without a futex.  The spin yields the CPU at each
** look: when both processes share one CPU, a plain spin burnt the time
** slice the peer needed (100,000 integers: 0.3 s; yielding: 0.03 s), and
** on two CPUs fewer looks at the peer's cache lines let it fill the ring
** in batches. */
static int q_sleep(lua_State *L, q_handle *q, _Atomic uint32_t *seq,
                   _Atomic uint32_t *sleepers, uint64_t *watch,
                   double deadline, int *spun) {
  q_shared *sh = q->sh;
  if (!*spun && watch != NULL) {
    uint64_t old = LOAD(*watch);
    struct timespec t0, t;
    *spun = 1;
    shm_mutex_unlock(&sh->mutex);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0; LOAD(*watch) == old; i++) {
      if ((i & 7) == 7) {
        clock_gettime(CLOCK_MONOTONIC, &t);
        if ((t.tv_sec - t0.tv_sec) * 1000000000L + (t.tv_nsec - t0.tv_nsec) > Q_SPIN_NS) break;
      }
      sched_yield();   /* the peer may be waiting for this very CPU */
    }
    q_lock(L, q);
    return MT_WOKEN;
  }
  uint32_t v = atomic_load(seq);
  double slice = Q_SLICE;
  if (deadline >= 0) {
    double left = deadline - mt_monotonic();
    if (left <= 0) return MT_TIMEDOUT;
    if (left < slice) slice = left;
  }
  atomic_fetch_add(sleepers, 1);
  shm_mutex_unlock(&sh->mutex);
  mt_blocking_begin(L);
  shm_futex_wait(seq, v, slice);
  mt_blocking_end(L);
  atomic_fetch_sub(sleepers, 1);
  q_lock(L, q);
  if (atomic_load(seq) == v) q_repair(sh);   /* a quiet slice: anyone dead? */
  mt_thread *self = mt_self(L);
  if (self != NULL && atomic_load(&self->interrupt)) return MT_INTERRUPTED;
  if (deadline >= 0 && mt_monotonic() >= deadline) return MT_TIMEDOUT;
  return MT_WOKEN;
}

static void q_check_open(lua_State *L, q_handle *q) {
  if (q->closed) mt_raise(L, "ValueError", "Queue is closed");
}

/* Leaves the mutex and raises what the wait result asks for. */
static void q_fail(lua_State *L, q_shared *sh, int r, const char *cls) {
  shm_mutex_unlock(&sh->mutex);
  if (r == MT_INTERRUPTED) mt_check_interrupt(L);
  mt_raise(L, cls, NULL);
}

/* (block, timeout) from put's or get's arguments starting at 'idx':
** positional or one options table.  Returns the deadline (-1: none),
** -2 for "don't block". */
static double q_wait_args(lua_State *L, int idx, const char *fname) {
  int optidx = lua_istable(L, idx) ? idx : 0;
  int block = mt_opt_boolean(L, idx, optidx, "block", 1);
  double timeout = mt_opt_timeout(L, idx + 1, optidx, "timeout", fname);
  if (!block) return -2;
  if (isnan(timeout)) return -1;
  if (timeout < 0) mt_raise(L, "ValueError", "'timeout' must be a non-negative number");
  return mt_monotonic() + timeout;
}

static int q_can_put(q_shared *sh, uint64_t need) {
  return (sh->maxsize <= 0 || sh->items < sh->maxsize) && sh->wstream == 0
      && ring_free(sh) >= need;
}

/* Nothing but the ring's free bytes stops a put (not maxsize, not a
** stream being written). */
static int q_short_of_room(q_shared *sh) {
  return (sh->maxsize <= 0 || sh->items < sh->maxsize) && sh->wstream == 0;
}

/* Grows the ring so that 'need' more bytes fit: the file grows for
** every process (each maps the new part when it next locks), and the
** live bytes move to where the new size puts their positions.  Mutex
** held.  Returns 0 when it cannot: at Q_RINGMAX, or out of memory. */
static int q_grow(q_handle *q, uint64_t need) {
  q_shared *sh = q->sh;
  uint64_t used = sh->tail - sh->head, cap = sh->capacity;
  while (cap - used < need) cap *= 2;
  if (cap > Q_RINGMAX || sh->fixed) return 0;
  char *live = used > 0 ? malloc((size_t)used) : NULL;
  if (used > 0 && live == NULL) return 0;
  struct stat st;
  int ok = fstat(q->seg.fd, &st) == 0
        && ((uint64_t)st.st_size >= Q_HDRSIZE + cap
            || ftruncate(q->seg.fd, (off_t)(Q_HDRSIZE + cap)) == 0)
        && shm_segment_cover(&q->seg, &q->mapped, Q_HDRSIZE + (size_t)cap) == 0;
  if (ok) {
    ring_read(sh, sh->head, live, (size_t)used);
    sh->capacity = cap;
    ring_write(sh, sh->head, live, (size_t)used);
  }
  free(live);
  return ok;
}

/* An emptied ring that grew big goes back to its first size, and its
** pages go back to the system (the file keeps its length: other
** processes may map it).  Mutex held. */
static void q_shrink_if_empty(q_handle *q) {
  q_shared *sh = q->sh;
  if (sh->capacity < Q_SHRINK_FROM || sh->tail != sh->head
      || sh->wstream != 0 || sh->rstream != 0) return;
  fallocate(q->seg.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
            (off_t)(Q_HDRSIZE + Q_RINGSIZE), (off_t)(sh->capacity - Q_RINGSIZE));
  sh->capacity = Q_RINGSIZE;
}

/* Waits (mutex held) until 'need' bytes can be put.  CPython's put
** blocks only on maxsize (its feeder thread buffers without bound), so
** a ring short of room waits only while readers drain it: when nobody
** has taken anything for Q_GROW_AFTER -- or at once for put_nowait, or
** when the put's timeout ends -- it grows instead.  Only a ring at
** Q_RINGMAX makes a put wait for readers (or raise queue.Full). */
static void q_wait_put(lua_State *L, q_handle *q, uint64_t need, double deadline) {
  q_shared *sh = q->sh;
  int spun = 0, growable = 1;
  uint64_t seen = sh->head;
  double since = -1;
  while (!q_can_put(sh, need)) {
    double wake_at = deadline;
    if (growable && q_short_of_room(sh)) {
      double now = mt_monotonic();
      if (since < 0 || sh->head != seen) { seen = sh->head; since = now; }
      double grow_at = since + Q_GROW_AFTER;
      if (deadline == -2 || now >= grow_at || (deadline >= 0 && now >= deadline)) {
        if (q_grow(q, need)) continue;
        growable = 0;
      } else if (deadline < 0 || grow_at < deadline) {
        wake_at = grow_at;
      }
    }
    if (deadline == -2) q_fail(L, sh, MT_TIMEDOUT, "queue.Full");
    int r = q_sleep(L, q, &sh->not_full, &sh->putters, &sh->head, wake_at, &spun);
    if (r == MT_TIMEDOUT && wake_at != deadline) continue;   /* time to grow */
    if (r != MT_WOKEN && !q_can_put(sh, need)) q_fail(L, sh, r, "queue.Full");
  }
}

/* A message bigger than the biggest ring: mutex held, put reserved. */
static void q_put_stream(lua_State *L, q_handle *q, const char *s, size_t n) {
  q_shared *sh = q->sh;
  pid_t me = getpid();
  uint32_t len = (uint32_t)n;
  size_t done = 0;
  int spun = 1;
  sh->wstream = me;
  sh->stream_orphaned = 0;
  sh->stream_start = sh->tail;
  sh->stream_end = sh->tail + 4 + n;
  ring_write(sh, sh->tail, (const char *)&len, 4);
  STORE(sh->tail, sh->tail + 4);
  for (;;) {
    size_t k = (size_t)ring_free(sh);
    if (k > n - done) k = n - done;
    if (sh->stream_orphaned) k = n - done;   /* its reader is gone */
    else if (k > 0) {
      ring_write(sh, sh->tail, s + done, k);
      STORE(sh->tail, sh->tail + k);
      wake(&sh->not_empty, &sh->getters, INT_MAX);
    }
    done += k;
    if (done == n) break;
    /* committed: Ctrl-C is kept pending until the message is through */
    q_sleep(L, q, &sh->not_full, &sh->putters, NULL, -1, &spun);
  }
  sh->wstream = 0;
  sh->stream_orphaned = 0;
  wake_everyone(sh);
}

/* Puts one message, given as two pieces (a head and a tail that may be
** empty), into the ring: the item is visible to others on return. */
static void q_put_message(lua_State *L, q_handle *q, const char *head, size_t hn,
                          const char *tail, size_t tn, double deadline) {
  q_shared *sh = q->sh;
  uint32_t len = (uint32_t)(hn + tn);
  uint64_t need = 4 + (uint64_t)len;
  q_lock(L, q);
  q_wait_put(L, q, need, deadline);
  STORE(sh->items, sh->items + 1);
  sh->unfinished++;
  ring_write(sh, sh->tail, (const char *)&len, 4);
  ring_write(sh, sh->tail + 4, head, hn);
  if (tn > 0) ring_write(sh, sh->tail + 4 + hn, tail, tn);
  STORE(sh->tail, sh->tail + need);
  sh->complete++;
  wake(&sh->not_empty, &sh->getters, 1);
  shm_mutex_unlock(&sh->mutex);
}

/* A scalar's pickle goes straight into the ring in its two parts: a
** string is copied once, not first into a pickle string. */
static int q_put_scalar(lua_State *L, q_handle *q, int itemidx, double deadline) {
  unsigned char head[PK_SCALAR_HEAD];
  const char *tail;
  size_t taillen;
  int hn = pk_scalar_parts(L, itemidx, head, &tail, &taillen);
  if (hn == 0 || 4 + hn + (uint64_t)taillen > Q_RINGMAX) return 0;
  q_put_message(L, q, (const char *)head, (size_t)hn, tail, taillen, deadline);
  return 1;
}

static int q_put_impl(lua_State *L, q_handle *q, int itemidx, double deadline) {
  q_shared *sh = q->sh;
  size_t n;
  q_check_open(L, q);
  if (!q_put_scalar(L, q, itemidx, deadline)) {
    pk_dumps(L, itemidx);   /* raises before anything is touched */
    const char *s = lua_tolstring(L, -1, &n);
    if (n > 0x7fffffffu) return mt_raise(L, "ValueError", "put(): message too large");
    if (4 + (uint64_t)n <= Q_RINGMAX) {
      q_put_message(L, q, s, n, NULL, 0, deadline);
    } else {
      q_lock(L, q);
      q_wait_put(L, q, 4, deadline);
      STORE(sh->items, sh->items + 1);
      sh->unfinished++;
      q_put_stream(L, q, s, n);
      shm_mutex_unlock(&sh->mutex);
    }
    lua_pop(L, 1);
  }
  mt_check_interrupt(L);
  return 0;
}

static int q_put(lua_State *L) {
  q_handle *q = q_check(L);
  luaL_checkany(L, 2);
  return q_put_impl(L, q, 2, q_wait_args(L, 3, "put"));
}

static int q_put_nowait(lua_State *L) {
  q_handle *q = q_check(L);
  luaL_checkany(L, 2);
  return q_put_impl(L, q, 2, -2);
}

/* Room for n bytes in this process's copy-out buffer (mutex held: no
** error may be raised, so failure is reported). */
static int q_reserve(q_handle *q, size_t n) {
  if (n <= q->bufsize) return 1;
  size_t size = q->bufsize ? q->bufsize : 256;
  while (size < n) size *= 2;
  char *b = realloc(q->buf, size);
  if (b == NULL) return 0;
  q->buf = b;
  q->bufsize = size;
  return 1;
}

/* Copies out the whole message at the head.  Mutex held.  Returns its
** length, or -1 when out of memory (the message is dropped). */
static int64_t q_take_message(q_handle *q) {
  q_shared *sh = q->sh;
  uint32_t len;
  ring_read(sh, sh->head, (char *)&len, 4);
  int ok = q_reserve(q, len);
  ring_read(sh, sh->head + 4, ok ? q->buf : NULL, len);
  STORE(sh->head, sh->head + 4 + len);
  sh->complete--;
  STORE(sh->items, sh->items - 1);
  wake(&sh->not_full, &sh->putters, 1);
  return ok ? (int64_t)len : -1;
}

/* Reads the stream at the head as its one reader.  Mutex held.
** Returns its length, -1 out of memory, -2 when its writer died. */
static int64_t q_take_stream(lua_State *L, q_handle *q) {
  q_shared *sh = q->sh;
  uint32_t len;
  int spun = 1, ok;
  size_t done = 0;
  sh->rstream = getpid();
  sh->stream_aborted = 0;
  STORE(sh->items, sh->items - 1);
  ring_read(sh, sh->head, (char *)&len, 4);
  STORE(sh->head, sh->head + 4);
  ok = q_reserve(q, len);
  for (;;) {
    size_t k = (size_t)(sh->tail - sh->head);
    if (k > len - done) k = len - done;
    if (k > 0) {
      ring_read(sh, sh->head, ok ? q->buf + done : NULL, k);
      STORE(sh->head, sh->head + k);
      done += k;
      wake(&sh->not_full, &sh->putters, INT_MAX);
    }
    if (done == len || sh->stream_aborted) break;
    q_sleep(L, q, &sh->not_empty, &sh->getters, NULL, -1, &spun);
  }
  int aborted = sh->stream_aborted;
  sh->rstream = 0;
  sh->stream_aborted = 0;
  wake_everyone(sh);
  if (aborted) return -2;
  return ok ? (int64_t)len : -1;
}

static int q_can_stream(q_shared *sh) {
  return sh->complete == 0 && sh->rstream == 0 && sh->wstream != 0
      && sh->tail - sh->head >= 4;
}

static int q_get_impl(lua_State *L, q_handle *q, double deadline) {
  q_shared *sh = q->sh;
  int64_t len;
  int spun = 0;
  q_check_open(L, q);
  q_lock(L, q);
  for (;;) {
    if (sh->complete > 0 && sh->rstream == 0) { len = q_take_message(q); break; }
    if (q_can_stream(sh)) {
      len = q_take_stream(L, q);
      if (len != -2) break;
      continue;   /* its writer died: wait for the next one */
    }
    if (deadline == -2) q_fail(L, sh, MT_TIMEDOUT, "queue.Empty");
    int r = q_sleep(L, q, &sh->not_empty, &sh->getters, &sh->tail, deadline, &spun);
    if (r != MT_WOKEN && !(sh->complete > 0 && sh->rstream == 0) && !q_can_stream(sh))
      q_fail(L, sh, r, "queue.Empty");
  }
  q_shrink_if_empty(q);
  shm_mutex_unlock(&sh->mutex);
  if (len < 0) return mt_raise(L, "MemoryError", "get(): no memory for a message");
  pk_loads(L, q->buf, (size_t)len);
  if (q->bufsize > (1u << 20)) {   /* don't keep a huge buffer around */
    free(q->buf);
    q->buf = NULL;
    q->bufsize = 0;
  }
  return 1;
}

static int q_get(lua_State *L) {
  q_handle *q = q_check(L);
  return q_get_impl(L, q, q_wait_args(L, 2, "get"));
}

static int q_get_nowait(lua_State *L) {
  return q_get_impl(L, q_check(L), -2);
}

static int q_qsize(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)LOAD(q_check(L)->sh->items));
  return 1;
}

static int q_empty(lua_State *L) {
  lua_pushboolean(L, LOAD(q_check(L)->sh->items) == 0);
  return 1;
}

static int q_full(lua_State *L) {
  q_shared *sh = q_check(L)->sh;
  lua_pushboolean(L, sh->maxsize > 0 && LOAD(sh->items) >= sh->maxsize);
  return 1;
}

static int q_close(lua_State *L) {
  q_check(L)->closed = 1;
  return 0;
}

/* There is no feeder thread to wait for: after close() this returns. */
static int q_join_thread(lua_State *L) {
  q_handle *q = q_check(L);
  if (!q->closed) return mt_raise(L, "AssertionError", "Queue.join_thread() called before close()");
  return 0;
}

static int q_cancel_join_thread(lua_State *L) {
  q_check(L);
  return 0;
}

static int q_task_done(lua_State *L) {
  q_handle *q = q_check(L);
  q_shared *sh = q->sh;
  q_lock(L, q);
  if (sh->unfinished <= 0) {
    shm_mutex_unlock(&sh->mutex);
    return mt_raise(L, "ValueError", "task_done() called too many times");
  }
  if (--sh->unfinished == 0) wake(&sh->all_done, &sh->joiners, INT_MAX);
  shm_mutex_unlock(&sh->mutex);
  return 0;
}

static int q_join(lua_State *L) {
  q_handle *q = q_check(L);
  q_shared *sh = q->sh;
  int spun = 1;
  q_lock(L, q);
  while (sh->unfinished > 0) {
    int r = q_sleep(L, q, &sh->all_done, &sh->joiners, NULL, -1, &spun);
    if (r == MT_INTERRUPTED) q_fail(L, sh, r, "RuntimeError");
  }
  shm_mutex_unlock(&sh->mutex);
  return 0;
}

/* ---------------------------------------------------- making queues */

static void q_attach_handle(lua_State *L, int selfidx, q_handle *src) {
  q_handle *q = (q_handle *)mt_newobject(L, selfidx, &Q_KEY, sizeof(q_handle));
  q->seg.fd = -1;
  lua_rawgetp(L, selfidx, &Q_KEY);
  luaL_setmetatable(L, Q_MT);
  lua_pop(L, 1);
  *q = *src;
}

static int q_gc(lua_State *L) {
  q_handle *q = (q_handle *)luaL_checkudata(L, 1, Q_MT);
  shm_segment_close(&q->seg);
  q->sh = NULL;
  free(q->buf);
  q->buf = NULL;
  return 0;
}

static uint64_t q_new_token(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  uint64_t x = (uint64_t)ts.tv_nsec * 0x9e3779b97f4a7c15ULL ^ ((uint64_t)getpid() << 32)
             ^ (uint64_t)ts.tv_sec ^ (uint64_t)(uintptr_t)&ts;
  x ^= x >> 31;
  return x * 0xbf58476d1ce4e5b9ULL;
}

/* Queue(maxsize=0) / Queue{maxsize=} */
static int q_init(lua_State *L) {
  q_handle h;
  lua_Integer maxsize = 0;
  luaL_checktype(L, 1, LUA_TTABLE);
  if (lua_istable(L, 2)) {   /* Python-call form */
    if (lua_getfield(L, 2, "maxsize") == LUA_TNIL) { lua_pop(L, 1); lua_rawgeti(L, 2, 1); }
    lua_replace(L, 2);
  }
  if (!lua_isnoneornil(L, 2)) {
    if (!lua_isinteger(L, 2)) return mt_argtype_error(L, 2, "Queue", "maxsize", "an integer");
    maxsize = lua_tointeger(L, 2);
  }
  memset(&h, 0, sizeof h);
  int e = shm_segment_create(&h.seg, Q_HDRSIZE + Q_RINGSIZE, "mtlua-queue");
  if (e != 0) return mt_raise(L, "OSError", "[Errno %d] Queue(): %s", e, strerror(e));
  h.mapped = h.seg.size;
  /* no room to reserve (a limit on the address space): a ring that
  ** cannot grow, whose puts wait for readers once it is full */
  int fixed = shm_segment_reserve(&h.seg, Q_HDRSIZE + Q_RINGMAX, h.mapped) != 0;
  q_shared *sh = h.sh = (q_shared *)h.seg.base;
  sh->fixed = fixed;
  sh->token = q_new_token();
  sh->capacity = Q_RINGSIZE;
  sh->maxsize = maxsize;
  shm_mutex_init(&sh->mutex);
  sh->magic = Q_MAGIC;
  q_attach_handle(L, 1, &h);
  return 0;
}

static int q_kind_of(lua_State *L) {
  lua_getmetatable(L, 1);
  for (int k = Q_NKINDS - 1; k >= 0; k--) {
    mt_push_class(L, q_classnames[k]);
    int is = 0;
    for (lua_pushvalue(L, -2); lua_istable(L, -1); ) {   /* walk the bases */
      if (lua_rawequal(L, -1, -2)) { is = 1; break; }
      lua_getfield(L, -1, "super");
      lua_remove(L, -2);
    }
    lua_pop(L, 2);
    if (is) { lua_pop(L, 1); return k; }
  }
  lua_pop(L, 1);
  return Q_QUEUE;
}

static int q_rebuild(lua_State *L);

/* pickle: (rebuild_queue, {pid, fd, token, kind}) */
static int q_reduce(lua_State *L) {
  q_handle *q = q_check(L);
  lua_pushcfunction(L, q_rebuild);
  shm_push_ref(L, 4, q->seg.fd, q->sh->token, q_kind_of(L));
  return 2;
}

static int q_rebuild(lua_State *L) {
  pid_t pid = (pid_t)luaL_checkinteger(L, 1);
  int fd = (int)luaL_checkinteger(L, 2);
  uint64_t token = (uint64_t)luaL_checkinteger(L, 3);
  lua_Integer kind = luaL_optinteger(L, 4, Q_QUEUE);
  q_handle h;
  if (kind < 0 || kind >= Q_NKINDS) return mt_raise(L, "ValueError", "rebuild_queue(): bad kind");
  memset(&h, 0, sizeof h);
  int e = shm_segment_attach(&h.seg, pid, fd);
  if (e != 0)
    return mt_raise(L, "OSError", "[Errno %d] cannot open the queue of process %d: %s "
                    "(the sending process must be alive)", e, (int)pid, strerror(e));
  h.mapped = h.seg.size;
  if (h.mapped < Q_HDRSIZE + Q_RINGSIZE || h.mapped > Q_HDRSIZE + Q_RINGMAX
      || h.mapped % 4096 != 0)
    e = EINVAL;
  else   /* without room to reserve, it works while the ring is not grown */
    shm_segment_reserve(&h.seg, Q_HDRSIZE + Q_RINGMAX, h.mapped);
  h.sh = (q_shared *)h.seg.base;
  if (e != 0 || h.sh->magic != Q_MAGIC || h.sh->token != token) {
    shm_segment_close(&h.seg);
    return mt_raise(L, "ValueError", "rebuild_queue(): process %d no longer holds that queue", (int)pid);
  }
  lua_newtable(L);
  mt_push_class(L, q_classnames[kind]);
  lua_setmetatable(L, -2);
  q_attach_handle(L, lua_gettop(L), &h);
  return 1;
}

static int q_tostring(lua_State *L) {
  lua_getfield(L, 1, "__name__");
  lua_pushfstring(L, "<multiprocessing.queues.%s object at %p>",
                  lua_isstring(L, -1) ? lua_tostring(L, -1) : "Queue", lua_topointer(L, 1));
  return 1;
}

static const luaL_Reg q_methods[] = {
  {"__init__", q_init},
  {"put", q_put},
  {"put_nowait", q_put_nowait},
  {"get", q_get},
  {"get_nowait", q_get_nowait},
  {"qsize", q_qsize},
  {"empty", q_empty},
  {"full", q_full},
  {"close", q_close},
  {"join_thread", q_join_thread},
  {"cancel_join_thread", q_cancel_join_thread},
  {"__reduce__", q_reduce},
  {"__tostring", q_tostring},
  {NULL, NULL}
};

static const luaL_Reg jq_methods[] = {
  {"task_done", q_task_done},
  {"join", q_join},
  {NULL, NULL}
};

static const luaL_Reg shm_funcs[] = {
  {"rebuild_queue", q_rebuild},
  {"register_class", mt_lua_register_class},
  {NULL, NULL}
};

/* class(name, base) with the prelude's class() */
static void subclass(lua_State *L, const char *name, int baseidx) {
  baseidx = lua_absindex(L, baseidx);
  lua_getfield(L, LUA_REGISTRYINDEX, "mtlua.class");
  lua_pushstring(L, name);
  lua_pushvalue(L, baseidx);
  lua_call(L, 2, 1);
}

int luaopen_mt_shm(lua_State *L) {
  if (luaL_newmetatable(L, Q_MT)) {
    lua_pushcfunction(L, q_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_pop(L, 1);
  luaL_newlib(L, shm_funcs);
  mt_newclass(L, "Queue", q_methods);
  mt_register_class(L, q_classnames[Q_QUEUE], -1);
  subclass(L, "JoinableQueue", -1);
  luaL_setfuncs(L, jq_methods, 0);
  mt_register_class(L, q_classnames[Q_JOINABLE], -1);
  lua_setfield(L, -3, "JoinableQueue");
  subclass(L, "SimpleQueue", -1);
  mt_register_class(L, q_classnames[Q_SIMPLE], -1);
  lua_setfield(L, -3, "SimpleQueue");
  lua_setfield(L, -2, "Queue");
  return 1;
}
