/*
** hub.c -- gevent's hub (module "_hub", wrapped by lib/gevent.lua): one
** per OS thread, a libuv loop plus a queue of greenlets ready to run.
**
** The hub is a pseudo-greenlet: switching to it makes the trampoline
** (coroutine.c) call hub_next(), which picks the next ready greenlet,
** or else runs the loop with the GIL released until something is
** ready.  libuv callbacks run in the hub's thread without the GIL, so
** they only record what fired (a list private to that thread); the hub
** turns those records into ready greenlets once it holds the GIL again.
** Wake-ups from other OS threads (a thread releasing a Lock a greenlet
** waits for) hold the GIL: they queue the greenlet and uv_async_send.
**
** The ready queue holds (greenlet, value) pairs in a Lua table used as a
** ring (so the greenlets are anchored), with a mode per slot in C.
**
** A switch queued for a greenlet ends the wait it is in (or about to
** enter) when queued; if something else resumed it meanwhile (its sleep
** timer fired while an Event woke it, a Semaphore released twice),
** the entry is stale and must not cut its next wait short.  So each
** slot records the greenlet's resume count (gl_gr.seq) at queueing
** time, and a switch whose count no longer matches is dropped.  Throws
** (kill, Timeout) are never stale: they are cancelled explicitly.
*/
#define _GNU_SOURCE
#include <math.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <uv.h>

#include "coroutine.h"

typedef struct hub_timer hub_timer;
typedef struct hub_fd hub_fd;

typedef struct gl_hub {
  uv_loop_t loop;
  uv_async_t async;
  gl_ts *ts;
  int ring_ref;               /* registry: the ring table */
  int cap, head, count;       /* ring slots, 2 Lua values each */
  struct hub_slot { unsigned seq; unsigned char mode; } *slots;
  gl_gr *wakes, *wakes_tail;  /* woken mt_wait greenlets (GIL) */
  hub_timer *fired;           /* fired during uv_run (hub thread) */
  int external;               /* greenlets waiting in mt_wait */
  double last_poll;
  hub_fd **fds;               /* by fd: the polls (see hook_wait_fd) */
  int nfds;
  hub_fd *fd_fired;           /* fired during uv_run (hub thread) */
  hub_fd *zombies;            /* cancelled by another thread, to close */
  struct gl_hub *next_all;    /* all_hubs, under mains_mutex */
  hub_timer *spare;           /* stopped timers, for reuse */
  int nspare;
} gl_hub;

enum { MODE_SWITCH, MODE_THROW };
enum { T_WAIT, T_SCHED };

struct hub_timer {
  uv_timer_t h;
  gl_hub *hub;
  int kind, mode;
  int ref;                    /* T_SCHED: registry {g, value} */
  unsigned seq;               /* T_SCHED: g's resume count when set */
  gl_gr *g;                   /* T_WAIT: its greenlet (g->wait_timer) */
  double want;                /* T_WAIT: the deadline of g's timed wait
                                 now, < 0 when idle (see wait_timer_arm) */
  double due;                 /* T_WAIT: the deadline it is armed for */
  struct timer_box *box;      /* the Lua object holding it, if any */
  int fired, cancelled;
  hub_timer *next_fired;
};

/* ----------------------------------------------- the main hubs */

/* on_interrupt runs in the SIGINT watcher thread: it finds the main
** thread's hub here, under a mutex. */
static pthread_mutex_t mains_mutex = PTHREAD_MUTEX_INITIALIZER;
static struct { mt_universe *U; gl_hub *h; } mains[16];
static mt_universe *patched[16];

static void set_main_hub(mt_universe *U, gl_hub *h) {
  pthread_mutex_lock(&mains_mutex);
  for (int i = 0; i < 16; i++)
    if (mains[i].U == NULL || mains[i].U == U) { mains[i].U = U; mains[i].h = h; break; }
  pthread_mutex_unlock(&mains_mutex);
}

static int is_patched(mt_universe *U) {
  for (int i = 0; i < 16; i++) if (patched[i] == U) return 1;
  return 0;
}

/* ------------------------------------------------------- the ring */

static void ring_push(lua_State *L, gl_hub *h, int mode, unsigned seq) {   /* g, v on top */
  lua_rawgeti(L, LUA_REGISTRYINDEX, h->ring_ref);
  if (h->count == h->cap) {           /* grow: copy in order */
    int ncap = h->cap * 2;
    struct hub_slot *m = malloc(ncap * sizeof *m);
    if (m == NULL) luaL_error(L, "not enough memory");
    lua_createtable(L, 2 * ncap, 0);
    for (int i = 0; i < h->count; i++) {
      int s = (h->head + i) % h->cap;
      lua_rawgeti(L, -2, 2 * s + 1);
      lua_rawseti(L, -2, 2 * i + 1);
      lua_rawgeti(L, -2, 2 * s + 2);
      lua_rawseti(L, -2, 2 * i + 2);
      m[i] = h->slots[s];
    }
    free(h->slots);
    h->slots = m;
    h->head = 0;
    h->cap = ncap;
    lua_pushvalue(L, -1);
    lua_rawseti(L, LUA_REGISTRYINDEX, h->ring_ref);
    lua_remove(L, -2);
  }
  int s = (h->head + h->count) % h->cap;
  lua_insert(L, -3);                  /* ring, g, v */
  lua_rawseti(L, -3, 2 * s + 2);
  lua_rawseti(L, -2, 2 * s + 1);
  lua_pop(L, 1);
  h->slots[s].mode = (unsigned char)mode;
  h->slots[s].seq = seq;
  h->count++;
}

