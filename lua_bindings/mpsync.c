/*
** mpsync.c -- process-shared synchronisation and shared values for
** multiprocessing (module "_mpsync", re-exported by lib/multiprocessing.lua):
** Lock, RLock, Semaphore, BoundedSemaphore, Event, Condition, Value,
** Array, and the "box" (a pickled value under a robust lock) that
** Manager's dict/list/Namespace proxies are made of.
**
** Every object is one anonymous segment (shm.h: memfd + mmap, inherited
** by fork, mapped by a running process through /proc/<pid>/fd/<fd> when
** it arrives pickled).  A segment starts with the same header: magic,
** token, kind, a robust process-shared mutex guarding the object's
** fields, and a futex sequence word that is bumped at every change a
** waiter may wait for.
**
** Waits sleep on the futex in slices (MS_SLICE) with the GIL released:
** after each slice the main thread notices Ctrl-C, and a quiet slice
** checks whether the owner of a Lock/RLock is still alive.  A process
** that dies holding a Lock or RLock (killed, crashed, os.exit) does not
** wedge the others: its lock is released for it within one slice.
** (CPython's multiprocessing.Lock is a POSIX semaphore: the others would
** hang forever.)  A Semaphore has no owner, so a unit a dead process
** held stays taken, as in Python.  The owner of a lock is the process
** id and, within it, the thread (or greenlet) as mt_owner() names it.
**
** Condition has a table of waiter slots, each with its own futex word:
** notify(n) marks the n oldest waiting slots, so exactly those wake
** (no stolen or lost wake-ups); slots of dead processes are skipped.
**
** Passing: __reduce__ gives (rebuild, {pid, fd, token, kind, fields,
** class}); 'fields' are the instance's Lua fields (a Condition's lock,
** a Value's lock, a subclass's own fields), 'class' the user's subclass
** if any.  The sending process must be alive while the receiver
** unpickles (it holds the fd that /proc names).
*/
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>

#include "mt_core.h"
#include "pickle.h"
#include "shm.h"

#define MS_MAGIC 0x6d7473796e633a31ULL   /* "mtsync:1" */
#define MS_SLICE 0.05                    /* waits wake this often */
#define MS_NSLOTS 256                    /* Condition waiters at a time */
#define MS_DATA 128                      /* Value/Array data offset */
#define MS_BOXDATA 256                   /* box data offset */
#define MS_BOXMAX ((size_t)256 << 20)    /* a box's mapping (its most) */
#define MS_SPINS 400                     /* pauses before a lock wait sleeps */

enum {
  MS_LOCK, MS_RLOCK, MS_SEM, MS_BSEM, MS_EVENT, MS_COND, MS_VALUE, MS_ARRAY,
  MS_BOX, MS_NKINDS
};

#define K(k) (1u << (k))
#define MS_LOCKS (K(MS_LOCK) | K(MS_RLOCK))
#define MS_SEMLOCKS (MS_LOCKS | K(MS_SEM) | K(MS_BSEM))
#define MS_VALUES (K(MS_VALUE) | K(MS_ARRAY))

/* registered names (mt_register_class), for raising and rebuilding */
static const char *const ms_qualnames[MS_NKINDS] = {
  "multiprocessing.Lock", "multiprocessing.RLock", "multiprocessing.Semaphore",
  "multiprocessing.BoundedSemaphore", "multiprocessing.Event",
  "multiprocessing.Condition", "multiprocessing.Value", "multiprocessing.Array",
  "multiprocessing.Box"
};

typedef struct ms_head {
  uint64_t magic, token;
  uint32_t kind;
  uint32_t size;               /* of the object's part (boxes grow: see box) */
  pthread_mutex_t mutex;       /* guards the fields of the object */
  _Atomic uint32_t seq;        /* futex: bumped when waiters should look */
  _Atomic uint32_t sleepers;   /* how many sleep on seq */
} ms_head;

/* Lock, RLock, Semaphore, BoundedSemaphore, Event */
typedef struct ms_sem {
  ms_head h;
  _Atomic int64_t value;       /* semaphores: free units; Event: the flag */
  int64_t maxvalue;            /* BoundedSemaphore: the initial value */
  _Atomic uint64_t owner;      /* locks: pid << 32 | thread (0: free) */
  int64_t count;               /* RLock: recursion depth (the owner's) */
} ms_sem;

typedef struct ms_slot {
  _Atomic uint32_t state;      /* futex: SLOT_FREE, SLOT_WAITING, SLOT_NOTIFIED */
  int32_t pid;
  uint64_t order;              /* FIFO among waiters */
} ms_slot;

enum { SLOT_FREE, SLOT_WAITING, SLOT_NOTIFIED };

typedef struct ms_cond {
  ms_head h;
  uint64_t next_order;
  ms_slot slots[MS_NSLOTS];
} ms_cond;

typedef struct ms_values {
  ms_head h;
  char typecode;
  int64_t n;                   /* items; data at MS_DATA */
} ms_values;

typedef struct ms_box {
  ms_head h;
  _Atomic uint64_t version;    /* bumped by every write */
  uint64_t capacity;           /* bytes of data room (the segment grows) */
  uint64_t len;                /* bytes of pickle at MS_BOXDATA */
  int32_t closed;              /* its manager was shut down */
} ms_box;

/* This process's handle: the C part of every instance. */
typedef struct ms_handle {
  shm_segment seg;
  ms_head *h;
  int kind;
  int boxlocked;               /* box: this handle holds the mutex */
  size_t boxmapped;            /* box: bytes of the file mapped at seg.base */
} ms_handle;

static const char MS_KEY = 'S';
static const char MS_MT[] = "mtlua.mpsync";

/* ----------------------------------------------------------- handles */

static int ms_gc(lua_State *L) {
  ms_handle *hd = (ms_handle *)luaL_checkudata(L, 1, MS_MT);
  if (hd->boxlocked && hd->h != NULL) shm_mutex_unlock(&hd->h->mutex);
  shm_segment_close(&hd->seg);
  hd->h = NULL;
  return 0;
}

static ms_handle *ms_attach(lua_State *L, int selfidx, const shm_segment *seg, int kind) {
  ms_handle *hd = (ms_handle *)mt_newobject(L, selfidx, &MS_KEY, sizeof(ms_handle));
  lua_rawgetp(L, selfidx, &MS_KEY);
  luaL_setmetatable(L, MS_MT);
  lua_pop(L, 1);
  hd->seg = *seg;
  hd->h = (ms_head *)seg->base;
  hd->kind = kind;
  return hd;
}

static uint64_t ms_new_token(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  uint64_t x = (uint64_t)ts.tv_nsec * 0x9e3779b97f4a7c15ULL ^ ((uint64_t)getpid() << 32)
             ^ (uint64_t)ts.tv_sec ^ (uint64_t)(uintptr_t)&ts;
  x ^= x >> 29;
  return x * 0xbf58476d1ce4e5b9ULL;
}

static size_t page_round(size_t n) {
  return (n + 4095) & ~(size_t)4095;
}

/* A new object of 'kind' with 'size' bytes in a fresh segment, as the
** C part of the instance at selfidx. */
static ms_handle *ms_create(lua_State *L, int selfidx, int kind, size_t size, const char *fname) {
  shm_segment seg;
  luaL_checktype(L, selfidx, LUA_TTABLE);
  int e = shm_segment_create(&seg, page_round(size), "mtlua-sync");
  if (e != 0) mt_raise(L, "OSError", "[Errno %d] %s(): %s", e, fname, strerror(e));
  ms_head *h = (ms_head *)seg.base;
  h->token = ms_new_token();
  h->kind = (uint32_t)kind;
  h->size = (uint32_t)size;
  shm_mutex_init(&h->mutex);
  h->magic = MS_MAGIC;
  return ms_attach(L, selfidx, &seg, kind);
}

