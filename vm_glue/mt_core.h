/*
** mt_core.h -- the runtime core shared by every binding: the universe
** (one per mtlua_newstate), its GIL, the registry of OS threads, waiting
** (blocking with the GIL released), exceptions raised from C, and the
** tables of modules.
**
** The rules every binding follows:
**  - Lua is touched only with the GIL held.  Object state of this
**    process (lock owners, queue contents, waiter lists) is guarded by
**    the GIL itself, so it needs no mutex of its own.
**  - A call that may block does it through mt_wait(), which releases the
**    GIL, parks the OS thread (or, under gevent's monkey patching, the
**    greenlet) and takes the GIL back.  Between the two, never touch the
**    lua_State.
**  - Fast paths (an uncontended lock, a non-empty queue) never drop the
**    GIL.
*/
#ifndef MT_CORE_H
#define MT_CORE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/types.h>

#include <lua.h>
#include <lauxlib.h>

typedef struct mt_universe mt_universe;
typedef struct mt_thread mt_thread;
typedef struct mt_waiter mt_waiter;
/* A C type's __enter__, run by with() on its state (prelude.c): the
** object is at index 1; it must leave the stack as it found it. */
typedef int (*mt_enter_fn)(lua_State *L, void *state);

/* ---------------------------------------------------------------- GIL */

typedef struct mt_gil {
  pthread_mutex_t mutex;       /* guards every field below but the atomics */
  pthread_cond_t cond;         /* signalled when the GIL is released */
  pthread_cond_t switch_cond;  /* signalled when a new thread took it */
  int locked;
  mt_thread *holder;           /* the thread holding it (or that last did) */
  unsigned long switch_number; /* times the GIL changed hands */
  atomic_int drop_request;     /* a waiter asks the holder to drop it */
  atomic_long interval_us;     /* the switch interval */
} mt_gil;

void gil_init(mt_gil *gil);
void gil_reinit_after_fork(mt_gil *gil, mt_thread *self);
void gil_acquire(mt_gil *gil, mt_thread *self);
/* 'forced': the holder drops because a waiter asked (from the hook); it
** then waits until another thread really took the GIL, so that a busy
** thread cannot take it straight back (CPython's forced switching). */
void gil_release(mt_gil *gil, mt_thread *self, int forced);

/* ------------------------------------------------------------ threads */

struct mt_thread {
  mt_universe *U;
  lua_State *L;              /* the base Lua thread of this OS thread */
  lua_State *running;        /* the coroutine it is running now */
  int ref;                   /* registry reference anchoring L (-1: main) */
  pthread_t pthread;
  unsigned long ident;       /* threading.get_ident() */
  atomic_long native_id;     /* threading.get_native_id() (the tid);
                                written by the thread itself as it starts */
  int is_main;
  int dead;                  /* ended, or left behind in a forked child */
  int ensure_depth;          /* mtlua_gil_ensure nesting */
  unsigned long long ensure_taken;  /* per level: did ensure take the GIL */
  /* parking: one waiter at a time per OS thread */
  pthread_mutex_t park_mutex;
  pthread_cond_t park_cond;
  atomic_int interrupt;      /* SIGINT arrived (main thread only) */
  atomic_int preempt;        /* asked to drop the GIL (the signal's flag) */
  int preempt_stage;         /* the signal's hook is delaying the switch */
  unsigned jitter;           /* by how much: a little random generator */
  unsigned long park_seq;    /* which wait of this thread is current */
  int park_signaled;         /* that wait was signalled (park_mutex) */
  /* Wake-ups this thread gave while holding the GIL are signalled
  ** once it has let the GIL go (or at its next hook): a woken thread
  ** cannot run before that anyway, and waking it earlier only makes it
  ** block on the GIL again -- extra context switches on one CPU. */
  struct mt_deferred { mt_thread *thread; unsigned long seq; } deferred[32];
  int ndeferred;
  mt_thread *next, *prev;    /* the universe's registry, under the GIL */
};