/* Pushes g, v of the oldest entry; returns its mode and sets *seq. */
static int ring_pop(lua_State *L, gl_hub *h, unsigned *seq) {
  int s = h->head;
  lua_rawgeti(L, LUA_REGISTRYINDEX, h->ring_ref);
  lua_rawgeti(L, -1, 2 * s + 1);
  lua_rawgeti(L, -2, 2 * s + 2);
  lua_pushnil(L);
  lua_rawseti(L, -4, 2 * s + 1);
  lua_pushnil(L);
  lua_rawseti(L, -4, 2 * s + 2);
  lua_remove(L, -3);
  h->head = (h->head + 1) % h->cap;
  h->count--;
  *seq = h->slots[s].seq;
  return h->slots[s].mode;
}

/* --------------------------------------------------------- timers */

/* No GIL: records only.  And ends this uv_run at once: libuv 1.44's
** UV_RUN_ONCE runs the timers already due before it polls, then polls
** until the next timer or for ever, while what this one fired waits
** for the hub (uv_stop makes that poll not block). */
static void timer_cb(uv_timer_t *handle) {
  hub_timer *t = handle->data;
  gl_hub *h = t->hub;
  t->fired = 1;
  t->next_fired = h->fired;
  h->fired = t;
  uv_stop(handle->loop);
}

static void timer_free_cb(uv_handle_t *handle) {
  hub_timer *t = handle->data;
  if (t->box != NULL) *(hub_timer **)t->box = NULL;   /* box->t */
  free(t);
}

static uint64_t ms_until(gl_hub *h, double seconds) {
  if (seconds <= 0) return 0;
  double ms = ceil(seconds * 1000.0 - 1e-6);
  (void)h;
  return ms > 1e12 ? (uint64_t)1e12 : (uint64_t)ms;
}

/* A timed wait (a socket with a timeout) makes one timer per wait: a
** stopped timer is kept for the next instead of closed and freed. */
#define SPARE_TIMERS 64

static hub_timer *timer_start(lua_State *L, gl_hub *h, double seconds, int kind) {
  hub_timer *t = h->spare;
  if (t != NULL) {
    h->spare = t->next_fired;
    h->nspare--;
    memset((char *)t + sizeof t->h, 0, sizeof *t - sizeof t->h);
  } else {
    t = calloc(1, sizeof *t);
    if (t == NULL) luaL_error(L, "not enough memory");
    uv_timer_init(&h->loop, &t->h);
    t->h.data = t;
  }
  t->hub = h;
  t->kind = kind;
  t->ref = LUA_NOREF;
  uv_update_time(&h->loop);   /* the loop's clock is stale after Lua ran */
  uv_timer_start(&t->h, timer_cb, ms_until(h, seconds), 0);
  uv_ref((uv_handle_t *)&t->h);   /* a spare may have been an idle wait timer */
  return t;
}

/* Stops and frees a timer (GIL held, hub thread). */
static void timer_close(lua_State *L, hub_timer *t) {
  if (t->cancelled) return;
  t->cancelled = 1;
  if (t->ref != LUA_NOREF) {
    luaL_unref(L, LUA_REGISTRYINDEX, t->ref);
    t->ref = LUA_NOREF;
  }
  uv_timer_stop(&t->h);
  if (t->box == NULL && t->hub->nspare < SPARE_TIMERS) {
    t->next_fired = t->hub->spare;   /* (the fired list is empty now) */
    t->hub->spare = t;
    t->hub->nspare++;
    return;
  }
  uv_close((uv_handle_t *)&t->h, timer_free_cb);
}

static void queue_wake(gl_hub *h, gl_gr *g) {
  if (g->wake_queued) return;
  g->wake_queued = 1;
  g->wake_next = NULL;
  if (h->wakes_tail) h->wakes_tail->wake_next = g;
  else h->wakes = g;
  h->wakes_tail = g;
}

static void process_fd_fired(gl_hub *h);

/* A greenlet's wait timer is kept armed between its timed waits (a
** socket with a timeout waits once per recv: starting and stopping a
** libuv timer each time cost 7% of an echo loop's user time).  A wait
** whose deadline is no earlier than the armed one just takes the timer
** over; when it fires early for the wait now running it is re-armed,
** and when it fires idle it goes.  Idle, it is unref'd: it never keeps
** the loop alive. */
static hub_timer *wait_timer_arm(lua_State *L, gl_hub *h, gl_gr *g, double deadline) {
  hub_timer *t = g->wait_timer;
  if (t == NULL) {
    t = timer_start(L, h, deadline - mt_monotonic(), T_WAIT);
    t->g = g;
    t->due = deadline;
    g->wait_timer = t;
  } else if (t->due > deadline || !uv_is_active((uv_handle_t *)&t->h)) {
    /* armed too late for this wait (or, defensively, not armed) */
    uv_update_time(&h->loop);
    uv_timer_start(&t->h, timer_cb, ms_until(h, deadline - mt_monotonic()), 0);
    t->due = deadline;
  }
  t->want = deadline;
  uv_ref((uv_handle_t *)&t->h);
  return t;
}