static ms_handle *ms_check(lua_State *L, int idx, unsigned kinds, const char *tname) {
  ms_handle *hd = (ms_handle *)mt_toobject(L, idx, &MS_KEY);
  if (hd == NULL || hd->h == NULL || !(K(hd->kind) & kinds))
    mt_raise(L, "TypeError", "expected a multiprocessing %s object, got %s "
             "(did you call with '.' instead of ':'?)", tname, luaL_typename(L, idx));
  return hd;
}

/* Takes the object's mutex; a previous holder that died left the fields
** consistent (each change is a few stores), so nothing to repair. */
static void ms_lock(lua_State *L, ms_head *h) {
  shm_mutex_lock(L, &h->mutex);
}

static void ms_unlock(ms_head *h) {
  shm_mutex_unlock(&h->mutex);
}

static void ms_wake(ms_head *h, int n) {
  if (atomic_load(&h->sleepers) > 0) {
    atomic_fetch_add(&h->seq, 1);
    shm_futex_wake(&h->seq, n);
  }
}

static int ms_interrupted(lua_State *L) {
  mt_thread *self = mt_self(L);
  return self != NULL && atomic_load(&self->interrupt);
}

/* --------------------------------------------------------- arguments */

/* An options table or a Python-call form table: no metatable (an
** object, such as a lock, has its class). */
static int is_plain_table(lua_State *L, int idx) {
  if (!lua_istable(L, idx)) return 0;
  if (!lua_getmetatable(L, idx)) return 1;
  lua_pop(L, 1);
  return 0;
}

/* acquire(blocking=true, timeout=-1) or acquire{blocking=, timeout=}:
** the deadline (-1 forever), -2 for "don't block".  As threading's,
** but a negative timeout other than -1 waits not at all, as
** multiprocessing's does. */
static double ms_acquire_args(lua_State *L) {
  int optidx = lua_istable(L, 2) ? 2 : (lua_istable(L, 3) ? 3 : 0);
  int blocking = mt_opt_boolean(L, 2, optidx, "blocking", 1);
  double timeout = mt_opt_timeout(L, 3, optidx, "timeout", "acquire");
  if (!blocking) return -2;
  if (isnan(timeout) || timeout == -1) return -1;
  return mt_deadline_after(timeout < 0 ? 0 : timeout);
}

/* A wait's timeout (argument idx, or an options table there): the
** deadline, -1 for none; negative timeouts count as 0. */
static double ms_wait_deadline(lua_State *L, int idx, const char *fname) {
  int optidx = lua_istable(L, idx) ? idx : 0;
  double timeout = mt_opt_timeout(L, idx, optidx, "timeout", fname);
  if (isnan(timeout)) return -1;
  return mt_deadline_after(timeout < 0 ? 0 : timeout);
}

/* -------------------------------------------------------- semaphores */

/* The process id, cached (getpid is a system call); reset in a child. */
static pid_t ms_mypid;

static void ms_atfork_child(void) {
  ms_mypid = getpid();
}

/* Who owns a lock: the process id in the high half, the thread (or
** greenlet) of mt_owner in the low half (distinct within a process). */
static uint64_t ms_me(lua_State *L) {
  uintptr_t o = (uintptr_t)mt_owner(L);
  return ((uint64_t)(uint32_t)ms_mypid << 32) | (uint32_t)(o >> 4);
}

static int sem_is_mine(ms_sem *s, uint64_t me) {
  return atomic_load(&s->owner) == me;
}

/* One attempt to take a unit, without blocking.  Lock-free: a CAS on
** the owner word (locks) or on the count (semaphores). */
static int sem_try(ms_sem *s, int kind, uint64_t me) {
  if (kind == MS_LOCK || kind == MS_RLOCK) {
    uint64_t free = 0;
    if (kind == MS_RLOCK && atomic_load(&s->owner) == me) { s->count++; return 1; }
    if (!atomic_compare_exchange_strong(&s->owner, &free, me)) return 0;
    s->count = 1;
    return 1;
  }
  int64_t v = atomic_load(&s->value);
  while (v > 0)
    if (atomic_compare_exchange_weak(&s->value, &v, v - 1)) return 1;
  return 0;
}

/* Wakes n sleepers if there are any (after the state changed). */
static void sem_wake(ms_sem *s, int n) {
  ms_wake(&s->h, n);
}

/* A lock whose holder process died is released for it; 1 if so.  The
** CAS fails if anyone changed the owner meanwhile. */
static int sem_repair(ms_sem *s, int kind) {
  if (kind != MS_LOCK && kind != MS_RLOCK) return 0;
  uint64_t w = atomic_load(&s->owner);
  pid_t pid = (pid_t)(w >> 32);
  if (w == 0 || pid == ms_mypid || shm_pid_alive(pid)) return 0;
  if (!atomic_compare_exchange_strong(&s->owner, &w, 0)) return 0;
  sem_wake(s, 1);
  return 1;
}

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ __volatile__("yield");
#endif
}

/* Locks are held for short stretches: a holder running on another CPU
** lets go within microseconds, far less than a futex sleep and wake-up
** cost.  Spins a little (without the GIL) before sleeping. */
static int sem_spin(ms_sem *s, int kind, uint64_t me) {
  for (int i = 0; i < MS_SPINS; i++) {
    cpu_relax();
    if (kind == MS_LOCK || kind == MS_RLOCK ? atomic_load_explicit(&s->owner, memory_order_relaxed) == 0
                                            : atomic_load_explicit(&s->value, memory_order_relaxed) > 0)
      if (sem_try(s, kind, me)) return 1;
  }
  return 0;
}

/* Takes a unit before the deadline (-2: only if free now).  Returns 1
** taken, 0 not, -1 interrupted (nothing taken).  'insistent': Ctrl-C
** does not end the wait (it stays pending for the caller).  A sleeper
** announces itself (sleepers), reads the sequence, then tries once
** more: a release either is seen by that try or bumps the sequence
** before the futex wait, which then returns at once. */
static int sem_take(lua_State *L, ms_handle *hd, double deadline, int insistent) {
  ms_sem *s = (ms_sem *)hd->h;
  uint64_t me = ms_me(L);
  int kind = hd->kind;
  if (sem_try(s, kind, me)) return 1;
  if (deadline == -2) return sem_repair(s, kind) && sem_try(s, kind, me);
  if (sem_spin(s, kind, me)) return 1;
  for (;;) {
    double slice = MS_SLICE;
    if (deadline >= 0) {
      double left = deadline - mt_monotonic();
      if (left <= 0) break;
      if (left < slice) slice = left;
    }
    atomic_fetch_add(&s->h.sleepers, 1);
    uint32_t v = atomic_load(&s->h.seq);
    int got = sem_try(s, kind, me);
    if (!got) {
      mt_blocking_begin(L);
      shm_futex_wait(&s->h.seq, v, slice);
      mt_blocking_end(L);
      got = sem_try(s, kind, me);
    }
    atomic_fetch_sub(&s->h.sleepers, 1);
    if (got) return 1;
    if (atomic_load(&s->h.seq) == v && sem_repair(s, kind)) continue;   /* a quiet slice */
    if (ms_interrupted(L) && !insistent) {
      if (kind == MS_LOCK ? atomic_load(&s->owner) == 0 : atomic_load(&s->value) > 0)
        sem_wake(s, 1);   /* pass on a wake-up we may have taken */
      return -1;
    }
  }
  if (kind != MS_LOCK && kind != MS_RLOCK && atomic_load(&s->value) > 0) sem_wake(s, 1);
  else if ((kind == MS_LOCK || kind == MS_RLOCK) && atomic_load(&s->owner) == 0) sem_wake(s, 1);
  return sem_try(s, kind, me);
}

static int sem_acquire(lua_State *L) {
  ms_handle *hd = ms_check(L, 1, MS_SEMLOCKS, "Lock");
  double deadline = lua_gettop(L) == 1 ? -1 : ms_acquire_args(L);
  int r = sem_take(L, hd, deadline, 0);
  if (r < 0) mt_check_interrupt(L);
  lua_pushboolean(L, r == 1);
  return 1;
}