struct mt_universe {
  mt_gil gil;
  unsigned long uid;         /* unique in the process, never reused */
  lua_State *L;              /* the main state */
  mt_thread *main;
  mt_thread *threads;        /* every registered OS thread */
  mt_thread *spare;          /* ended threads' records, for reuse: never
                                freed while the universe lives, so a late
                                wake-up never touches freed memory */
  int nthreads;
  int threaded;              /* every Lua thread carries the count hook
                                (preemption without signals, threads.c) */
  int exit_status;           /* asked for by SystemExit/os.exit paths */
  int closing;
  pid_t pid;                 /* the process the universe runs in */
  /* The coroutine binding plugs in here: when set and the caller is a
  ** greenlet of a hub under monkey patching, waits go through it. */
  int (*greenlet_wait)(lua_State *L, mt_waiter *w, double deadline);
  void (*greenlet_wake)(mt_waiter *w);
  void (*after_fork_child)(mt_universe *U);   /* e.g. reset the hub */
  /* Called by a threading.Thread's OS thread as it ends (GIL held, its
  ** Lua code done): frees the coroutine binding's per-thread state. */
  void (*on_thread_exit)(lua_State *L);
  void (*on_interrupt)(mt_universe *U);  /* SIGINT: wake a waiting hub */
  /* Waits until fd is ready for 'events' (POLLIN/POLLOUT) on the hub,
  ** when L is a greenlet under monkey patching (or a gevent socket,
  ** flags & MT_FD_FORCE); returns < 0 when the caller should block the
  ** thread itself (poll with the GIL released), else MT_WOKEN/
  ** MT_TIMEDOUT/MT_INTERRUPTED.  Set by the coroutine binding; used by
  ** sockets.  MT_FD_KEEP: the caller calls greenlet_cancel_fd before
  ** every close of fd, so the hub may keep watching fd between waits. */
  int (*greenlet_wait_fd)(lua_State *L, int fd, int events, double deadline, int flags);
  /* Called by sockets just before closing fd (GIL held): greenlets
  ** waiting on it in greenlet_wait_fd must be woken (MT_WOKEN; the
  ** socket then raises EBADF), as gevent's close() cancels waiters --
  ** epoll forgets a closed fd, so they would never wake.  Optional. */
  void (*greenlet_cancel_fd)(lua_State *L, int fd);
  /* who owns an RLock: the OS thread, or under monkey patching the
  ** greenlet (set by the coroutine binding; NULL: the OS thread) */
  void *(*owner_of)(lua_State *L);
  /* Called by mt_check_interrupt: raises an exception thrown into the
  ** calling greenlet while it waited in mt_wait (greenlet_wait then
  ** returned MT_INTERRUPTED, so the binding cleaned up first). */
  void (*raise_pending)(lua_State *L);
  /* The object with() last entered by a registered fast __enter__
  ** (prelude.c): its instance table and that closure, both anchored
  ** by with()'s upvalues so neither address can be reused while they
  ** are here; the C type's key, its state and its enter function.
  ** with() re-enters it without a lookup, and mt_toobject finds its
  ** state (for its __close) without one.  GIL held. */
  struct {
    const void *inst, *enter, *key;
    void *state;
    mt_enter_fn fn;
  } with_last;
};

/* prime, so that the hook does not always land on the same instruction
** of a short loop (a racy `counter = counter + 1` must be able to race) */
#define MT_HOOK_COUNT 997

/* L's universe (kept in the extra space of every Lua thread: hot paths
** read it, so it is inline). */
static inline mt_universe *mt_universe_of(lua_State *L) {
  return *(mt_universe **)lua_getextraspace(L);
}
/* The identity that owns an RLock acquired from L. */
void *mt_owner(lua_State *L);
/* The calling OS thread's record in L's universe (NULL if unknown). */
mt_thread *mt_self(lua_State *L);
mt_thread *mt_thread_self_in(mt_universe *U);

