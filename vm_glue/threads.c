/*
** threads.c -- the universe and its registry of OS threads; the hook
** through which a running thread gives up the GIL when asked, and the
** signal that sets it (see "the hook" below).
*/
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/syscall.h>

#include "mt_core.h"

/* This OS thread's records, one per universe it runs Lua in (a host
** may use several states from one thread).  Never a registry scan: the
** registry belongs to whoever holds the GIL. */
#define TLS_SLOTS 8
static __thread mt_thread *tls_self;          /* the last one bound */
static __thread unsigned long tls_self_uid;
static __thread struct { unsigned long uid; mt_thread *t; } tls_records[TLS_SLOTS];
static atomic_ulong universe_ids;   /* uid: a closed universe's address may come back */

mt_thread *mt_thread_self_in(mt_universe *U) {
  if (tls_self != NULL && tls_self_uid == U->uid) return tls_self;
  for (int i = 0; i < TLS_SLOTS; i++)
    if (tls_records[i].t != NULL && tls_records[i].uid == U->uid) return tls_records[i].t;
  return NULL;
}

static void tls_remember(mt_thread *t) {
  int slot = TLS_SLOTS - 1;
  tls_self = t;
  tls_self_uid = t->U->uid;
  for (int i = 0; i < TLS_SLOTS; i++)
    if (tls_records[i].t == NULL || tls_records[i].uid == t->U->uid) { slot = i; break; }
  tls_records[slot].uid = t->U->uid;
  tls_records[slot].t = t;
}

static void tls_forget(mt_thread *t) {
  if (tls_self == t) tls_self = NULL;
  for (int i = 0; i < TLS_SLOTS; i++)
    if (tls_records[i].t == t) tls_records[i].t = NULL;
}

void *mt_owner(lua_State *L) {
  mt_universe *U = mt_universe_of(L);
  if (U->owner_of != NULL) {
    void *o = U->owner_of(L);
    if (o != NULL) return o;
  }
  return mt_thread_self_in(U);
}

mt_thread *mt_self(lua_State *L) {
  return mt_thread_self_in(mt_universe_of(L));
}

static void park_init(mt_thread *t) {
  pthread_condattr_t attr;
  pthread_mutex_init(&t->park_mutex, NULL);
  pthread_condattr_init(&attr);
  pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
  pthread_cond_init(&t->park_cond, &attr);
  pthread_condattr_destroy(&attr);
}

/* Does the calling OS thread hold U's GIL?  (Its record is known and
** holds it; a host thread new to U has no record yet.) */
static int gil_held_by_caller(mt_universe *U) {
  mt_thread *self = mt_thread_self_in(U);
  if (self == NULL) return 0;
  pthread_mutex_lock(&U->gil.mutex);
  int held = U->gil.locked && U->gil.holder == self;
  pthread_mutex_unlock(&U->gil.mutex);
  return held;
}

static void registry_link(mt_universe *U, mt_thread *t) {
  t->prev = NULL;
  t->next = U->threads;
  if (U->threads) U->threads->prev = t;
  U->threads = t;
  U->nthreads++;
}

static void registry_unlink(mt_universe *U, mt_thread *t) {
  if (t->prev) t->prev->next = t->next;
  else if (U->threads == t) U->threads = t->next;
  if (t->next) t->next->prev = t->prev;
  t->next = t->prev = NULL;
  U->nthreads--;
}

mt_thread *mt_thread_alloc(mt_universe *U, lua_State *Lt, int ref) {
  mt_thread *t = gil_held_by_caller(U) ? U->spare : NULL;
  if (t != NULL) {   /* reuse: keeps park_seq counting, so old signals miss */
    U->spare = t->next;
    unsigned long seq = t->park_seq;
    pthread_mutex_t m = t->park_mutex;
    pthread_cond_t c = t->park_cond;
    memset(t, 0, sizeof *t);
    t->park_seq = seq;
    t->park_mutex = m;
    t->park_cond = c;
  } else {
    t = calloc(1, sizeof *t);
    if (t == NULL) return NULL;
    park_init(t);
  }
  t->U = U;
  t->L = t->running = Lt;
  t->ref = ref;
  atomic_init(&t->interrupt, 0);
  return t;
}