static int sem_enter(lua_State *L) {
  ms_handle *hd = ms_check(L, 1, MS_SEMLOCKS, "Lock");
  if (sem_take(L, hd, -1, 0) < 0) mt_check_interrupt(L);
  lua_settop(L, 1);
  return 1;
}

/* Releases n units; an error message or NULL. */
static const char *sem_give(lua_State *L, ms_handle *hd, int64_t n) {
  ms_sem *s = (ms_sem *)hd->h;
  switch (hd->kind) {
    case MS_LOCK:   /* anyone may release a Lock, as threading's */
      if (atomic_exchange(&s->owner, 0) == 0) return "release unlocked lock";
      sem_wake(s, 1);
      return NULL;
    case MS_RLOCK:
      if (atomic_load(&s->owner) != ms_me(L)) return "cannot release un-acquired lock";
      if (--s->count > 0) return NULL;
      atomic_store(&s->owner, 0);
      sem_wake(s, 1);
      return NULL;
    case MS_BSEM: {
      int64_t v = atomic_load(&s->value);
      do {
        if (v + n > s->maxvalue) return "Semaphore released too many times";
      } while (!atomic_compare_exchange_weak(&s->value, &v, v + n));
      break;
    }
    default:
      atomic_fetch_add(&s->value, n);
      break;
  }
  sem_wake(s, n > INT_MAX ? INT_MAX : (int)n);
  return NULL;
}

static int sem_release(lua_State *L) {
  ms_handle *hd = ms_check(L, 1, MS_SEMLOCKS, "Lock");
  int64_t n = 1;
  if (hd->kind == MS_SEM || hd->kind == MS_BSEM) {
    if (lua_istable(L, 2)) { lua_getfield(L, 2, "n"); lua_replace(L, 2); }
    if (!lua_isnoneornil(L, 2)) {
      if (!lua_isinteger(L, 2)) return mt_argtype_error(L, 2, "release", "n", "an integer");
      n = lua_tointeger(L, 2);
      if (n < 1) return mt_raise(L, "ValueError", "release(): n must be one or more");
    }
  }
  const char *err = sem_give(L, hd, n);
  if (err != NULL)
    return mt_raise(L, hd->kind == MS_BSEM ? "ValueError" : "RuntimeError", "%s", err);
  return 0;
}

/* __exit__(err) and __close: a release that ignores its arguments */
static int sem_exit(lua_State *L) {
  lua_settop(L, 1);
  return sem_release(L);
}

static int sem_locked(lua_State *L) {
  ms_handle *hd = ms_check(L, 1, MS_SEMLOCKS, "Lock");
  ms_sem *s = (ms_sem *)hd->h;
  if (hd->kind == MS_LOCK || hd->kind == MS_RLOCK) lua_pushboolean(L, atomic_load(&s->owner) != 0);
  else lua_pushboolean(L, atomic_load(&s->value) <= 0);
  return 1;
}

static int sem_get_value(lua_State *L) {
  ms_sem *s = (ms_sem *)ms_check(L, 1, K(MS_SEM) | K(MS_BSEM), "Semaphore")->h;
  lua_pushinteger(L, (lua_Integer)atomic_load(&s->value));
  return 1;
}

/* _is_owned(): held by the calling thread of this process */
static int sem_is_owned(lua_State *L) {
  ms_sem *s = (ms_sem *)ms_check(L, 1, MS_LOCKS, "Lock")->h;
  lua_pushboolean(L, sem_is_mine(s, ms_me(L)));
  return 1;
}

static int sem_tostring(lua_State *L) {
  ms_handle *hd = ms_check(L, 1, MS_SEMLOCKS, "Lock");
  ms_sem *s = (ms_sem *)hd->h;
  lua_getfield(L, 1, "__name__");
  const char *name = lua_isstring(L, -1) ? lua_tostring(L, -1) : "Lock";
  if (hd->kind == MS_SEM || hd->kind == MS_BSEM) {
    lua_pushfstring(L, "<%s(value=%d", name, (int)atomic_load(&s->value));
    if (hd->kind == MS_BSEM) lua_pushfstring(L, ", maxvalue=%d)>", (int)s->maxvalue);
    else lua_pushliteral(L, ")>");
    lua_concat(L, 2);
    return 1;
  }
  uint64_t w = atomic_load(&s->owner);
  if (w == 0) lua_pushfstring(L, "<%s(owner=None)>", name);
  else if (w == ms_me(L))
    lua_pushfstring(L, "<%s(owner=MainProcess|%d, count=%d)>", name, (int)ms_mypid, (int)s->count);
  else lua_pushfstring(L, "<%s(owner=SomeOtherProcess|%d)>", name, (int)(w >> 32));
  return 1;
}

static void sem_new(lua_State *L, int kind, int64_t value, const char *fname) {
  ms_handle *hd = ms_create(L, 1, kind, sizeof(ms_sem), fname);
  ms_sem *s = (ms_sem *)hd->h;
  atomic_store(&s->value, value);
  s->maxvalue = value;
}

static int lock_init(lua_State *L) {
  sem_new(L, MS_LOCK, 1, "Lock");
  return 0;
}

static int rlock_init(lua_State *L) {
  sem_new(L, MS_RLOCK, 1, "RLock");
  return 0;
}

/* Semaphore(value=1) / Semaphore{value=} */
static int64_t sem_value_arg(lua_State *L, const char *fname) {
  if (lua_istable(L, 2)) {
    if (lua_getfield(L, 2, "value") == LUA_TNIL) { lua_pop(L, 1); lua_rawgeti(L, 2, 1); }
    lua_replace(L, 2);
  }
  if (lua_isnoneornil(L, 2)) return 1;
  if (!lua_isinteger(L, 2)) mt_argtype_error(L, 2, fname, "value", "an integer");
  int64_t v = lua_tointeger(L, 2);
  if (v < 0) mt_raise(L, "ValueError", "%s(): semaphore initial value must be >= 0", fname);
  return v;
}

static int semaphore_init(lua_State *L) {
  sem_new(L, MS_SEM, sem_value_arg(L, "Semaphore"), "Semaphore");
  return 0;
}

static int bsemaphore_init(lua_State *L) {
  int64_t v = sem_value_arg(L, "BoundedSemaphore");
  sem_new(L, MS_BSEM, v, "BoundedSemaphore");
  return 0;
}

/* ------------------------------------------------------------- Event */

static int event_init(lua_State *L) {
  sem_new(L, MS_EVENT, 0, "Event");
  return 0;
}

static ms_sem *event_check(lua_State *L) {
  return (ms_sem *)ms_check(L, 1, K(MS_EVENT), "Event")->h;
}

static int event_is_set(lua_State *L) {
  lua_pushboolean(L, atomic_load(&event_check(L)->value) != 0);
  return 1;
}

static int event_set(lua_State *L) {
  ms_sem *s = event_check(L);
  atomic_store(&s->value, 1);
  sem_wake(s, INT_MAX);
  return 0;
}

static int event_clear(lua_State *L) {
  atomic_store(&event_check(L)->value, 0);
  return 0;
}

static int event_wait(lua_State *L) {
  ms_sem *s = event_check(L);
  double deadline = ms_wait_deadline(L, 2, "wait");
  while (!atomic_load(&s->value)) {
    double slice = MS_SLICE;
    if (deadline >= 0) {
      double left = deadline - mt_monotonic();
      if (left <= 0) break;
      if (left < slice) slice = left;
    }
    atomic_fetch_add(&s->h.sleepers, 1);
    uint32_t v = atomic_load(&s->h.seq);
    if (!atomic_load(&s->value)) {
      mt_blocking_begin(L);
      shm_futex_wait(&s->h.seq, v, slice);
      mt_blocking_end(L);
    }
    atomic_fetch_sub(&s->h.sleepers, 1);
    if (ms_interrupted(L) && !atomic_load(&s->value)) mt_check_interrupt(L);
  }
  lua_pushboolean(L, atomic_load(&s->value) != 0);
  return 1;
}