mt_universe *mt_universe_new(lua_State *L);  /* caller becomes main */
/* Registers the calling OS thread, running Lua thread Lt (anchored by
** registry reference ref).  Called with the GIL held by the creator. */
mt_thread *mt_thread_new(mt_universe *U, lua_State *Lt, int ref);
/* The two halves of mt_thread_new: a record, then (GIL held) linking. */
mt_thread *mt_thread_alloc(mt_universe *U, lua_State *Lt, int ref);
void mt_thread_link(mt_thread *t);
void mt_thread_bind_self(mt_thread *t);     /* in the new OS thread */
void mt_thread_unregister(mt_thread *t);    /* GIL held */
void mt_thread_free(mt_thread *t);   /* to the universe's spares */
void mt_universe_free(mt_universe *U);
/* Turns preemption on: called when a second OS thread is about to run
** Lua.  Without signals (threads.c) every Lua thread gets the count
** hook from now on. */
void mt_enter_threaded(lua_State *L);
/* Gives coroutine 'co' the count hook when threaded; records it as
** running (the preemption signal hooks the running one). */
void mt_prepare_resume(lua_State *L, lua_State *co);
void mt_set_running(lua_State *co);
/* Asks t, which holds the GIL, to drop it soon: sends it the preemption
** signal (nothing when the count hook is on).  The GIL's mutex held. */
void mt_preempt(mt_thread *t);
#define MT_PREEMPT_SIGNAL SIGURG
/* A hook a while from now on self's running Lua thread, to signal the
** wake-ups it deferred if it keeps the GIL (wait.c). */
void mt_arm_flush_hook(mt_thread *self);
/* A thread of ours about to end (its last GIL release) is listed, and
** joined by the next fork, thread start or close (threads.c). */
void mt_thread_ending(pthread_t th);
void mt_join_ending_threads(void);
/* fork() for multiprocessing and pool: flushes stdio first; in the
** child re-initialises the runtime (GIL, waits, threading's records,
** the hub), reseeds math.random.  Returns fork's result (GIL held in
** both processes).  Raises OSError when fork fails. */
pid_t mt_fork(lua_State *L);
/* In a forked child: the caller is the only thread left. */
void mt_universe_after_fork_child(mt_universe *U);

/* Raise KeyboardInterrupt in L if a SIGINT is pending for this thread. */
void mt_check_interrupt(lua_State *L);
void mt_interrupt_start(mt_universe *U);    /* the SIGINT watcher */
void mt_interrupt_stop(mt_universe *U);
void mt_interrupt_after_fork_child(void);
/* Makes the Lua code running in L stop at its next instruction (to
** raise a pending interrupt); callable from another OS thread. */
void mt_hook_interrupt(lua_State *L);

/* ------------------------------------------------------------ waiting */

struct mt_waiter {
  mt_waiter *next, *prev;
  mt_thread *thread;
  void *greenlet;           /* set by greenlet_wait: who to resume */
  int woken;                /* set by mt_waiter_wake */
  int linked;
  intptr_t data;            /* free for the object waited on */
  unsigned long seq;        /* the park_seq of the wait */
};

typedef struct mt_waitlist {
  mt_waiter *head, *tail;
  int count;
} mt_waitlist;

enum { MT_WOKEN = 0, MT_TIMEDOUT = 1, MT_INTERRUPTED = 2 };
/* flags of greenlet_wait_fd */
enum { MT_FD_FORCE = 1, MT_FD_KEEP = 2 };

void mt_waiter_init(lua_State *L, mt_waiter *w);
void mt_waitlist_push(mt_waitlist *wl, mt_waiter *w);
void mt_waitlist_remove(mt_waitlist *wl, mt_waiter *w);  /* if linked */
/* Unlinks and wakes the first live waiter; returns 0 if none. */
int mt_wake_one(mt_waitlist *wl);
int mt_wake_all(mt_waitlist *wl);
void mt_waiter_wake(mt_waiter *w);
/* Signals the threads 'self' woke while it held the GIL (called by
** gil_release after the GIL is free, and by the hook). */
void mt_flush_wakes(mt_thread *self);
/* Releases the GIL and blocks until w is woken, 'deadline' passes
** (monotonic seconds; < 0: none) or, in the main thread, a SIGINT
** arrives.  Returns MT_WOKEN, MT_TIMEDOUT or MT_INTERRUPTED (the caller
** cleans up, then calls mt_check_interrupt).  w need not be in any list
** (a plain sleep). */
int mt_wait(lua_State *L, mt_waiter *w, double deadline);

double mt_monotonic(void);
/* A timeout argument to a deadline: nil/absent -> -1 (none). */
double mt_deadline_after(double timeout);

/* Releases the GIL around a host-style blocking call. */
void mt_blocking_begin(lua_State *L);
void mt_blocking_end(lua_State *L);

/* ------------------------------------------------------------- errors */

