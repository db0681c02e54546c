/*
** threading.c -- the C part of `threading` (module "_threading"):
** starting OS threads that run Lua, their join handles, Lock and RLock,
** thread identities and the switch interval.  The rest of the module
** (Thread, Condition, Semaphore, Event, Barrier, Timer, local) is
** lib/threading.lua, built on these as CPython's threading.py is built
** on _thread.
**
** Lock and RLock state is guarded by the GIL: the uncontended paths
** are plain loads and stores.
*/
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>

#include "mt_core.h"

/* --------------------------------------------------------------- Lock */

typedef struct mt_lock {
  int locked;
  mt_waitlist waiters;
} mt_lock;

static const char LOCK_KEY = 'L';

/* the hot path of every Lock method: inlined lookup of the C part */
static mt_lock *checklock(lua_State *L) {
  if (lua_type(L, 1) != LUA_TTABLE) return (mt_lock *)mt_checkobject(L, 1, &LOCK_KEY, "Lock");
  mt_lock *last = (mt_lock *)mt_with_last_state(L, 1, &LOCK_KEY);
  if (last != NULL) return last;
  if (lua_rawgetp(L, 1, &LOCK_KEY) == LUA_TUSERDATA) {
    mt_lock *lk = (mt_lock *)lua_touserdata(L, -1);
    lua_settop(L, -2);
    return lk;
  }
  return (mt_lock *)mt_checkobject(L, 1, &LOCK_KEY, "Lock");
}

/* The common argument parsing of acquire(blocking=true, timeout=-1),
** also acquire{blocking=, timeout=}: returns the deadline (-1 forever)
** or -2 for "don't block". */
static double acquire_args(lua_State *L) {
  int optidx = lua_istable(L, 2) ? 2 : (lua_istable(L, 3) ? 3 : 0);
  int blocking = mt_opt_boolean(L, 2, optidx, "blocking", 1);
  double timeout = mt_opt_timeout(L, 3, optidx, "timeout", "acquire");
  if (isnan(timeout)) timeout = -1;
  if (!blocking) {
    if (timeout != -1)
      mt_raise(L, "ValueError", "can't specify a timeout for a non-blocking call");
    return -2;
  }
  if (timeout < 0 && timeout != -1)
    mt_raise(L, "ValueError", "timeout value must be a non-negative number");
  return timeout == -1 ? -1 : mt_deadline_after(timeout);
}

/* Waits until *locked is 0 (then takes it) or the deadline passes.
** A waiter woken but not taking the lock passes the wake-up on, so no
** release is lost. */
static int wait_unlocked(lua_State *L, int *locked, mt_waitlist *wl, double deadline) {
  mt_waiter w;
  mt_waiter_init(L, &w);
  for (;;) {
    w.woken = 0;
    mt_waitlist_push(wl, &w);
    int r = mt_wait(L, &w, deadline);
    mt_waitlist_remove(wl, &w);
    if (r == MT_INTERRUPTED) {
      if (w.woken) mt_wake_one(wl);
      mt_check_interrupt(L);
    }
    if (!*locked) { *locked = 1; return 1; }
    if (r == MT_TIMEDOUT) {
      if (w.woken) mt_wake_one(wl);
      return 0;
    }
  }
}

static int acquire_lock(lua_State *L, mt_lock *lk) {
  if (!lk->locked && lua_gettop(L) == 1) {   /* the fast path */
    lk->locked = 1;
    lua_pushboolean(L, 1);
    return 1;
  }
  double deadline = acquire_args(L);
  if (!lk->locked) lk->locked = 1;
  else if (deadline == -2) { lua_pushboolean(L, 0); return 1; }
  else { lua_pushboolean(L, wait_unlocked(L, &lk->locked, &lk->waiters, deadline)); return 1; }
  lua_pushboolean(L, 1);
  return 1;
}

static int enter_lock(lua_State *L, mt_lock *lk) {
  if (lk->locked) wait_unlocked(L, &lk->locked, &lk->waiters, -1);
  else lk->locked = 1;
  lua_settop(L, 1);
  return 1;
}

static int release_lock(lua_State *L, mt_lock *lk) {
  if (!lk->locked) return mt_raise(L, "RuntimeError", "release unlocked lock");
  lk->locked = 0;
  if (lk->waiters.head) mt_wake_one(&lk->waiters);
  return 0;
}