static int event_tostring(lua_State *L) {
  lua_pushfstring(L, "<Event at %p %s>", lua_topointer(L, 1),
                  atomic_load(&event_check(L)->value) ? "set" : "unset");
  return 1;
}

/* --------------------------------------------------------- Condition */

static ms_cond *cond_check(lua_State *L) {
  return (ms_cond *)ms_check(L, 1, K(MS_COND), "Condition")->h;
}

/* The condition's lock (field _lock), which must be a shared Lock/RLock. */
static ms_handle *cond_lock(lua_State *L) {
  lua_getfield(L, 1, "_lock");
  ms_handle *hd = (ms_handle *)mt_toobject(L, -1, &MS_KEY);
  lua_pop(L, 1);
  if (hd == NULL || hd->h == NULL || !(K(hd->kind) & MS_LOCKS))
    mt_raise(L, "TypeError", "Condition: its lock is not a multiprocessing Lock or RLock");
  return hd;
}

/* Condition(lock=RLock()) */
static int cond_init(lua_State *L) {
  lua_settop(L, 2);
  if (is_plain_table(L, 2)) {   /* Condition{lock=} */
    if (lua_getfield(L, 2, "lock") == LUA_TNIL) { lua_pop(L, 1); lua_rawgeti(L, 2, 1); }
    lua_replace(L, 2);
  }
  if (lua_isnil(L, 2)) {
    mt_push_class(L, ms_qualnames[MS_RLOCK]);
    lua_call(L, 0, 1);
    lua_replace(L, 2);
  }
  ms_handle *lk = (ms_handle *)mt_toobject(L, 2, &MS_KEY);
  if (lk == NULL || !(K(lk->kind) & MS_LOCKS))
    return mt_argtype_error(L, 2, "Condition", "lock", "a multiprocessing Lock or RLock");
  ms_create(L, 1, MS_COND, sizeof(ms_cond), "Condition");
  lua_pushvalue(L, 2);
  lua_setfield(L, 1, "_lock");
  return 0;
}

/* A free slot, reclaiming those of dead processes when none is (mutex held). */
static int cond_slot(ms_cond *c) {
  for (int i = 0; i < MS_NSLOTS; i++)
    if (atomic_load(&c->slots[i].state) == SLOT_FREE) return i;
  for (int i = 0; i < MS_NSLOTS; i++)
    if (!shm_pid_alive(c->slots[i].pid)) {
      atomic_store(&c->slots[i].state, SLOT_FREE);
      return i;
    }
  return -1;
}

/* Releases the lock completely (as _release_save); returns the count. */
static int64_t cond_release_all(lua_State *L, ms_handle *lk) {
  ms_sem *s = (ms_sem *)lk->h;
  int64_t count = s->count;
  atomic_store(&s->owner, 0);
  sem_wake(s, 1);
  return count;
}

/* Waits for the slot's notification; 1 notified, 0 not (slot freed). */
static int cond_wait_slot(lua_State *L, ms_cond *c, int i, double deadline) {
  ms_slot *sl = &c->slots[i];
  while (atomic_load(&sl->state) == SLOT_WAITING) {
    double slice = MS_SLICE;
    if (deadline >= 0) {
      double left = deadline - mt_monotonic();
      if (left <= 0) break;
      if (left < slice) slice = left;
    }
    mt_blocking_begin(L);
    shm_futex_wait(&sl->state, SLOT_WAITING, slice);
    mt_blocking_end(L);
    if (ms_interrupted(L)) break;
  }
  ms_lock(L, &c->h);
  int notified = atomic_load(&sl->state) == SLOT_NOTIFIED;
  atomic_store(&sl->state, SLOT_FREE);
  ms_unlock(&c->h);
  return notified;
}

static int cond_wait(lua_State *L) {
  ms_cond *c = cond_check(L);
  ms_handle *lk = cond_lock(L);
  double deadline = ms_wait_deadline(L, 2, "wait");
  pid_t me = ms_mypid;
  ms_sem *s = (ms_sem *)lk->h;
  if (!sem_is_mine(s, ms_me(L))) return mt_raise(L, "RuntimeError", "cannot wait on un-acquired lock");
  ms_lock(L, &c->h);
  int i = cond_slot(c);
  if (i < 0) {
    ms_unlock(&c->h);
    return mt_raise(L, "RuntimeError", "Condition.wait(): more than %d waiters", MS_NSLOTS);
  }
  c->slots[i].pid = me;
  c->slots[i].order = c->next_order++;
  atomic_store(&c->slots[i].state, SLOT_WAITING);
  ms_unlock(&c->h);
  int64_t count = cond_release_all(L, lk);
  int notified = cond_wait_slot(L, c, i, deadline);
  sem_take(L, lk, -1, 1);   /* back, whatever happens: as _acquire_restore */
  s->count = count;   /* ours again: only the owner touches it */
  if (!notified) mt_check_interrupt(L);
  lua_pushboolean(L, notified);
  return 1;
}

/* Marks up to n of the oldest waiters notified and wakes them. */
static void cond_notify_n(lua_State *L, ms_cond *c, int64_t n) {
  pid_t me = ms_mypid;
  ms_lock(L, &c->h);
  while (n > 0) {
    int best = -1;
    for (int i = 0; i < MS_NSLOTS; i++)
      if (atomic_load(&c->slots[i].state) == SLOT_WAITING
          && (best < 0 || c->slots[i].order < c->slots[best].order)) best = i;
    if (best < 0) break;
    ms_slot *sl = &c->slots[best];
    if (sl->pid != me && !shm_pid_alive(sl->pid)) {   /* died waiting */
      atomic_store(&sl->state, SLOT_FREE);
      continue;
    }
    atomic_store(&sl->state, SLOT_NOTIFIED);
    shm_futex_wake(&sl->state, 1);
    n--;
  }
  ms_unlock(&c->h);
}

static void cond_check_owned(lua_State *L, const char *what) {
  ms_sem *s = (ms_sem *)cond_lock(L)->h;
  if (!sem_is_mine(s, ms_me(L)))
    mt_raise(L, "RuntimeError", "cannot %s on un-acquired lock", what);
}

static int cond_notify(lua_State *L) {
  ms_cond *c = cond_check(L);
  int64_t n = 1;
  if (lua_istable(L, 2)) { lua_getfield(L, 2, "n"); lua_replace(L, 2); }
  if (!lua_isnoneornil(L, 2)) {
    if (!lua_isinteger(L, 2)) return mt_argtype_error(L, 2, "notify", "n", "an integer");
    n = lua_tointeger(L, 2);
  }
  cond_check_owned(L, "notify");
  cond_notify_n(L, c, n);
  return 0;
}

static int cond_notify_all(lua_State *L) {
  ms_cond *c = cond_check(L);
  cond_check_owned(L, "notify");
  cond_notify_n(L, c, INT64_MAX);
  return 0;
}

static int cond_n_waiting(lua_State *L) {
  ms_cond *c = cond_check(L);
  int n = 0;
  for (int i = 0; i < MS_NSLOTS; i++) n += atomic_load(&c->slots[i].state) == SLOT_WAITING;
  lua_pushinteger(L, n);
  return 1;
}

/* ------------------------------------------------------ Value, Array */

typedef struct ms_type {
  char code;
  unsigned char size;
  int is_signed;
  const char *cname;           /* as ctypes names it, for tostring */
} ms_type;