void mt_thread_link(mt_thread *t) {
  registry_link(t->U, t);
}

mt_thread *mt_thread_new(mt_universe *U, lua_State *Lt, int ref) {
  mt_thread *t = mt_thread_alloc(U, Lt, ref);
  if (t != NULL) registry_link(U, t);
  return t;
}

void mt_thread_bind_self(mt_thread *t) {
  t->pthread = pthread_self();
  t->ident = (unsigned long)t->pthread;
  t->native_id = (long)syscall(SYS_gettid);
  tls_remember(t);
}

void mt_thread_unregister(mt_thread *t) {
  if (t->dead) return;
  t->dead = 1;
  registry_unlink(t->U, t);
  tls_forget(t);
}

/* GIL held.  The record goes to the spares, not to free(): a wake-up
** deferred by another thread may still be on its way to it. */
void mt_thread_free(mt_thread *t) {
  mt_universe *U = t->U;
  t->next = U->spare;
  U->spare = t;
}

static void free_list(mt_thread *t) {
  while (t != NULL) {
    mt_thread *next = t->next;
    pthread_mutex_destroy(&t->park_mutex);
    pthread_cond_destroy(&t->park_cond);
    free(t);
    t = next;
  }
}

/* Only when no OS thread of U is left. */
void mt_universe_free(mt_universe *U) {
  mt_thread *self = mt_thread_self_in(U);
  if (self != NULL) tls_forget(self);
  free_list(U->spare);
  free_list(U->threads);
  free(U);
}

mt_universe *mt_universe_new(lua_State *L) {
  mt_universe *U = calloc(1, sizeof *U);
  if (U == NULL) return NULL;
  gil_init(&U->gil);
  U->uid = atomic_fetch_add(&universe_ids, 1) + 1;
  U->L = L;
  U->pid = getpid();
  *(mt_universe **)lua_getextraspace(L) = U;
  U->main = mt_thread_new(U, L, -1);
  U->main->is_main = 1;
  mt_thread_bind_self(U->main);
  gil_acquire(&U->gil, U->main);
  return U;
}

/* ------------------------------------------------------------- the hook */

/* How a thread waiting for the GIL gets the holder to drop it.
**
** Signals (the default): no hook at all while nobody waits.  A waiter
** that waited a whole switch interval sends SIGURG to the holder's OS
** thread; the handler sets a one-shot count hook on the Lua thread it
** runs (what lua.c does for Ctrl-C), and the hook drops the GIL.  Lua
** 5.4 with any hook set calls into its debug machinery on every
** instruction, which halves the speed of a tight loop: a permanent
** count hook would cost that for the whole life of every thread.
**
** The count hook (the fallback): every Lua thread carries it once a
** second OS thread runs Lua; U->threaded says it is on.  Used under
** ThreadSanitizer (which delivers signals only when the thread next
** calls into libc: a pure-Lua loop would never be preempted), when the
** host program has its own SIGURG handler, or with MTLUA_PREEMPT=hook. */
enum { PREEMPT_UNDECIDED, PREEMPT_SIGNAL, PREEMPT_HOOK };
static atomic_int preempt_mode;

static void mt_hook(lua_State *L, lua_Debug *ar);

static void on_preempt_signal(int sig) {
  int saved = errno;
  (void)sig;
  for (int i = 0; i < TLS_SLOTS; i++) {
    mt_thread *t = tls_records[i].t;
    if (t != NULL && atomic_exchange(&t->preempt, 0) && t->running != NULL)
      lua_sethook(t->running, mt_hook, LUA_MASKCOUNT, 1);
  }
  errno = saved;
}