static int lock_acquire(lua_State *L) { return acquire_lock(L, checklock(L)); }
static int lock_enter(lua_State *L) { return enter_lock(L, checklock(L)); }
static int lock_release(lua_State *L) { return release_lock(L, checklock(L)); }

/* The bound versions (see mt_bind_fast_methods): upvalue 1 is the
** state, upvalue 2 the instance; called on another self they do what
** the class's method does. */
#define BOUND_METHOD(name, generic, fn, type) \
  static int name(lua_State *L) { \
    if (!MT_IS_BOUND_SELF(L)) return generic(L); \
    return fn(L, (type *)MT_BOUND_STATE(L)); \
  }

BOUND_METHOD(lock_acquire_bound, lock_acquire, acquire_lock, mt_lock)
BOUND_METHOD(lock_enter_bound, lock_enter, enter_lock, mt_lock)
BOUND_METHOD(lock_release_bound, lock_release, release_lock, mt_lock)

static int lock_enter_state(lua_State *L, void *state) {   /* for with() */
  mt_lock *lk = (mt_lock *)state;
  if (lk->locked) wait_unlocked(L, &lk->locked, &lk->waiters, -1);
  else lk->locked = 1;
  return 0;
}

static int lock_locked(lua_State *L) {
  lua_pushboolean(L, checklock(L)->locked);
  return 1;
}

static const mt_fast_method lock_fast[] = {
  {"acquire", lock_acquire, lock_acquire_bound},
  {"release", lock_release, lock_release_bound},
  {"__enter__", lock_enter, lock_enter_bound},
  {NULL, NULL, NULL}
};

static int lock_init(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  mt_newobject(L, 1, &LOCK_KEY, sizeof(mt_lock));
  mt_bind_fast_methods(L, 1, &LOCK_KEY, lock_fast);
  return 0;
}

static int lock_reinit(lua_State *L) {   /* _at_fork_reinit */
  mt_lock *lk = checklock(L);
  memset(lk, 0, sizeof *lk);
  return 0;
}

static int lock_tostring(lua_State *L) {
  mt_lock *lk = checklock(L);
  lua_getfield(L, 1, "__name__");
  lua_pushfstring(L, "<%s %s object at %p>", lk->locked ? "locked" : "unlocked",
                  lua_tostring(L, -1) ? lua_tostring(L, -1) : "Lock", lua_topointer(L, 1));
  return 1;
}

static const luaL_Reg lock_methods[] = {
  {"__init__", lock_init},
  {"acquire", lock_acquire},
  {"release", lock_release},
  {"locked", lock_locked},
  {"__enter__", lock_enter},
  {"__exit__", lock_release},
  {"__close", lock_release},
  {"__tostring", lock_tostring},
  {"_at_fork_reinit", lock_reinit},
  {NULL, NULL}
};

/* -------------------------------------------------------------- RLock */

typedef struct mt_rlock {
  int locked;               /* a second flag for wait_unlocked */
  void *owner;
  lua_Integer count;
  mt_waitlist waiters;
} mt_rlock;

static const char RLOCK_KEY = 'R';

static mt_rlock *checkrlock(lua_State *L) {
  return (mt_rlock *)mt_checkobject(L, 1, &RLOCK_KEY, "RLock");
}

static int rlock_take(lua_State *L, mt_rlock *rl, double deadline, lua_Integer count) {
  void *me = mt_owner(L);
  if (rl->locked && rl->owner == me) { rl->count += count; return 1; }
  if (rl->locked) {
    if (deadline == -2 || !wait_unlocked(L, &rl->locked, &rl->waiters, deadline)) return 0;
  }
  rl->locked = 1;
  rl->owner = me;
  rl->count = count;
  return 1;
}

static int acquire_rlock(lua_State *L, mt_rlock *rl) {
  double deadline = lua_gettop(L) == 1 ? -1 : acquire_args(L);
  lua_pushboolean(L, rlock_take(L, rl, deadline, 1));
  return 1;
}

static int enter_rlock(lua_State *L, mt_rlock *rl) {
  rlock_take(L, rl, -1, 1);
  lua_settop(L, 1);
  return 1;
}

static int release_rlock(lua_State *L, mt_rlock *rl) {
  if (!rl->locked || rl->owner != mt_owner(L))
    return mt_raise(L, "RuntimeError", "cannot release un-acquired lock");
  if (--rl->count == 0) {
    rl->locked = 0;
    rl->owner = NULL;
    if (rl->waiters.head) mt_wake_one(&rl->waiters);
  }
  return 0;
}