/* Drops g's wait timer (GIL held, hub thread). */
static void wait_timer_drop(lua_State *L, hub_timer *t) {
  if (t->g != NULL) t->g->wait_timer = NULL;
  t->g = NULL;
  timer_close(L, t);
}

/* The wait t served ended: t stays for the next, unless it fired (a
** fired timer is no longer armed: kept, nothing would ever close it). */
static void wait_timer_done(lua_State *L, hub_timer *t) {
  t->want = -1;
  if (!uv_is_active((uv_handle_t *)&t->h)) {
    wait_timer_drop(L, t);
    return;
  }
  uv_unref((uv_handle_t *)&t->h);
}

static void wait_timer_fired(lua_State *L, gl_hub *h, hub_timer *t) {
  gl_gr *g = t->g;
  if (g == NULL || t->want < 0) { wait_timer_drop(L, t); return; }
  double left = t->want - mt_monotonic();
  if (left > 0) {   /* armed for an earlier wait: on to this one's end */
    t->fired = 0;
    uv_update_time(&h->loop);
    uv_timer_start(&t->h, timer_cb, ms_until(h, left), 0);
    t->due = t->want;
  } else if (g->wait_result < 0) {
    g->wait_result = MT_TIMEDOUT;
    queue_wake(h, g);
  }
}

/* The greenlet g is collected (GIL held, any thread): its idle wait
** timer, if any, forgets it and goes when it fires. */
void hub_forget_gr(gl_gr *g) {
  hub_timer *t = g->wait_timer;
  if (t != NULL) t->g = NULL;
  g->wait_timer = NULL;
}

/* After uv_run, with the GIL: what fired becomes ready.  Oldest first,
** so timers keep their order. */
static void process_fired(lua_State *L, gl_hub *h) {
  hub_timer *list = NULL;
  if (h->fd_fired != NULL) process_fd_fired(h);
  while (h->fired) {           /* reverse: the list was built LIFO */
    hub_timer *t = h->fired;
    h->fired = t->next_fired;
    t->next_fired = list;
    list = t;
  }
  for (hub_timer *t = list, *nx; t != NULL; t = nx) {
    nx = t->next_fired;
    if (t->cancelled) continue;
    if (t->kind == T_WAIT) {
      wait_timer_fired(L, h, t);
    } else if (t->kind == T_SCHED && t->ref != LUA_NOREF) {
      lua_rawgeti(L, LUA_REGISTRYINDEX, t->ref);
      lua_rawgeti(L, -1, 1);
      lua_rawgeti(L, -2, 2);
      lua_remove(L, -3);
      ring_push(L, h, t->mode, t->seq);
      luaL_unref(L, LUA_REGISTRYINDEX, t->ref);
      t->ref = LUA_NOREF;
    }
  }
}

/* ------------------------------------------------------ the loop */

static void async_cb(uv_async_t *a) { (void)a; }

static gl_hub *all_hubs;   /* every thread's hub, under mains_mutex */
static void sweep_zombies(gl_hub *h);

static gl_hub *hub_get(lua_State *L) {
  gl_ts *ts = gl_ts_get(L);
  if (ts->hub != NULL) return ts->hub;
  gl_hub *h = calloc(1, sizeof *h);
  if (h == NULL) luaL_error(L, "not enough memory");
  if (uv_loop_init(&h->loop) != 0) { free(h); luaL_error(L, "cannot make the event loop"); }
  uv_async_init(&h->loop, &h->async, async_cb);
  uv_unref((uv_handle_t *)&h->async);
  h->ts = ts;
  h->cap = 64;
  h->slots = malloc(h->cap * sizeof *h->slots);
  if (h->slots == NULL) luaL_error(L, "not enough memory");
  lua_createtable(L, 2 * h->cap, 0);
  h->ring_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  gl_new_hub(L, ts);
  ts->hub = h;
  if (ts->thread != NULL && ts->thread->is_main) set_main_hub(ts->U, h);
  pthread_mutex_lock(&mains_mutex);
  h->next_all = all_hubs;
  all_hubs = h;
  pthread_mutex_unlock(&mains_mutex);
  return h;
}