static const ms_type ms_types[] = {
  {'b', 1, 1, "c_byte"}, {'B', 1, 0, "c_ubyte"}, {'h', 2, 1, "c_short"},
  {'H', 2, 0, "c_ushort"}, {'i', 4, 1, "c_int"}, {'I', 4, 0, "c_uint"},
  {'l', 8, 1, "c_long"}, {'L', 8, 0, "c_ulong"}, {'q', 8, 1, "c_longlong"},
  {'Q', 8, 0, "c_ulonglong"}, {'f', 4, 1, "c_float"}, {'d', 8, 1, "c_double"},
  {'c', 1, 0, "c_char"}, {0, 0, 0, NULL}
};

static const ms_type *type_of(char code) {
  for (const ms_type *t = ms_types; t->code; t++)
    if (t->code == code) return t;
  return NULL;
}

static const ms_type *type_arg(lua_State *L, int idx, const char *fname) {
  size_t n;
  if (lua_type(L, idx) != LUA_TSTRING)
    mt_argtype_error(L, idx, fname, "typecode", "a string");
  const char *s = lua_tolstring(L, idx, &n);
  const ms_type *t = n == 1 ? type_of(s[0]) : NULL;
  if (t == NULL)
    mt_raise(L, "ValueError", "%s(): bad typecode '%s' (must be b, B, h, H, i, I, l, L, q, Q, f, d or c)", fname, s);
  return t;
}

static char *values_data(ms_values *v) {
  return (char *)v + MS_DATA;
}

static void push_item(lua_State *L, const ms_type *t, const char *p) {
  union { int8_t b; uint8_t B; int16_t h; uint16_t H; int32_t i; uint32_t I;
          int64_t q; uint64_t Q; float f; double d; } u;
  memcpy(&u, p, t->size);
  switch (t->code) {
    case 'b': lua_pushinteger(L, u.b); break;
    case 'B': lua_pushinteger(L, u.B); break;
    case 'h': lua_pushinteger(L, u.h); break;
    case 'H': lua_pushinteger(L, u.H); break;
    case 'i': lua_pushinteger(L, u.i); break;
    case 'I': lua_pushinteger(L, u.I); break;
    case 'l': case 'q': lua_pushinteger(L, u.q); break;
    case 'L': case 'Q':   /* beyond Lua's integers: a float */
      if (u.Q > (uint64_t)LUA_MAXINTEGER) lua_pushnumber(L, (lua_Number)u.Q);
      else lua_pushinteger(L, (lua_Integer)u.Q);
      break;
    case 'f': lua_pushnumber(L, u.f); break;
    case 'd': lua_pushnumber(L, u.d); break;
    case 'c': lua_pushlstring(L, (const char *)&u.B, 1); break;
  }
}

/* Checks the value at idx fits type t (Python's array rules) and
** encodes it into out[t->size]; raises TypeError/OverflowError. */
static void encode_item(lua_State *L, int idx, const ms_type *t, char *out, const char *fname) {
  if (t->code == 'c') {
    if (lua_type(L, idx) != LUA_TSTRING)
      mt_raise(L, "TypeError", "%s: typecode 'c' holds one-byte strings, not %s", fname,
               luaL_typename(L, idx));
    if (lua_rawlen(L, idx) != 1)
      mt_raise(L, "TypeError", "%s: typecode 'c' holds one-byte strings, not a string of length %d",
               fname, (int)lua_rawlen(L, idx));
    out[0] = lua_tostring(L, idx)[0];
    return;
  }
  if (t->code == 'f' || t->code == 'd') {
    if (lua_type(L, idx) != LUA_TNUMBER)
      mt_raise(L, "TypeError", "%s: must be a number, not %s", fname, luaL_typename(L, idx));
    double d = lua_tonumber(L, idx);
    if (t->code == 'f') { float f = (float)d; memcpy(out, &f, 4); }
    else memcpy(out, &d, 8);
    return;
  }
  if (!lua_isinteger(L, idx))
    mt_raise(L, "TypeError", "%s: typecode '%c' needs an integer, not %s", fname, t->code,
             lua_type(L, idx) == LUA_TNUMBER ? "a float" : luaL_typename(L, idx));
  lua_Integer x = lua_tointeger(L, idx);
  lua_Integer lo, hi;
  if (t->size == 8) { lo = t->is_signed ? LUA_MININTEGER : 0; hi = LUA_MAXINTEGER; }
  else if (t->is_signed) { hi = ((lua_Integer)1 << (8 * t->size - 1)) - 1; lo = -hi - 1; }
  else { lo = 0; hi = ((lua_Integer)1 << (8 * t->size)) - 1; }
  if (x < lo || x > hi)
    mt_raise(L, "OverflowError", "%s: %I out of range for typecode '%c' [%I, %I]",
             fname, (LUAI_UACINT)x, t->code, (LUAI_UACINT)lo, (LUAI_UACINT)hi);
  union { int8_t b; int16_t h; int32_t i; int64_t q; } u;
  switch (t->size) {
    case 1: u.b = (int8_t)x; break;
    case 2: u.h = (int16_t)x; break;
    case 4: u.i = (int32_t)x; break;
    default: u.q = (int64_t)x; break;
  }
  memcpy(out, &u, t->size);
}

/* The lock option of Value/Array (field 'lock' of the options table at
** optidx, or a positional argument): sets self._lock.  true/nil: a new
** RLock; false: none; else a multiprocessing Lock or RLock. */
static void values_lock_opt(lua_State *L, int optidx, const char *fname) {
  if (optidx != 0 && is_plain_table(L, optidx))
    lua_getfield(L, optidx, "lock");
  else if (optidx != 0) lua_pushvalue(L, optidx);
  else lua_pushnil(L);
  int v = lua_gettop(L);
  if (lua_isnil(L, v) || (lua_isboolean(L, v) && lua_toboolean(L, v))) {
    mt_push_class(L, ms_qualnames[MS_RLOCK]);
    lua_call(L, 0, 1);
    lua_replace(L, v);
  } else if (lua_isboolean(L, v)) {
    lua_pop(L, 1);
    return;
  } else {
    ms_handle *lk = (ms_handle *)mt_toobject(L, v, &MS_KEY);
    if (lk == NULL || !(K(lk->kind) & MS_LOCKS))
      mt_argtype_error(L, v, fname, "lock", "a boolean or a multiprocessing Lock or RLock");
  }
  lua_setfield(L, 1, "_lock");
}

static ms_values *values_new(lua_State *L, int kind, const ms_type *t, int64_t n, const char *fname) {
  if (n < 0) mt_raise(L, "ValueError", "%s(): negative size", fname);
  if (n > (int64_t)(1u << 30) / t->size) mt_raise(L, "ValueError", "%s(): too large", fname);
  ms_handle *hd = ms_create(L, 1, kind, MS_DATA + (size_t)n * t->size, fname);
  ms_values *v = (ms_values *)hd->h;
  v->typecode = t->code;
  v->n = n;
  return v;
}

/* Value(typecode, init=0, {lock=true}) / Value{typecode, init, lock=} */
static int value_init(lua_State *L) {
  lua_settop(L, 4);
  int optidx = 4;
  if (lua_istable(L, 2)) {   /* Python-call form */
    lua_rawgeti(L, 2, 1);
    lua_rawgeti(L, 2, 2);
    lua_getfield(L, 2, "lock");
    lua_replace(L, 4);
    lua_replace(L, 3);
    lua_replace(L, 2);
  } else if (is_plain_table(L, 3)) {
    optidx = 3;   /* Value('i', {lock=false}): no init, options */
    lua_pushnil(L);
    lua_replace(L, 3);
    lua_pushvalue(L, optidx);
    lua_replace(L, 4);
  }
  const ms_type *t = type_arg(L, 2, "Value");
  char item[8] = {0};
  if (!lua_isnil(L, 3)) encode_item(L, 3, t, item, "Value()");
  ms_values *v = values_new(L, MS_VALUE, t, 1, "Value");
  memcpy(values_data(v), item, t->size);
  values_lock_opt(L, 4, "Value");
  return 0;
}