static int signals_usable(void) {
#if defined(__SANITIZE_THREAD__)
  return 0;
#else
  const char *force = getenv("MTLUA_PREEMPT");
  struct sigaction sa, old;
  if (force != NULL && strcmp(force, "hook") == 0) return 0;
  if (sigaction(MT_PREEMPT_SIGNAL, NULL, &old) != 0) return 0;
  if ((old.sa_flags & SA_SIGINFO) || (old.sa_handler != SIG_DFL && old.sa_handler != SIG_IGN))
    return 0;   /* the host program's */
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_preempt_signal;
  sigfillset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;   /* a holder's fast-path read or write goes on */
  return sigaction(MT_PREEMPT_SIGNAL, &sa, NULL) == 0;
#endif
}

static int preempt_by_signal(void) {
  int mode = atomic_load(&preempt_mode);
  if (mode == PREEMPT_UNDECIDED) {
    mode = signals_usable() ? PREEMPT_SIGNAL : PREEMPT_HOOK;
    atomic_store(&preempt_mode, mode);
  }
  return mode == PREEMPT_SIGNAL;
}

/* gil.c, with the GIL's mutex held and t holding the GIL. */
void mt_preempt(mt_thread *t) {
  if (atomic_load(&preempt_mode) != PREEMPT_SIGNAL) return;   /* hooked */
  atomic_store(&t->preempt, 1);
  pthread_kill(t->pthread, MT_PREEMPT_SIGNAL);
}

static void set_normal_hook(mt_universe *U, lua_State *L) {
  if (U->threaded) lua_sethook(L, mt_hook, LUA_MASKCOUNT, MT_HOOK_COUNT);
  else lua_sethook(L, NULL, 0, 0);
}

/* A hook set by the signal handler fires where the VM looks at its
** hook: at a call or a jump back, so always at the same place of a
** loop.  The switch goes a few instructions further, as a count hook's
** would, so that a racy `counter = counter + 1` can still lose updates
** (the notes' point). */
static int delay_switch(lua_State *L, mt_thread *t) {
  if (t->preempt_stage) {
    t->preempt_stage = 0;
    return 0;
  }
  t->preempt_stage = 1;
  t->jitter = t->jitter * 1103515245u + 12345u;
  lua_sethook(L, mt_hook, LUA_MASKCOUNT, 1 + (int)((t->jitter >> 16) % 5));
  return 1;
}

static void mt_hook(lua_State *L, lua_Debug *ar) {
  mt_universe *U = mt_universe_of(L);
  mt_thread *t = mt_thread_self_in(U);
  (void)ar;
  if (t == NULL) return;
  int drop = atomic_load_explicit(&U->gil.drop_request, memory_order_relaxed);
  if (drop && !U->threaded && delay_switch(L, t)) return;
  t->preempt_stage = 0;
  if (!U->threaded || (lua_gethookmask(L) & LUA_MASKCALL))
    set_normal_hook(U, L);   /* one-shot hooks end here */
  if (atomic_load_explicit(&t->interrupt, memory_order_relaxed))
    mt_check_interrupt(L);
  if (t->ndeferred > 0) mt_flush_wakes(t);   /* a busy waker */
  if (drop) {
    gil_release(&U->gil, t, 1);
    gil_acquire(&U->gil, t);
  }
}

/* Called by the SIGINT watcher, from its own thread, like lua.c's
** signal handler: makes the running Lua code stop at its next
** instruction.  lua_sethook is documented as safe for this. */
void mt_hook_interrupt(lua_State *L) {
  lua_sethook(L, mt_hook, LUA_MASKCALL | LUA_MASKRET | LUA_MASKCOUNT, 1);
}

/* A thread that deferred wake-ups (wait.c) signals them when it lets
** the GIL go; a busy one, which does not, from a hook a while later. */
void mt_arm_flush_hook(mt_thread *self) {
  lua_State *L = self->running;
  if (L != NULL && lua_gethook(L) == NULL)
    lua_sethook(L, mt_hook, LUA_MASKCOUNT, MT_HOOK_COUNT);
}

static void hook_if_unhooked(lua_State *L) {
  if (L != NULL && lua_gethook(L) == NULL)
    lua_sethook(L, mt_hook, LUA_MASKCOUNT, MT_HOOK_COUNT);
}