static int rlock_acquire(lua_State *L) { return acquire_rlock(L, checkrlock(L)); }
static int rlock_enter(lua_State *L) { return enter_rlock(L, checkrlock(L)); }
static int rlock_release(lua_State *L) { return release_rlock(L, checkrlock(L)); }

BOUND_METHOD(rlock_acquire_bound, rlock_acquire, acquire_rlock, mt_rlock)
BOUND_METHOD(rlock_enter_bound, rlock_enter, enter_rlock, mt_rlock)
BOUND_METHOD(rlock_release_bound, rlock_release, release_rlock, mt_rlock)

static int rlock_enter_state(lua_State *L, void *state) {   /* for with() */
  rlock_take(L, (mt_rlock *)state, -1, 1);
  return 0;
}

static int rlock_is_owned(lua_State *L) {
  mt_rlock *rl = checkrlock(L);
  lua_pushboolean(L, rl->locked && rl->owner == mt_owner(L));
  return 1;
}

/* Condition.wait's helpers: give the lock up whatever its depth... */
static int rlock_release_save(lua_State *L) {
  mt_rlock *rl = checkrlock(L);
  if (!rl->locked || rl->owner != mt_owner(L))
    return mt_raise(L, "RuntimeError", "cannot release un-acquired lock");
  lua_pushinteger(L, rl->count);
  rl->count = 0;
  rl->locked = 0;
  rl->owner = NULL;
  if (rl->waiters.head) mt_wake_one(&rl->waiters);
  return 1;
}

/* ...and take it back at that depth. */
static int rlock_acquire_restore(lua_State *L) {
  mt_rlock *rl = checkrlock(L);
  lua_Integer count = luaL_checkinteger(L, 2);
  rlock_take(L, rl, -1, count);
  return 0;
}

static int rlock_count(lua_State *L) {
  mt_rlock *rl = checkrlock(L);
  lua_pushinteger(L, rl->locked && rl->owner == mt_owner(L) ? rl->count : 0);
  return 1;
}

static int rlock_locked(lua_State *L) {
  lua_pushboolean(L, checkrlock(L)->locked);
  return 1;
}

static const mt_fast_method rlock_fast[] = {
  {"acquire", rlock_acquire, rlock_acquire_bound},
  {"release", rlock_release, rlock_release_bound},
  {"__enter__", rlock_enter, rlock_enter_bound},
  {NULL, NULL, NULL}
};

static int rlock_init(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  mt_newobject(L, 1, &RLOCK_KEY, sizeof(mt_rlock));
  mt_bind_fast_methods(L, 1, &RLOCK_KEY, rlock_fast);
  return 0;
}

static int rlock_reinit(lua_State *L) {
  mt_rlock *rl = checkrlock(L);
  memset(rl, 0, sizeof *rl);
  return 0;
}

static int rlock_tostring(lua_State *L) {
  mt_rlock *rl = checkrlock(L);
  mt_thread *owner = (mt_thread *)rl->owner;
  lua_pushfstring(L, "<%s RLock owner=%I count=%I at %p>",
                  rl->locked ? "locked" : "unlocked",
                  (lua_Integer)(rl->locked && owner ? owner->ident : 0),
                  (lua_Integer)rl->count, lua_topointer(L, 1));
  return 1;
}

static const luaL_Reg rlock_methods[] = {
  {"__init__", rlock_init},
  {"acquire", rlock_acquire},
  {"release", rlock_release},
  {"locked", rlock_locked},
  {"_is_owned", rlock_is_owned},
  {"_release_save", rlock_release_save},
  {"_acquire_restore", rlock_acquire_restore},
  {"_recursion_count", rlock_count},
  {"__enter__", rlock_enter},
  {"__exit__", rlock_release},
  {"__close", rlock_release},
  {"__tostring", rlock_tostring},
  {"_at_fork_reinit", rlock_reinit},
  {NULL, NULL}
};


/* -------------------------------------------------------------- Event */

/* In C rather than on a Condition (as CPython's is): a flag and a list
** of waiters, so a hand-off costs one wake-up and no allocation. */
typedef struct mt_event {
  int flag;
  mt_waitlist waiters;
} mt_event;

static const char EVENT_KEY = 'E';

static mt_event *checkevent(lua_State *L) {
  return (mt_event *)mt_checkobject(L, 1, &EVENT_KEY, "Event");
}