/* Array(typecode, size_or_initializer, {lock=true}) */
static int array_init(lua_State *L) {
  lua_settop(L, 4);
  if (lua_istable(L, 2)) {
    lua_rawgeti(L, 2, 1);
    lua_rawgeti(L, 2, 2);
    lua_getfield(L, 2, "lock");
    lua_replace(L, 4);
    lua_replace(L, 3);
    lua_replace(L, 2);
  }
  const ms_type *t = type_arg(L, 2, "Array");
  int64_t n;
  if (lua_isinteger(L, 3)) n = lua_tointeger(L, 3);
  else if (lua_istable(L, 3)) n = (int64_t)luaL_len(L, 3);
  else if (lua_type(L, 3) == LUA_TSTRING && t->code == 'c') n = (int64_t)lua_rawlen(L, 3);
  else return mt_argtype_error(L, 3, "Array", "size_or_initializer", "an integer or a table");
  ms_values *v = values_new(L, MS_ARRAY, t, n, "Array");
  char *d = values_data(v);
  if (lua_istable(L, 3)) {
    for (int64_t i = 0; i < n; i++) {
      lua_geti(L, 3, i + 1);
      encode_item(L, -1, t, d + i * t->size, "Array()");
      lua_pop(L, 1);
    }
  } else if (lua_type(L, 3) == LUA_TSTRING) {
    memcpy(d, lua_tostring(L, 3), (size_t)n);
  }
  values_lock_opt(L, 4, "Array");
  return 0;
}

/* Runs with the object's lock (if it has one) held around one access. */
typedef struct values_access {
  ms_handle *lock;
} values_access;

static void access_begin(lua_State *L, values_access *a) {
  lua_pushliteral(L, "_lock");   /* raw: an absent lock is no __getattr__ call */
  lua_rawget(L, 1);
  a->lock = (ms_handle *)mt_toobject(L, -1, &MS_KEY);
  lua_pop(L, 1);
  if (a->lock != NULL && !(K(a->lock->kind) & MS_LOCKS)) a->lock = NULL;
  /* held by the caller already (with(v:get_lock()) around it): a plain
  ** Lock would deadlock here in Python; we go on */
  if (a->lock != NULL && sem_is_mine((ms_sem *)a->lock->h, ms_me(L))) a->lock = NULL;
  if (a->lock != NULL && sem_take(L, a->lock, -1, 0) < 0) mt_check_interrupt(L);
}

static void access_end(lua_State *L, values_access *a) {
  if (a->lock != NULL) sem_give(L, a->lock, 1);
}

/* The values of a checked handle, and their type. */
static ms_values *values_of(lua_State *L, ms_handle *hd, const ms_type **t) {
  ms_values *v = (ms_values *)hd->h;
  *t = type_of(v->typecode);
  if (*t == NULL) mt_raise(L, "ValueError", "damaged shared value");
  return v;
}

static ms_values *values_check(lua_State *L, const ms_type **t) {
  return values_of(L, ms_check(L, 1, MS_VALUES, "Value"), t);
}

/* The string of a 'c' array up to its first NUL (Python's .value) */
static void push_cstring(lua_State *L, ms_values *v) {
  const char *d = values_data(v);
  size_t n = strnlen(d, (size_t)v->n);
  lua_pushlstring(L, d, n);
}

/* __getattr__: value, raw (c arrays), and a[i] (nil out of range, so
** that ipairs ends) */
static int values_getattr(lua_State *L) {
  const ms_type *t;
  ms_handle *hd = ms_check(L, 1, MS_VALUES, "Value");
  ms_values *v = values_of(L, hd, &t);
  values_access a;
  if (lua_isinteger(L, 2) && hd->kind == MS_ARRAY) {
    lua_Integer i = lua_tointeger(L, 2);
    if (i < 1 || i > v->n) return 0;
    access_begin(L, &a);
    push_item(L, t, values_data(v) + (i - 1) * t->size);
    access_end(L, &a);
    return 1;
  }
  const char *k = lua_tostring(L, 2);
  if (k == NULL || lua_type(L, 2) != LUA_TSTRING) return 0;
  if (strcmp(k, "value") == 0) {
    access_begin(L, &a);
    if (hd->kind == MS_VALUE) push_item(L, t, values_data(v));
    else if (t->code == 'c') push_cstring(L, v);
    else { access_end(L, &a); return 0; }
    access_end(L, &a);
    return 1;
  }
  if (strcmp(k, "raw") == 0 && hd->kind == MS_ARRAY && t->code == 'c') {
    access_begin(L, &a);
    lua_pushlstring(L, values_data(v), (size_t)v->n);
    access_end(L, &a);
    return 1;
  }
  return 0;
}

/* The __index of the Value and Array classes themselves (subclasses go
** through the prelude's __getattr__ path): the hot fields first, then
** the class's methods. */
static int values_index(lua_State *L) {
  int t = lua_type(L, 2);
  if (t == LUA_TNUMBER) return values_getattr(L);
  if (t == LUA_TSTRING) {
    const char *k = lua_tostring(L, 2);
    if (strcmp(k, "value") == 0 || strcmp(k, "raw") == 0) return values_getattr(L);
  }
  lua_getmetatable(L, 1);
  lua_pushvalue(L, 2);
  lua_gettable(L, -2);
  return 1;
}

/* 'c' arrays: .value = s / .raw = s */
static void set_cstring(lua_State *L, ms_values *v, int raw) {
  size_t n;
  if (lua_type(L, 3) != LUA_TSTRING)
    mt_argtype_error(L, 3, raw ? "raw" : "value", "value", "a string");
  const char *s = lua_tolstring(L, 3, &n);
  if ((int64_t)n > v->n)
    mt_raise(L, "ValueError", "%s: byte string too long (%d > %d)", raw ? "raw" : "value",
             (int)n, (int)v->n);
  values_access a;
  access_begin(L, &a);
  memcpy(values_data(v), s, n);
  if ((int64_t)n < v->n) values_data(v)[n] = '\0';
  access_end(L, &a);
}

static int values_newindex(lua_State *L) {
  const ms_type *t;
  ms_handle *hd = ms_check(L, 1, MS_VALUES, "Value");
  ms_values *v = values_of(L, hd, &t);
  char item[8];
  values_access a;
  char *p = NULL;
  if (lua_type(L, 2) == LUA_TNUMBER && hd->kind == MS_ARRAY) {
    lua_Integer i;
    if (!lua_isinteger(L, 2)) return mt_raise(L, "TypeError", "array indices must be integers");
    i = lua_tointeger(L, 2);
    if (i < 1 || i > v->n) return mt_raise(L, "IndexError", "array assignment index out of range");
    p = values_data(v) + (i - 1) * t->size;
  } else if (lua_type(L, 2) == LUA_TSTRING && strcmp(lua_tostring(L, 2), "value") == 0) {
    if (hd->kind == MS_ARRAY) {
      if (t->code != 'c') return mt_raise(L, "AttributeError", "Array of '%c' has no field 'value'", t->code);
      set_cstring(L, v, 0);
      return 0;
    }
    p = values_data(v);
  } else if (lua_type(L, 2) == LUA_TSTRING && strcmp(lua_tostring(L, 2), "raw") == 0
             && hd->kind == MS_ARRAY && t->code == 'c') {
    set_cstring(L, v, 1);
    return 0;
  } else {
    lua_rawset(L, 1);   /* any other field: the instance's own */
    return 0;
  }
  encode_item(L, 3, t, item, hd->kind == MS_ARRAY ? "Array item" : "Value.value");
  access_begin(L, &a);
  memcpy(p, item, t->size);
  access_end(L, &a);
  return 0;
}

static int values_len(lua_State *L) {
  const ms_type *t;
  ms_values *v = values_check(L, &t);
  lua_pushinteger(L, (lua_Integer)v->n);
  return 1;
}