/* GIL held: no other thread runs Lua now, so hooking their states is
** safe.  Threads made later inherit the hook through lua_newthread. */
void mt_enter_threaded(lua_State *L) {
  mt_universe *U = mt_universe_of(L);
  if (U->threaded || preempt_by_signal()) return;
  U->threaded = 1;
  for (mt_thread *t = U->threads; t != NULL; t = t->next) {
    hook_if_unhooked(t->L);
    hook_if_unhooked(t->running);
  }
  hook_if_unhooked(L);
}

void mt_prepare_resume(lua_State *L, lua_State *co) {
  mt_universe *U = mt_universe_of(L);
  if (U->threaded && lua_gethook(co) == NULL)
    lua_sethook(co, mt_hook, LUA_MASKCOUNT, MT_HOOK_COUNT);
  mt_set_running(co);
}

void mt_set_running(lua_State *co) {
  mt_thread *t = mt_self(co);
  if (t != NULL) t->running = co;
}

/* ----------------------------------------------------- ending threads */

/* Threads that let the GIL go for the last time and are ending.  An OS
** thread's exit still frees memory after that, and a fork meanwhile can
** copy an allocator lock it holds: AddressSanitizer's allocator has no
** fork handlers, and a child then hung at its first allocation.  So
** threads are joinable, and a fork (or a new thread, or the end) first
** joins the ending ones: join returns once the thread is gone. */
static pthread_mutex_t ending_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_t ending[64];
static int nending;

static void join_ending_locked(void) {
  for (int i = 0; i < nending; i++) pthread_join(ending[i], NULL);
  nending = 0;
}

/* Also at exit (os.exit included): a thread that ended and was never
** joined counts as leaked for ThreadSanitizer. */
static void register_join_at_exit(void) { atexit(mt_join_ending_threads); }
static pthread_once_t join_at_exit_once = PTHREAD_ONCE_INIT;

void mt_thread_ending(pthread_t th) {
  pthread_once(&join_at_exit_once, register_join_at_exit);
  pthread_mutex_lock(&ending_mu);
  if (nending == (int)(sizeof ending / sizeof ending[0])) join_ending_locked();
  ending[nending++] = th;
  pthread_mutex_unlock(&ending_mu);
}

void mt_join_ending_threads(void) {
  pthread_mutex_lock(&ending_mu);
  join_ending_locked();
  pthread_mutex_unlock(&ending_mu);
}

/* In a forked child the parent's ending threads do not exist. */
static void ending_after_fork_child(void) {
  pthread_mutex_init(&ending_mu, NULL);
  nending = 0;
}

/* ------------------------------------------------------------- fork */

void mt_universe_after_fork_child(mt_universe *U) {
  mt_thread *self = mt_thread_self_in(U), *t, *next;
  for (t = U->threads; t != NULL; t = next) {
    next = t->next;
    if (t == self) continue;
    /* another thread's waiters may still sit in object lists: keep the
    ** record (never freed) but make its mutex usable and mark it dead */
    park_init(t);
    t->dead = 1;
    registry_unlink(U, t);
  }
  park_init(self);
  self->ndeferred = 0;   /* to threads that are gone */
  /* The child is single-threaded: the count hook would only slow its
  ** Lua down (a pool worker's whole job); the next thread it starts
  ** brings the hook back (mt_enter_threaded). */
  U->threaded = 0;
  if (self->running != NULL && self->running != self->L) lua_sethook(self->running, NULL, 0, 0);
  if (self->L != NULL) lua_sethook(self->L, NULL, 0, 0);
  mt_interrupt_after_fork_child();
  ending_after_fork_child();
  atomic_store(&self->interrupt, 0);
  self->native_id = (long)syscall(SYS_gettid);
  if (U->main != self) {
    if (U->main) U->main->is_main = 0;
    U->main = self;
    self->is_main = 1;
  }
  gil_reinit_after_fork(&U->gil, self);
  U->pid = getpid();
  mt_interrupt_start(U);
  if (U->after_fork_child) U->after_fork_child(U);
}