static int event_init(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  mt_newobject(L, 1, &EVENT_KEY, sizeof(mt_event));
  return 0;
}

static int event_is_set(lua_State *L) {
  lua_pushboolean(L, checkevent(L)->flag);
  return 1;
}

static int event_set(lua_State *L) {
  mt_event *ev = checkevent(L);
  ev->flag = 1;
  mt_wake_all(&ev->waiters);
  return 0;
}

static int event_clear(lua_State *L) {
  checkevent(L)->flag = 0;
  return 0;
}

/* wait(timeout=nil) -> true once set; false on timeout.  A waiter woken
** by set() returns true even if clear() came before it ran (a pulse). */
static int event_wait(lua_State *L) {
  mt_event *ev = checkevent(L);
  if (ev->flag) { lua_pushboolean(L, 1); return 1; }
  double timeout = mt_opt_timeout(L, 2, lua_istable(L, 2) ? 2 : 0, "timeout", "wait");
  double deadline = isnan(timeout) ? -1 : mt_deadline_after(timeout < 0 ? 0 : timeout);
  mt_waiter w;
  mt_waiter_init(L, &w);
  mt_waitlist_push(&ev->waiters, &w);
  int r = mt_wait(L, &w, deadline);
  mt_waitlist_remove(&ev->waiters, &w);
  if (r == MT_INTERRUPTED) mt_check_interrupt(L);
  lua_pushboolean(L, r == MT_WOKEN || ev->flag);
  return 1;
}

static int event_reinit(lua_State *L) {
  mt_event *ev = checkevent(L);
  memset(&ev->waiters, 0, sizeof ev->waiters);
  return 0;
}

static int event_tostring(lua_State *L) {
  mt_event *ev = checkevent(L);
  lua_pushfstring(L, "<Event at %p: %s>", lua_topointer(L, 1), ev->flag ? "set" : "unset");
  return 1;
}

static const luaL_Reg event_methods[] = {
  {"__init__", event_init},
  {"is_set", event_is_set},
  {"isSet", event_is_set},
  {"set", event_set},
  {"clear", event_clear},
  {"wait", event_wait},
  {"_at_fork_reinit", event_reinit},
  {"__tostring", event_tostring},
  {NULL, NULL}
};

/* ------------------------------------------------------------ threads */

typedef struct mt_handle {
  int started, done;
  unsigned long ident;       /* the pthread_t, known at once */
  mt_thread *thread;         /* while it runs (GIL); its tid is there */
  long native_id;            /* copied from it when the thread ends */
  mt_waitlist joiners;
} mt_handle;

static const char HANDLE_MT[] = "mtlua.thread_handle";

/* malloc'ed by the starter, freed by the thread: start() does not wait
** for the new thread (CPython's does, for its native id; ours is read
** lazily), which saves a context switch per start */
typedef struct start_info {
  mt_thread *t;
} start_info;

static void report_escaped(lua_State *L) {
  mt_format_error(L, -1);
  fprintf(stderr, "Unhandled error in thread:\n%s\n", lua_tostring(L, -1));
  fflush(stderr);
}

/* The body of every thread: stack of t->L is handle, function, args. */
static void *thread_main(void *arg) {
  start_info *si = arg;
  mt_thread *t = si->t;   /* not the handle: until this thread holds the */
  free(si);               /* GIL, the state may even have been closed */
  mt_universe *U = t->U;
  lua_State *L = t->L;
  mt_thread_bind_self(t);

  gil_acquire(&U->gil, t);
  int nargs = lua_gettop(L) - 2;
  lua_pushcfunction(L, mt_msghandler);
  lua_insert(L, 2);
  if (lua_pcall(L, nargs, 0, 2) != LUA_OK) report_escaped(L);
  mt_handle *h = (mt_handle *)lua_touserdata(L, 1);
  h->native_id = atomic_load(&t->native_id);
  h->thread = NULL;
  h->done = 1;
  mt_wake_all(&h->joiners);
  lua_settop(L, 0);
  if (U->on_thread_exit != NULL) U->on_thread_exit(L);
  mt_thread_unregister(t);
  luaL_unref(L, LUA_REGISTRYINDEX, t->ref);
  /* t goes back to the spares while we hold the GIL: signal now, and
  ** release as nobody (t may be reused as soon as the GIL is free) */
  mt_flush_wakes(t);
  mt_thread_free(t);
  mt_thread_ending(pthread_self());
  gil_release(&U->gil, NULL, 0);
  return NULL;
}