static int values_get_lock(lua_State *L) {
  ms_check(L, 1, MS_VALUES, "Value");
  lua_pushliteral(L, "_lock");
  if (lua_rawget(L, 1) == LUA_TNIL)
    return mt_raise(L, "AttributeError", "this shared value was made with lock=false: it has no get_lock()");
  return 1;
}

static int values_get_obj(lua_State *L) {
  ms_check(L, 1, MS_VALUES, "Value");
  lua_settop(L, 1);
  return 1;
}

/* tolist(): a plain table of the items (Python's a[:]) */
static int values_tolist(lua_State *L) {
  const ms_type *t;
  ms_values *v = values_check(L, &t);
  values_access a;
  lua_createtable(L, (int)(v->n < INT_MAX ? v->n : 0), 0);
  access_begin(L, &a);
  for (int64_t i = 0; i < v->n; i++) {
    push_item(L, t, values_data(v) + i * t->size);
    lua_rawseti(L, -2, (lua_Integer)(i + 1));
  }
  access_end(L, &a);
  return 1;
}

static int values_tostring(lua_State *L) {
  const ms_type *t;
  ms_handle *hd = ms_check(L, 1, MS_VALUES, "Value");
  ms_values *v = values_of(L, hd, &t);
  lua_pushliteral(L, "_lock");
  int locked = lua_rawget(L, 1) != LUA_TNIL;
  lua_pop(L, 1);
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  if (locked) luaL_addstring(&b, "<Synchronized wrapper for ");
  if (hd->kind == MS_VALUE) {
    luaL_addstring(&b, t->cname);
    luaL_addchar(&b, '(');
    push_item(L, t, values_data(v));
    if (t->code == 'c') lua_pushfstring(L, "'%s'", lua_tostring(L, -1));
    else luaL_tolstring(L, -1, NULL);
    luaL_addvalue(&b);
    lua_pop(L, 1);
    luaL_addchar(&b, ')');
  } else {
    lua_pushfstring(L, "%s_Array_%d", t->cname, (int)v->n);
    luaL_addvalue(&b);
  }
  if (locked) luaL_addchar(&b, '>');
  luaL_pushresult(&b);
  return 1;
}

/* --------------------------------------------------------------- box */

/* A box holds one pickled value (Manager's dict/list/Namespace keep
** their table in one).  Methods: acquire() / release() around
** read() -> the value and write(v), version() (bumped by every write,
** read without the lock: proxies cache the decoded table per version),
** close() (the manager shut down: later use raises). */

static ms_box *box_of(ms_handle *hd) {
  return (ms_box *)hd->h;
}

static ms_handle *box_check(lua_State *L) {
  ms_handle *hd = ms_check(L, 1, K(MS_BOX), "box");
  if (box_of(hd)->closed)
    mt_raise_errno(L, "ConnectionRefusedError", ECONNREFUSED, "the Manager is shut down");
  return hd;
}

/* A box's file is mapped inside a reservation of MS_BOXMAX bytes
** (shm_segment_reserve): it grows in place and its mutex never moves.
** Called with the box's mutex held, which keeps 'capacity' still. */
static int box_cover(ms_handle *hd) {
  return shm_segment_cover(&hd->seg, &hd->boxmapped,
                           page_round(MS_BOXDATA + (size_t)box_of(hd)->capacity));
}

static void box_cover_or_raise(lua_State *L, ms_handle *hd) {
  int e = box_cover(hd);
  if (e != 0) mt_raise(L, "OSError", "[Errno %d] shared store: %s", e, strerror(e));
}

static ms_handle *box_check_locked(lua_State *L) {
  ms_handle *hd = box_check(L);
  if (!hd->boxlocked) mt_raise(L, "RuntimeError", "box: not acquired");
  return hd;
}

static int box_acquire(lua_State *L) {
  ms_handle *hd = box_check(L);
  if (hd->boxlocked) return mt_raise(L, "RuntimeError", "box: acquired twice");
  ms_lock(L, hd->h);
  hd->boxlocked = 1;
  return 0;
}

static int box_release(lua_State *L) {
  ms_handle *hd = ms_check(L, 1, K(MS_BOX), "box");
  if (hd->boxlocked) {
    hd->boxlocked = 0;
    ms_unlock(hd->h);
  }
  return 0;
}

static int box_read(lua_State *L) {
  ms_handle *hd = box_check_locked(L);
  ms_box *b = box_of(hd);
  if (b->len == 0) { lua_pushnil(L); return 1; }
  box_cover_or_raise(L, hd);
  pk_loads(L, (const char *)b + MS_BOXDATA, (size_t)b->len);
  return 1;
}

static int box_write(lua_State *L) {
  ms_handle *hd = box_check_locked(L);
  size_t n;
  luaL_checkany(L, 2);
  pk_dumps(L, 2);
  const char *s = lua_tolstring(L, -1, &n);
  ms_box *b = box_of(hd);
  if (n > b->capacity) {   /* grow the file (the memfd) for everyone */
    uint64_t cap = b->capacity;
    while (cap < n) cap *= 2;
    if (cap > MS_BOXMAX - MS_BOXDATA) cap = MS_BOXMAX - MS_BOXDATA;
    if (n > cap)
      return mt_raise(L, "MemoryError", "Manager: a shared dict/list/Namespace is limited to %d MiB",
                      (int)(MS_BOXMAX >> 20));
    if (ftruncate(hd->seg.fd, (off_t)(MS_BOXDATA + cap)) != 0)
      return mt_raise(L, "OSError", "[Errno %d] shared store: %s", errno, strerror(errno));
    b->capacity = cap;
  }
  box_cover_or_raise(L, hd);
  memcpy((char *)b + MS_BOXDATA, s, n);
  b->len = n;
  atomic_fetch_add(&b->version, 1);
  return 0;
}

static int box_version(lua_State *L) {
  ms_handle *hd = box_check(L);
  lua_pushinteger(L, (lua_Integer)atomic_load(&box_of(hd)->version));
  return 1;
}

static int box_close(lua_State *L) {
  ms_handle *hd = ms_check(L, 1, K(MS_BOX), "box");
  box_of(hd)->closed = 1;
  return 0;
}

static int box_init(lua_State *L) {
  ms_handle *hd = ms_create(L, 1, MS_BOX, 4096, "Manager");
  size_t mapped = hd->seg.size;
  int e = shm_segment_reserve(&hd->seg, MS_BOXMAX, mapped);
  if (e != 0) return mt_raise(L, "OSError", "[Errno %d] Manager: %s", e, strerror(e));
  hd->h = (ms_head *)hd->seg.base;
  hd->boxmapped = mapped;
  box_of(hd)->capacity = 4096 - MS_BOXDATA;
  return 0;
}

/* ----------------------------------------------------------- passing */

static int ms_rebuild(lua_State *L);

/* __reduce__: (rebuild, {pid, fd, token, kind, fields, class or false}) */
static int ms_reduce(lua_State *L) {
  ms_handle *hd = ms_check(L, 1, ~0u, "shared");
  lua_pushcfunction(L, ms_rebuild);
  shm_push_ref(L, 6, hd->seg.fd, hd->h->token, hd->kind);
  lua_newtable(L);   /* the Lua fields, without the C part */
  lua_pushnil(L);
  while (lua_next(L, 1)) {
    if (lua_type(L, -2) == LUA_TLIGHTUSERDATA) { lua_pop(L, 1); continue; }
    lua_pushvalue(L, -2);
    lua_insert(L, -2);
    lua_rawset(L, -4);
  }
  lua_rawseti(L, -2, 5);
  lua_getmetatable(L, 1);
  mt_push_class(L, ms_qualnames[hd->kind]);
  if (lua_rawequal(L, -1, -2)) { lua_pop(L, 2); lua_pushboolean(L, 0); }
  else lua_pop(L, 1);   /* a subclass: sent by name */
  lua_rawseti(L, -2, 6);
  return 2;
}