static double now_coarse(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void run_loop(gl_hub *h, lua_State *T, uv_run_mode mode) {
  if (h->external > 0) uv_ref((uv_handle_t *)&h->async);
  else uv_unref((uv_handle_t *)&h->async);
  if (h->zombies != NULL) sweep_zombies(h);
  mt_blocking_begin(T);
  uv_run(&h->loop, mode);
  mt_blocking_end(T);
  h->last_poll = now_coarse();
  process_fired(T, h);
}

static int interrupted(gl_ts *ts) {
  return ts->thread != NULL && ts->thread->is_main && atomic_load(&ts->thread->interrupt);
}

static void report_hub_error(lua_State *T, gl_gr *hubgr) {
  lua_rawgeti(T, LUA_REGISTRYINDEX, hubgr->throw_ref);
  luaL_unref(T, LUA_REGISTRYINDEX, hubgr->throw_ref);
  hubgr->throw_ref = LUA_NOREF;
  mt_format_error(T, -1);
  fprintf(stderr, "%s\n", lua_tostring(T, -1));
  fflush(stderr);
  lua_pop(T, 2);
}

/* A pinned mt_wait greenlet, or the oldest ready one, or main with an
** exception (Ctrl-C, or nothing left that could ever wake it). */
gl_gr *hub_next(gl_ts *ts) {
  gl_hub *h = ts->hub;
  lua_State *T = ts->Ltr;
  if (h == NULL) { ts->nnext = 0; return ts->main; }
  if (ts->hubgr->throw_ref != LUA_NOREF) report_hub_error(T, ts->hubgr);
  for (;;) {
    if (h->wakes != NULL) {
      gl_gr *g = h->wakes;
      h->wakes = g->wake_next;
      if (h->wakes == NULL) h->wakes_tail = NULL;
      g->wake_queued = 0;
      if (g->state == GL_PINNED && g->waiter != NULL) { ts->nnext = 0; return g; }
      continue;
    }
    if (h->count > 0) {
      if (now_coarse() - h->last_poll > 0.001) run_loop(h, T, UV_RUN_NOWAIT);
      unsigned seq;
      int mode = ring_pop(T, h, &seq);
      gl_gr *g = gl_test(T, -2);
      if (g == NULL || g->ts != ts || g->state == GL_DEAD || g->kind == GL_HUB
          || (mode != MODE_THROW && (g->seq != seq || (g->state == GL_PINNED && g->waiter != NULL)))) {
        lua_pop(T, 2);   /* stale: gone, resumed since, or waiting in mt_wait */
        continue;
      }
      lua_remove(T, -2);
      if (g->state == GL_NEW && mode == MODE_THROW) {   /* never started */
        lua_pop(T, 1);
        continue;
      }
      gl_deliver(T, g, 1, mode == MODE_THROW);
      return g;
    }
    if (interrupted(ts) && ts->main->state == GL_PINNED) {
      if (ts->main->waiter) ts->main->wait_result = MT_INTERRUPTED;
      ts->nnext = 0;
      return ts->main;
    }
    if (!uv_loop_alive(&h->loop) && h->external == 0) {
      if (ts->main->state != GL_PINNED) { ts->nnext = 0; return ts->main; }
      mt_push_exception(T, "gevent.LoopExit", "This operation would block forever");
      gl_deliver(T, ts->main, 0, 1);
      if (ts->main->waiter) ts->main->wait_result = MT_INTERRUPTED;
      return ts->main;
    }
    run_loop(h, T, UV_RUN_ONCE);
  }
}

/* ------------------------------------------- the mt_wait hooks */

/* The current greenlet waits, pinned, until w is woken, the deadline
** passes, or an exception is thrown into it. */
static int pinned_wait(lua_State *L, gl_ts *ts, mt_waiter *w, double deadline) {
  gl_hub *h = ts->hub;
  gl_gr *g = ts->current;
  hub_timer *t = NULL;
  if (ts->thread && atomic_load(&ts->thread->interrupt)) return MT_INTERRUPTED;
  w->greenlet = g;
  g->waiter = w;
  g->wait_result = -1;
  if (deadline >= 0) t = wait_timer_arm(L, h, g, deadline);
  h->external++;
  while (g->wait_result < 0 && !w->woken && !gl_has_pending(g)) {
    ts->next = ts->hubgr;
    ts->nnext = 0;
    gl_suspend(L, ts, 1, 0, NULL);
    lua_settop(L, lua_gettop(L) - ts->nnext);   /* values: dropped */
  }
  h->external--;
  g->waiter = NULL;
  w->greenlet = NULL;
  if (t != NULL) wait_timer_done(L, t);
  if (gl_has_pending(g) || g->wait_result == MT_INTERRUPTED) return MT_INTERRUPTED;
  if (w->woken) return MT_WOKEN;
  return g->wait_result < 0 ? MT_WOKEN : g->wait_result;
}

static int hook_wait(lua_State *L, mt_waiter *w, double deadline) {
  mt_universe *U = mt_universe_of(L);
  if (!is_patched(U)) return -1;
  gl_ts *ts = gl_ts_find(U);
  if (ts == NULL || ts->hub == NULL || ts->closing || ts->current->kind == GL_HUB) return -1;
  return pinned_wait(L, ts, w, deadline);
}

/* GIL held, any OS thread. */
static void hook_wake(mt_waiter *w) {
  gl_gr *g = w->greenlet;
  if (g == NULL || g->waiter != w || g->ts->hub == NULL) return;
  gl_hub *h = g->ts->hub;
  if (g->wait_result < 0) g->wait_result = MT_WOKEN;
  queue_wake(h, g);
  if (g->ts->thread != mt_thread_self_in(g->ts->U)) uv_async_send(&h->async);
}

static void *hook_owner(lua_State *L) {
  mt_universe *U = mt_universe_of(L);
  if (!is_patched(U)) return NULL;
  gl_ts *ts = gl_ts_find(U);
  if (ts == NULL || ts->current->kind != GL_PLAIN) return NULL;
  return ts->current;
}

/* ------------------------------------------------- fd readiness */

/* One uv_poll per fd, in a table indexed by fd, kept between waits:
** making and dropping a poll per wait costs epoll_ctl calls that
** dominate a request/response loop.  Any number of greenlets may wait
** on one fd, in either direction: the poll watches the union of what
** they want.  A caller that promises to call greenlet_cancel_fd before
** closing the fd (MT_FD_KEEP, sockets) lets the poll go on watching
** for reading while nobody waits; it is narrowed only when an event
** comes that no waiter wants (epoll is level-triggered: it would come
** again and again).  Without the promise the poll goes with the last
** waiter: a closed fd whose number is reused would otherwise stay
** silently forgotten by epoll while libuv believes it is watched. */
typedef struct fd_waiter {
  struct fd_waiter *next;
  gl_gr *g;
  int events;
  int state;
} fd_waiter;

enum { FW_WAITING, FW_READY, FW_CANCELLED };

struct hub_fd {
  uv_poll_t p;
  gl_hub *h;
  int fd;
  int events;              /* what p watches now (0: stopped) */
  int keep;
  int revents;             /* fired, not yet processed (hub thread) */
  fd_waiter *waiters;
  hub_fd *next_fired, *next_zombie;
};

#define FD_ONLIST 0x100    /* in revents: on the hub's fd_fired list */
#define UV_BOTH (UV_READABLE | UV_WRITABLE)

static void fd_free_cb(uv_handle_t *handle) { free(handle->data); }

static void poll_cb(uv_poll_t *p, int status, int events) {   /* no GIL */
  hub_fd *e = p->data;
  if (status < 0) events = UV_BOTH;    /* the retried call reports it */
  if (!(e->revents & FD_ONLIST)) {
    e->next_fired = e->h->fd_fired;
    e->h->fd_fired = e;
  }
  e->revents |= (events & UV_BOTH) | FD_ONLIST;
}

static hub_fd *fd_lookup(gl_hub *h, int fd) {
  return (fd >= 0 && fd < h->nfds) ? h->fds[fd] : NULL;
}

/* The entry of fd, made if needed; NULL if libuv refuses the fd. */
static hub_fd *fd_entry(gl_hub *h, int fd) {
  hub_fd *e = fd_lookup(h, fd);
  if (e != NULL || fd < 0) return e;
  if (fd >= h->nfds) {
    int n = h->nfds ? h->nfds : 64;
    while (n <= fd) n *= 2;
    hub_fd **t = realloc(h->fds, n * sizeof *t);
    if (t == NULL) return NULL;
    memset(t + h->nfds, 0, (n - h->nfds) * sizeof *t);
    h->fds = t;
    h->nfds = n;
  }
  e = calloc(1, sizeof *e);
  if (e == NULL) return NULL;
  if (uv_poll_init(&h->loop, &e->p, fd) != 0) { free(e); return NULL; }
  e->p.data = e;
  e->h = h;
  e->fd = fd;
  h->fds[fd] = e;
  return e;
}

/* Drops the entry (no waiter left): its memory goes with the close. */
static void fd_close(hub_fd *e) {
  gl_hub *h = e->h;
  if (h->fds[e->fd] == e) h->fds[e->fd] = NULL;
  uv_close((uv_handle_t *)&e->p, fd_free_cb);
}

/* Makes the poll watch 'events' (restarting costs two epoll_ctl, so
** only on a change).  Returns 0 or a libuv error. */
static int fd_watch(hub_fd *e, int events) {
  if (events == e->events) return 0;
  int r = events ? uv_poll_start(&e->p, events, poll_cb) : uv_poll_stop(&e->p);
  e->events = r == 0 ? events : 0;
  return r;
}

static int fd_union(hub_fd *e) {
  int want = 0;
  for (fd_waiter *w = e->waiters; w != NULL; w = w->next) want |= w->events;
  return want;
}

/* After a waiter left: watch what is still wanted, plus reading on a
** kept fd; a non-kept fd nobody waits on goes. */
static void fd_settle(hub_fd *e) {
  int want = fd_union(e);
  if (want == 0 && !e->keep) { fd_close(e); return; }
  if (e->keep) want |= e->events & UV_READABLE;
  fd_watch(e, want);
}

static void fd_unlink(hub_fd *e, fd_waiter *w) {
  for (fd_waiter **pp = &e->waiters; *pp != NULL; pp = &(*pp)->next)
    if (*pp == w) { *pp = w->next; break; }
}

static void fd_wake(gl_hub *h, fd_waiter *w, int state) {
  gl_gr *g = w->g;
  w->state = state;
  if (g->wait_result < 0) g->wait_result = MT_WOKEN;
  queue_wake(h, g);
}

/* With the GIL, after uv_run: the waiters of what fired become ready. */
static void process_fd_fired(gl_hub *h) {
  while (h->fd_fired != NULL) {
    hub_fd *e = h->fd_fired;
    int ev = e->revents & UV_BOTH;
    h->fd_fired = e->next_fired;
    e->revents = 0;
    if (h->fds[e->fd] != e) continue;            /* cancelled meanwhile */
    int wanted = 0;
    for (fd_waiter **pp = &e->waiters; *pp != NULL; ) {
      fd_waiter *w = *pp;
      if (w->events & ev) {
        wanted = 1;
        *pp = w->next;
        fd_wake(h, w, FW_READY);
      } else {
        pp = &w->next;
      }
    }
    if (!wanted) fd_watch(e, fd_union(e));     /* nobody wants it: narrow */
  }
}

/* Wakes every waiter of e (they find their fd closed). */
static void fd_wake_all(gl_hub *h, hub_fd *e) {
  while (e->waiters != NULL) {
    fd_waiter *w = e->waiters;
    e->waiters = w->next;
    fd_wake(h, w, FW_CANCELLED);
  }
}

/* Entries cancelled from another OS thread are closed by their own. */
static void sweep_zombies(gl_hub *h) {
  while (h->zombies != NULL) {
    hub_fd *e = h->zombies;
    h->zombies = e->next_zombie;
    uv_close((uv_handle_t *)&e->p, fd_free_cb);
  }
}

static int hook_wait_fd(lua_State *L, int fd, int events, double deadline, int flags) {
  mt_universe *U = mt_universe_of(L);
  int force = flags & MT_FD_FORCE;
  if (!force && !is_patched(U)) return -1;
  gl_ts *ts = force ? gl_ts_get(L) : gl_ts_find(U);
  if (ts == NULL || ts->closing || ts->current->kind == GL_HUB) return -1;
  if (!force && ts->hub == NULL) return -1;
  gl_hub *h = hub_get(L);
  if (h->zombies != NULL) sweep_zombies(h);
  hub_fd *e = fd_entry(h, fd);
  if (e == NULL) return -1;
  fd_waiter fw;
  fw.state = FW_WAITING;
  fw.g = ts->current;
  fw.events = ((events & POLLIN) ? UV_READABLE : 0) | ((events & POLLOUT) ? UV_WRITABLE : 0);
  if (flags & MT_FD_KEEP) e->keep = 1;
  if (fd_watch(e, e->events | fw.events) != 0) {
    if (e->waiters == NULL) fd_close(e);
    return -1;
  }
  fw.next = e->waiters;
  e->waiters = &fw;
  mt_waiter w;
  mt_waiter_init(L, &w);
  int r = pinned_wait(L, ts, &w, deadline);
  if (fw.state == FW_WAITING) {          /* timed out or interrupted */
    fd_unlink(e, &fw);
    fd_settle(e);
  } else if (fw.state == FW_READY && fd_lookup(h, fd) == e) {
    fd_settle(e);                         /* (not closed meanwhile) */
  }
  return r;
}

/* Cancels e of hub h, which belongs to another OS thread (its loop may
** be running there without the GIL: libuv is not touched here).  The
** kernel forgets the fd now, while it is still open; the hub's own
** thread closes the handle later. */
static void fd_cancel_remote(gl_hub *h, hub_fd *e) {
  struct epoll_event dummy;
  memset(&dummy, 0, sizeof dummy);
  epoll_ctl(uv_backend_fd(&h->loop), EPOLL_CTL_DEL, e->fd, &dummy);
  h->fds[e->fd] = NULL;
  e->next_zombie = h->zombies;
  h->zombies = e;
  if (e->waiters != NULL) {
    fd_wake_all(h, e);
    uv_async_send(&h->async);
  }
}

/* socket close(): greenlets waiting on fd wake (and raise EBADF), and
** every hub forgets fd before the number can be reused. */
static void hook_cancel_fd(lua_State *L, int fd) {
  mt_universe *U = mt_universe_of(L);
  gl_ts *ts = gl_ts_find(U);
  gl_hub *own = ts != NULL ? ts->hub : NULL;
  hub_fd *e = own != NULL ? fd_lookup(own, fd) : NULL;
  if (e != NULL) {
    if (own->zombies != NULL) sweep_zombies(own);
    fd_wake_all(own, e);
    fd_close(e);                  /* uv_close stops it: epoll forgets fd */
  }
  pthread_mutex_lock(&mains_mutex);
  for (gl_hub *h = all_hubs; h != NULL; h = h->next_all)
    if (h != own && h->ts->U == U && (e = fd_lookup(h, fd)) != NULL)
      fd_cancel_remote(h, e);
  pthread_mutex_unlock(&mains_mutex);
}

static void hook_after_fork(mt_universe *U) {
  gl_ts *ts = gl_ts_find(U);
  if (ts != NULL) gl_san_after_fork(ts);
  if (ts != NULL && ts->hub != NULL) {
    uv_loop_fork(&ts->hub->loop);
    ts->hub->wakes = ts->hub->wakes_tail = NULL;
    ts->hub->external = 0;
    if (ts->thread && ts->thread->is_main) set_main_hub(U, ts->hub);
  }
  /* the other threads' hubs are gone; their epoll sets are the
  ** parent's, which a cancel here must never touch */
  all_hubs = ts != NULL ? ts->hub : NULL;
  if (all_hubs != NULL) all_hubs->next_all = NULL;
}

static void hook_interrupt(mt_universe *U) {   /* the watcher thread */
  pthread_mutex_lock(&mains_mutex);
  for (int i = 0; i < 16; i++)
    if (mains[i].U == U && mains[i].h != NULL) uv_async_send(&mains[i].h->async);
  pthread_mutex_unlock(&mains_mutex);
}

/* At thread exit: every handle is closed (timers and polls freed by
** their close callbacks), the loop closed, the ring let go. */
static void close_handle(uv_handle_t *handle, void *arg) {
  lua_State *L = arg;
  if (uv_is_closing(handle)) return;
  if (handle->type == UV_TIMER) {
    hub_timer *t = handle->data;
    if (t->kind == T_WAIT && t->g != NULL) t->g->wait_timer = NULL;
    t->g = NULL;
    if (t->ref != LUA_NOREF) luaL_unref(L, LUA_REGISTRYINDEX, t->ref);
    t->ref = LUA_NOREF;
    t->cancelled = 1;
    uv_close(handle, timer_free_cb);
  } else if (handle->type == UV_POLL) {
    uv_close(handle, fd_free_cb);
  } else {
    uv_close(handle, NULL);
  }
}

void hub_free(lua_State *L, gl_ts *ts) {
  gl_hub *h = ts->hub;
  pthread_mutex_lock(&mains_mutex);
  for (gl_hub **pp = &all_hubs; *pp != NULL; pp = &(*pp)->next_all)
    if (*pp == h) { *pp = h->next_all; break; }
  pthread_mutex_unlock(&mains_mutex);
  h->zombies = NULL;                  /* closed by the walk */
  h->spare = NULL;
  uv_walk(&h->loop, close_handle, L);
  uv_run(&h->loop, UV_RUN_NOWAIT);    /* the close callbacks */
  uv_loop_close(&h->loop);
  luaL_unref(L, LUA_REGISTRYINDEX, h->ring_ref);
  free(h->slots);
  free(h->fds);
  free(h);
  ts->hub = NULL;
}

void hub_install(mt_universe *U) {
  U->greenlet_wake = hook_wake;
  U->greenlet_wait_fd = hook_wait_fd;
  U->greenlet_cancel_fd = hook_cancel_fd;
  U->after_fork_child = hook_after_fork;
  U->on_interrupt = hook_interrupt;
}

/* ------------------------------------------------- module _hub */

static gl_gr *current_gr(lua_State *L) { return gl_ts_get(L)->current; }

/* Switches the current greenlet to the hub; returns what it is woken
** with. */
static int switch_k(lua_State *L, int status, lua_KContext base) {
  (void)status;
  gl_gr *cur = current_gr(L);
  mt_set_running(L);
  if (cur->kind == GL_MAIN) mt_check_interrupt(L);
  gl_raise_pending(L);
  return lua_gettop(L) - (int)base;
}

static int to_hub(lua_State *L, lua_KContext base, lua_KFunction k) {
  gl_ts *ts = gl_ts_get(L);
  hub_get(L);
  if (ts->current->kind == GL_HUB)
    return mt_raise(L, "gevent.BlockingSwitchOutError", "cannot switch to the hub from the hub");
  if (ts->closing)
    return mt_raise(L, "greenlet.error", "cannot switch while a collected greenlet is unwound");
  ts->next = ts->hubgr;
  ts->nnext = 0;
  gl_suspend(L, ts, 0, base, k);
  return k(L, LUA_OK, base);
}

static int h_switch(lua_State *L) {
  lua_settop(L, 0);
  return to_hub(L, 0, switch_k);
}

/* schedule(g, value?) / schedule_throw(g, exc) */
static int schedule(lua_State *L, int mode) {
  gl_gr *g = gl_check(L, 1);
  gl_hub *h = hub_get(L);
  if (g->ts != h->ts) return mt_raise(L, "greenlet.error", "cannot schedule a greenlet of a different thread");
  lua_settop(L, 2);
  ring_push(L, h, mode, g->seq);
  return 0;
}
static int h_schedule(lua_State *L) { return schedule(L, MODE_SWITCH); }
static int h_schedule_throw(lua_State *L) { return schedule(L, MODE_THROW); }

static double check_seconds(lua_State *L, int idx, const char *fname) {
  if (lua_isnoneornil(L, idx)) return 0;
  if (lua_type(L, idx) != LUA_TNUMBER) return mt_argtype_error(L, idx, fname, "seconds", "a number");
  double s = lua_tonumber(L, idx);
  if (isnan(s) || s < 0) mt_raise(L, "ValueError", "%s() argument 'seconds' must be non-negative", fname);
  return s;
}

static int sleep_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  hub_timer *t = (hub_timer *)ctx;
  if (t != NULL) timer_close(L, t);
  lua_settop(L, 0);
  return switch_k(L, LUA_OK, 0);
}