static int spawn(mt_thread *t, mt_handle *h) {
  pthread_t th;
  start_info *si = malloc(sizeof *si);
  if (si == NULL) return ENOMEM;
  si->t = t;
  h->thread = t;
  mt_join_ending_threads();   /* joinable: see mt_thread_ending */
  int rc = pthread_create(&th, NULL, thread_main, si);
  if (rc != 0) free(si);
  else h->ident = (unsigned long)th;   /* what pthread_self() says there */
  return rc;
}

/* start(f, thread, active) -> handle: runs f(thread) in a new OS
** thread.  Before returning -- in C, so that no other thread can run in
** between, not even the new one -- sets thread._handle and thread.ident
** and registers active[ident] = thread. */
static int th_start(lua_State *L) {
  mt_universe *U = mt_universe_of(L);
  luaL_checkany(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  luaL_checktype(L, 3, LUA_TTABLE);
  int n = 2;   /* f and thread go to the new Lua thread */
  lua_settop(L, 3);
  lua_pushliteral(L, "_handle");   /* 4: keys made now: see below */
  lua_pushliteral(L, "ident");     /* 5 */
  mt_enter_threaded(L);   /* before lua_newthread: it inherits the hook */
  lua_State *Lt = lua_newthread(L);
  int ref = luaL_ref(L, LUA_REGISTRYINDEX);
  mt_handle *h = lua_newuserdatauv(L, sizeof *h, 0);
  memset(h, 0, sizeof *h);
  luaL_setmetatable(L, HANDLE_MT);
  lua_pushvalue(L, -1);
  lua_xmove(L, Lt, 1);
  for (int i = 1; i <= n; i++) lua_pushvalue(L, i);
  lua_xmove(L, Lt, n);
  mt_thread *t = mt_thread_new(U, Lt, ref);
  if (t == NULL || spawn(t, h) != 0) {
    if (t) { mt_thread_unregister(t); mt_thread_free(t); }
    luaL_unref(L, LUA_REGISTRYINDEX, ref);
    return mt_raise(L, "RuntimeError", "can't start new thread");
  }
  h->started = 1;
  /* Nothing from here may run Lua code or a collection step (which
  ** could run finalizers, then the hook, then the new thread): raw sets
  ** of values already made only. */
  int hidx = lua_gettop(L);
  lua_pushinteger(L, (lua_Integer)h->ident);
  lua_pushvalue(L, 2);
  lua_rawset(L, 3);                     /* active[ident] = thread */
  lua_pushvalue(L, 4);
  lua_pushvalue(L, hidx);
  lua_rawset(L, 2);                     /* thread._handle = h */
  lua_pushvalue(L, 5);
  lua_pushinteger(L, (lua_Integer)h->ident);
  lua_rawset(L, 2);                     /* thread.ident = ident */
  lua_settop(L, hidx);
  return 1;
}

static mt_handle *checkhandle(lua_State *L) {
  return (mt_handle *)luaL_checkudata(L, 1, HANDLE_MT);
}

/* handle:join(timeout) -> true when the thread has ended */
static int handle_join(lua_State *L) {
  mt_handle *h = checkhandle(L);
  double timeout = mt_opt_timeout(L, 2, lua_istable(L, 2) ? 2 : 0, "timeout", "join");
  double deadline = isnan(timeout) ? -1 : mt_deadline_after(timeout < 0 ? 0 : timeout);
  mt_waiter w;
  mt_waiter_init(L, &w);
  while (!h->done) {
    w.woken = 0;
    mt_waitlist_push(&h->joiners, &w);
    int r = mt_wait(L, &w, deadline);
    mt_waitlist_remove(&h->joiners, &w);
    if (r == MT_INTERRUPTED) mt_check_interrupt(L);
    if (r == MT_TIMEDOUT) break;
  }
  lua_pushboolean(L, h->done);
  return 1;
}

static int handle_done(lua_State *L) {
  lua_pushboolean(L, checkhandle(L)->done);
  return 1;
}

static int handle_ident(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)checkhandle(L)->ident);
  return 1;
}