/* Raises an instance of the prelude's exception class 'cls' (a global
** such as "ValueError", or a name registered with mt_register_class,
** such as "queue.Empty") with a formatted message. */
int mt_raise(lua_State *L, const char *cls, const char *fmt, ...);
/* Raises OSError(err, strerror(err)), as the subclass Python picks for
** err (ConnectionRefusedError, BrokenPipeError, TimeoutError,
** FileNotFoundError, BlockingIOError...): errno and strerror are set. */
int mt_raise_oserror(lua_State *L, int err);
/* Raises cls(code, msg) (an OSError subclass: errno = code, strerror =
** msg); falls back to OSError when cls is unknown. */
int mt_raise_errno(lua_State *L, const char *cls, int code, const char *msg);
/* Pushes a new exception instance (not raised). */
void mt_push_exception(lua_State *L, const char *cls, const char *msg);
/* Classes by qualified name, kept in the registry for mt_raise. */
void mt_register_class(lua_State *L, const char *qualname, int idx);
/* The same for Lua: register_class(qualname, cls); modules put it in
** their function tables. */
int mt_lua_register_class(lua_State *L);
int mt_push_class(lua_State *L, const char *qualname);
/* The message handler for protected calls: adds the traceback. */
int mt_msghandler(lua_State *L);
/* Formats the error at 'idx' as the uncaught-error report (traceback
** then "Class: message"); pushes the string. */
void mt_format_error(lua_State *L, int idx);
/* Is the error value at idx an instance of the class named qualname? */
int mt_isinstance(lua_State *L, int idx, const char *qualname);

/* Python-style argument helpers for the "trailing options" rule. */
/* The value of a parameter that may also come as field 'field' of an
** options table at 'optidx' (0: no options table).  mt_opt_timeout
** returns NAN for nil/absent (Python's None); a non-number raises
** TypeError naming 'fname'. */
int mt_opt_boolean(lua_State *L, int idx, int optidx, const char *field, int def);
double mt_opt_timeout(lua_State *L, int idx, int optidx, const char *field,
                      const char *fname);
/* Raises TypeError "fname() argument 'arg' must be T, not X". */
int mt_argtype_error(lua_State *L, int idx, const char *fname,
                     const char *arg, const char *expected);

/* The prelude's with(obj) (vm_glue/prelude.c). */
void mt_push_with(lua_State *L);
/* Lets with() run a C type's bound __enter__ (mt_fast_method 'bound')
** as enter(L, state), obj at index 1, without a Lua call; 'key' is
** the type's mt_newobject key. */
void mt_register_fast_enter(lua_CFunction bound, mt_enter_fn enter, const void *key);

/* ---------------------------------------------------------- modules */

/* Registered by state.c: C modules (package.preload) and exit handlers. */
void mt_atexit_push(lua_State *L, int fnidx);   /* run LIFO at close */
void mt_run_atexit(lua_State *L);
/* Prints an uncaught error (traceback, then the message) to stderr and
** records the exit status it asks for (SystemExit: its code, printing
** nothing; KeyboardInterrupt: 130; others: 1). */
void mt_report_error(lua_State *L, int idx);

/* Helpers for C classes: instances are tables; their C part is a full
** userdata stored in the table under a light-userdata key that is the
** address of a static 'key' (one per C type, so it doubles as the type
** check). */
void *mt_newobject(lua_State *L, int selfidx, const void *key, size_t size);
void *mt_toobject(lua_State *L, int idx, const void *key);
/* The state of the object at idx, a table, when it is the one with()
** last entered (mt_universe.with_last) and of type 'key'; else NULL.
** Its __close finds its state here without a table lookup. */
static inline void *mt_with_last_state(lua_State *L, int idx, const void *key) {
  mt_universe *U = mt_universe_of(L);
  if (U != NULL && U->with_last.key == key && U->with_last.inst == lua_topointer(L, idx))
    return U->with_last.state;
  return NULL;
}
void *mt_checkobject(lua_State *L, int idx, const void *key, const char *tname);
/* Bound fast methods.  `obj:m()` on an instance costs a miss in the
** instance, a hit in its class, then a lookup of the C state: for a lock
** pair that is most of the time.  A new instance whose class still has
** the C method `generic` for `name` gets its own closure `bound` over
** (state, instance), found by the first lookup, so the call needs no
** state lookup either.  Call after mt_newobject(L, selfidx, key...). */
typedef struct mt_fast_method {
  const char *name;
  lua_CFunction generic, bound;
} mt_fast_method;
void mt_bind_fast_methods(lua_State *L, int selfidx, const void *key,
                          const mt_fast_method *m);
#define MT_BOUND_STATE(L)    lua_touserdata(L, lua_upvalueindex(1))
#define MT_IS_BOUND_SELF(L)  lua_rawequal(L, 1, lua_upvalueindex(2))
/* Makes a global-visible class from a luaL_Reg list: calls the prelude's
** class(name, base), fills the methods, leaves the class on the stack. */
void mt_newclass(lua_State *L, const char *name, const luaL_Reg *methods);

#endif