/* sleep(seconds=0): 0 lets the other ready greenlets run first. */
static int h_sleep(lua_State *L) {
  double s = check_seconds(L, 1, "sleep");
  gl_hub *h = hub_get(L);
  gl_ts *ts = h->ts;
  hub_timer *t = NULL;
  lua_settop(L, 0);
  if (s == 0) {
    gl_push(L, ts->current);
    lua_pushnil(L);
    ring_push(L, h, MODE_SWITCH, ts->current->seq);
  } else {
    t = timer_start(L, h, s, T_SCHED);
    lua_createtable(L, 2, 0);
    gl_push(L, ts->current);
    lua_rawseti(L, -2, 1);
    t->ref = luaL_ref(L, LUA_REGISTRYINDEX);
    t->mode = MODE_SWITCH;
    t->seq = ts->current->seq;
  }
  return to_hub(L, (lua_KContext)t, sleep_k);
}

/* A timer object: timer(seconds, g, value, throw?) schedules g with
** value (or throws value into it) after seconds; t:cancel(). */
static const char TIMER_MT[] = "mtlua.hub_timer";

typedef struct timer_box { hub_timer *t; } timer_box;

static int h_timer(lua_State *L) {
  double s = check_seconds(L, 1, "timer");
  lua_settop(L, 4);
  gl_gr *g = gl_check(L, 2);
  gl_hub *h = hub_get(L);
  timer_box *b = lua_newuserdatauv(L, sizeof *b, 0);
  b->t = NULL;
  luaL_setmetatable(L, TIMER_MT);
  hub_timer *t = timer_start(L, h, s, T_SCHED);
  b->t = t;
  t->box = b;
  t->mode = lua_toboolean(L, 4) ? MODE_THROW : MODE_SWITCH;
  t->seq = g->seq;
  lua_createtable(L, 2, 0);
  lua_pushvalue(L, 2);
  lua_rawseti(L, -2, 1);
  lua_pushvalue(L, 3);
  lua_rawseti(L, -2, 2);
  t->ref = luaL_ref(L, LUA_REGISTRYINDEX);
  return 1;
}