/* The tid, which the thread writes as it starts: waits (GIL released)
** in the rare case it is asked for before the thread ran at all. */
static int handle_native_id(lua_State *L) {
  mt_handle *h = checkhandle(L);
  mt_thread *t = h->thread;   /* GIL held: it cannot end meanwhile */
  long id = t != NULL ? atomic_load(&t->native_id) : h->native_id;
  if (id == 0 && t != NULL) {
    mt_blocking_begin(L);
    while ((id = atomic_load(&t->native_id)) == 0) sched_yield();
    mt_blocking_end(L);
  }
  lua_pushinteger(L, id);
  return 1;
}

/* in a forked child the thread is gone: mark it ended */
static int handle_mark_done(lua_State *L) {
  mt_handle *h = checkhandle(L);
  if (h->thread != NULL) h->native_id = atomic_load(&h->thread->native_id);
  h->thread = NULL;
  h->done = 1;
  memset(&h->joiners, 0, sizeof h->joiners);
  return 0;
}

static const luaL_Reg handle_methods[] = {
  {"join", handle_join},
  {"done", handle_done},
  {"ident", handle_ident},
  {"native_id", handle_native_id},
  {"_mark_done", handle_mark_done},
  {NULL, NULL}
};

/* -------------------------------------------------- module functions */

static int th_get_ident(lua_State *L) {
  mt_thread *t = mt_self(L);
  lua_pushinteger(L, (lua_Integer)(t ? t->ident : (unsigned long)pthread_self()));
  return 1;
}

static int th_get_native_id(lua_State *L) {
  mt_thread *t = mt_self(L);
  lua_pushinteger(L, t ? t->native_id : 0);
  return 1;
}

static int th_main_ident(lua_State *L) {
  mt_universe *U = mt_universe_of(L);
  lua_pushinteger(L, (lua_Integer)U->main->ident);
  lua_pushinteger(L, (lua_Integer)U->main->native_id);
  return 2;
}

static int th_setswitchinterval(lua_State *L) {
  mt_universe *U = mt_universe_of(L);
  if (lua_type(L, 1) != LUA_TNUMBER)
    return mt_argtype_error(L, 1, "setswitchinterval", "interval", "a number");
  double s = lua_tonumber(L, 1);
  if (!(s > 0)) return mt_raise(L, "ValueError", "switch interval must be strictly positive");
  long us = (long)(s * 1e6);
  atomic_store(&U->gil.interval_us, us < 1 ? 1 : us);
  return 0;
}

static int th_getswitchinterval(lua_State *L) {
  mt_universe *U = mt_universe_of(L);
  lua_pushnumber(L, (double)atomic_load(&U->gil.interval_us) / 1e6);
  return 1;
}

static int th_count(lua_State *L) {   /* OS threads running Lua */
  lua_pushinteger(L, mt_universe_of(L)->nthreads);
  return 1;
}

static int th_atexit(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  mt_atexit_push(L, 1);
  return 0;
}

static int th_is_main(lua_State *L) {
  mt_thread *t = mt_self(L);
  lua_pushboolean(L, t != NULL && t->is_main);
  return 1;
}

static const luaL_Reg th_funcs[] = {
  {"start", th_start},
  {"get_ident", th_get_ident},
  {"get_native_id", th_get_native_id},
  {"main_ident", th_main_ident},
  {"setswitchinterval", th_setswitchinterval},
  {"getswitchinterval", th_getswitchinterval},
  {"_count", th_count},
  {"atexit", th_atexit},
  {"is_main_thread", th_is_main},
  {"msghandler", mt_msghandler},
  {NULL, NULL}
};

int luaopen_mt_threading(lua_State *L) {
  if (luaL_newmetatable(L, HANDLE_MT)) {
    luaL_newlib(L, handle_methods);
    lua_setfield(L, -2, "__index");
  }
  lua_pop(L, 1);
  luaL_newlib(L, th_funcs);
  mt_register_fast_enter(lock_enter_bound, lock_enter_state, &LOCK_KEY);
  mt_register_fast_enter(rlock_enter_bound, rlock_enter_state, &RLOCK_KEY);
  mt_newclass(L, "Lock", lock_methods);
  lua_setfield(L, -2, "Lock");
  mt_newclass(L, "RLock", rlock_methods);
  lua_setfield(L, -2, "RLock");
  mt_newclass(L, "Event", event_methods);
  lua_setfield(L, -2, "Event");
  lua_pushnumber(L, 1e9);   /* longer waits are waits without timeout */
  lua_setfield(L, -2, "TIMEOUT_MAX");
  return 1;
}