static int ms_rebuild(lua_State *L) {
  pid_t pid = (pid_t)luaL_checkinteger(L, 1);
  int fd = (int)luaL_checkinteger(L, 2);
  uint64_t token = (uint64_t)luaL_checkinteger(L, 3);
  lua_Integer kind = luaL_checkinteger(L, 4);
  shm_segment seg;
  if (kind < 0 || kind >= MS_NKINDS) return mt_raise(L, "ValueError", "rebuild(): bad kind");
  int e = shm_segment_attach(&seg, pid, fd);
  if (e != 0)
    return mt_raise(L, "OSError", "[Errno %d] cannot open the shared object of process %d: %s "
                    "(the sending process must be alive)", e, (int)pid, strerror(e));
  ms_head *h = (ms_head *)seg.base;
  if (seg.size < sizeof(ms_head) || h->magic != MS_MAGIC || h->token != token
      || h->kind != (uint32_t)kind || seg.size < h->size) {
    shm_segment_close(&seg);
    return mt_raise(L, "ValueError", "rebuild(): process %d no longer holds that object", (int)pid);
  }
  size_t mapped = page_round(seg.size);
  if (kind == MS_BOX && (e = shm_segment_reserve(&seg, MS_BOXMAX, mapped)) != 0) {
    shm_segment_close(&seg);
    return mt_raise(L, "OSError", "[Errno %d] rebuild(): %s", e, strerror(e));
  }
  if (lua_istable(L, 5)) lua_pushvalue(L, 5);
  else lua_newtable(L);
  int self = lua_gettop(L);
  if (lua_istable(L, 6)) lua_pushvalue(L, 6);
  else mt_push_class(L, ms_qualnames[kind]);
  lua_setmetatable(L, self);
  ms_handle *hd = ms_attach(L, self, &seg, (int)kind);
  if (kind == MS_BOX) hd->boxmapped = mapped;
  return 1;
}

/* rebuild_instance(qualname or class, fields): an instance of a
** registered class (or of a class pickle sent by name) made of its
** fields (for the Lua classes built on these objects). */
static int ms_rebuild_instance(lua_State *L) {
  luaL_checktype(L, 2, LUA_TTABLE);
  if (lua_istable(L, 1)) lua_pushvalue(L, 1);   /* a user's subclass, by name */
  else if (!mt_push_class(L, luaL_checkstring(L, 1)))
    return mt_raise(L, "ValueError", "rebuild_instance(): unknown class '%s'", lua_tostring(L, 1));
  lua_setmetatable(L, 2);
  lua_settop(L, 2);
  return 1;
}

/* ------------------------------------------------------------ module */

static const luaL_Reg lock_methods[] = {
  {"__init__", lock_init},
  {"acquire", sem_acquire},
  {"release", sem_release},
  {"locked", sem_locked},
  {"_is_owned", sem_is_owned},
  {"__enter__", sem_enter},
  {"__exit__", sem_exit},
  {"__tostring", sem_tostring},
  {"__reduce__", ms_reduce},
  {NULL, NULL}
};

static const luaL_Reg sem_methods[] = {
  {"__init__", semaphore_init},
  {"acquire", sem_acquire},
  {"release", sem_release},
  {"locked", sem_locked},
  {"get_value", sem_get_value},
  {"__enter__", sem_enter},
  {"__exit__", sem_exit},
  {"__tostring", sem_tostring},
  {"__reduce__", ms_reduce},
  {NULL, NULL}
};

static const luaL_Reg event_methods[] = {
  {"__init__", event_init},
  {"is_set", event_is_set},
  {"set", event_set},
  {"clear", event_clear},
  {"wait", event_wait},
  {"__tostring", event_tostring},
  {"__reduce__", ms_reduce},
  {NULL, NULL}
};

static const luaL_Reg cond_methods[] = {
  {"__init__", cond_init},
  {"wait", cond_wait},
  {"notify", cond_notify},
  {"notify_all", cond_notify_all},
  {"_n_waiting", cond_n_waiting},
  {"__reduce__", ms_reduce},
  {NULL, NULL}
};

static const luaL_Reg values_methods[] = {
  {"__getattr__", values_getattr},
  {"__newindex", values_newindex},
  {"__len", values_len},
  {"get_lock", values_get_lock},
  {"get_obj", values_get_obj},
  {"tolist", values_tolist},
  {"__tostring", values_tostring},
  {"__reduce__", ms_reduce},
  {NULL, NULL}
};

static const luaL_Reg box_methods[] = {
  {"__init__", box_init},
  {"acquire", box_acquire},
  {"release", box_release},
  {"read", box_read},
  {"write", box_write},
  {"version", box_version},
  {"close", box_close},
  {"__reduce__", ms_reduce},
  {NULL, NULL}
};

static const luaL_Reg ms_funcs[] = {
  {"rebuild", ms_rebuild},
  {"rebuild_instance", ms_rebuild_instance},
  {"register_class", mt_lua_register_class},
  {NULL, NULL}
};

/* Makes class 'name' (a subclass of the class at 'base' when base != 0)
** with 'methods', registers it under kind's qualname, stores it in the
** module table at m. */
static void ms_class(lua_State *L, int m, const char *name, int base, const luaL_Reg *methods, int kind) {
  lua_getfield(L, LUA_REGISTRYINDEX, "mtlua.class");
  lua_pushstring(L, name);
  if (base != 0) lua_pushvalue(L, base);
  lua_call(L, base != 0 ? 2 : 1, 1);
  if (methods) luaL_setfuncs(L, methods, 0);
  mt_register_class(L, ms_qualnames[kind], -1);
  lua_setfield(L, m, name);
}

int luaopen_mt_mpsync(lua_State *L) {
  static int atfork_done;
  if (!atfork_done) {   /* once per process image: forked children inherit it */
    atfork_done = 1;
    pthread_atfork(NULL, NULL, ms_atfork_child);
  }
  ms_mypid = getpid();
  if (luaL_newmetatable(L, MS_MT)) {
    lua_pushcfunction(L, ms_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_pop(L, 1);
  luaL_newlib(L, ms_funcs);
  int m = lua_gettop(L);
  ms_class(L, m, "Lock", 0, lock_methods, MS_LOCK);
  ms_class(L, m, "RLock", 0, lock_methods, MS_RLOCK);
  lua_getfield(L, m, "RLock");
  lua_pushcfunction(L, rlock_init);
  lua_setfield(L, -2, "__init__");
  lua_pop(L, 1);
  ms_class(L, m, "Semaphore", 0, sem_methods, MS_SEM);
  lua_getfield(L, m, "Semaphore");
  ms_class(L, m, "BoundedSemaphore", m + 1, NULL, MS_BSEM);
  lua_pop(L, 1);
  lua_getfield(L, m, "BoundedSemaphore");
  lua_pushcfunction(L, bsemaphore_init);
  lua_setfield(L, -2, "__init__");
  lua_pop(L, 1);
  ms_class(L, m, "Event", 0, event_methods, MS_EVENT);
  ms_class(L, m, "Condition", 0, cond_methods, MS_COND);
  ms_class(L, m, "Value", 0, values_methods, MS_VALUE);
  lua_getfield(L, m, "Value");
  lua_pushcfunction(L, value_init);
  lua_setfield(L, -2, "__init__");
  lua_pop(L, 1);
  ms_class(L, m, "Array", 0, values_methods, MS_ARRAY);
  lua_getfield(L, m, "Array");
  lua_pushcfunction(L, array_init);
  lua_setfield(L, -2, "__init__");
  lua_pop(L, 1);
  for (int i = 0; i < 2; i++) {   /* the fast __index of both */
    lua_getfield(L, m, i == 0 ? "Value" : "Array");
    lua_pushliteral(L, "__index");
    lua_pushcfunction(L, values_index);
    lua_rawset(L, -3);
    lua_pop(L, 1);
  }
  ms_class(L, m, "_SharedBox", 0, box_methods, MS_BOX);
  return 1;
}