static int timer_cancel(lua_State *L) {
  timer_box *b = luaL_checkudata(L, 1, TIMER_MT);
  if (b->t != NULL) {
    gl_ts *ts = gl_ts_find(mt_universe_of(L));
    if (ts != NULL && ts->hub == b->t->hub) {
      b->t->box = NULL;
      timer_close(L, b->t);
      b->t = NULL;
    }
  }
  return 0;
}

static int timer_pending(lua_State *L) {
  timer_box *b = luaL_checkudata(L, 1, TIMER_MT);
  lua_pushboolean(L, b->t != NULL && !b->t->cancelled && b->t->ref != LUA_NOREF);
  return 1;
}

static int h_get_hub(lua_State *L) {
  gl_hub *h = hub_get(L);
  gl_push(L, h->ts->hubgr);
  return 1;
}

static int h_pending(lua_State *L) {
  gl_hub *h = hub_get(L);
  lua_pushinteger(L, h->count + (h->wakes != NULL));
  return 1;
}

static int h_patch(lua_State *L) {
  mt_universe *U = mt_universe_of(L);
  pthread_mutex_lock(&mains_mutex);
  if (!is_patched(U))
    for (int i = 0; i < 16; i++) if (patched[i] == NULL) { patched[i] = U; break; }
  pthread_mutex_unlock(&mains_mutex);
  U->greenlet_wait = hook_wait;
  U->owner_of = hook_owner;
  return 0;
}

static int h_is_patched(lua_State *L) {
  lua_pushboolean(L, is_patched(mt_universe_of(L)));
  return 1;
}

/* local_name_of(target, skip): the name the code that spawns knows
** 'target' by, one of its locals or upvalues (threading's rule for
** Thread names, done in C because every spawn pays it): the first Lua
** frame up the stack whose source is not in the set 'skip'. */
static int h_local_name_of(lua_State *L) {
  lua_Debug ar;
  luaL_checktype(L, 2, LUA_TTABLE);
  for (int level = 1; lua_getstack(L, level, &ar); level++) {
    const char *name;
    lua_getinfo(L, "Sf", &ar);           /* pushes the function */
    int skip = ar.what[0] == 'C';
    if (!skip) {
      lua_pushstring(L, ar.source);
      skip = lua_rawget(L, 2) != LUA_TNIL;
      lua_pop(L, 1);
    }
    if (skip) { lua_pop(L, 1); continue; }
    for (int i = 1; (name = lua_getlocal(L, &ar, i)) != NULL; i++) {
      int hit = name[0] != '(' && lua_rawequal(L, -1, 1);
      lua_pop(L, 1);
      if (hit) { lua_pushstring(L, name); return 1; }
    }
    for (int i = 1; (name = lua_getupvalue(L, -1, i)) != NULL; i++) {
      int hit = lua_rawequal(L, -1, 1);
      lua_pop(L, 1);
      if (hit) { lua_pushstring(L, name); return 1; }
    }
    return 0;
  }
  return 0;
}

static const luaL_Reg hub_funcs[] = {
  {"local_name_of", h_local_name_of},
  {"switch", h_switch},
  {"schedule", h_schedule},
  {"schedule_throw", h_schedule_throw},
  {"sleep", h_sleep},
  {"timer", h_timer},
  {"get_hub", h_get_hub},
  {"pending", h_pending},
  {"patch", h_patch},
  {"is_patched", h_is_patched},
  {NULL, NULL}
};

static const luaL_Reg timer_methods[] = {
  {"cancel", timer_cancel},
  {"pending", timer_pending},
  {NULL, NULL}
};

int luaopen_mt_hub(lua_State *L) {
  if (luaL_newmetatable(L, TIMER_MT)) {
    luaL_newlib(L, timer_methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, timer_cancel);
    lua_setfield(L, -2, "__gc");
  }
  lua_pop(L, 1);
  luaL_newlib(L, hub_funcs);
  return 1;
}
