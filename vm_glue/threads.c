/*
** threads.c -- the universe and its registry of OS threads; the count
** hook through which a running thread gives up the GIL when asked.
**
** The hook costs something on every Lua instruction, so it is only
** installed once a second OS thread runs Lua (mt_enter_threaded): a
** single-threaded script runs at plain Lua speed.  Coroutines inherit
** the hook from the Lua thread that creates them; the resume wrappers
** give it to those made before threading began (mt_prepare_resume).
*/
#define _GNU_SOURCE
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

mt_universe *mt_universe_of(lua_State *L) {
  return *(mt_universe **)lua_getextraspace(L);
}

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

static void set_normal_hook(mt_universe *U, lua_State *L);

static void mt_hook(lua_State *L, lua_Debug *ar) {
  mt_universe *U = mt_universe_of(L);
  mt_thread *t = mt_thread_self_in(U);
  (void)ar;
  if (t == NULL) return;
  if (lua_gethookmask(L) & LUA_MASKCALL)
    set_normal_hook(U, L);   /* undo the watcher's count-1 hook */
  if (atomic_load_explicit(&t->interrupt, memory_order_relaxed))
    mt_check_interrupt(L);
  if (t->ndeferred > 0) mt_flush_wakes(t);   /* a busy waker */
  if (atomic_load_explicit(&U->gil.drop_request, memory_order_relaxed)) {
    gil_release(&U->gil, t, 1);
    gil_acquire(&U->gil, t);
  }
}

static void set_normal_hook(mt_universe *U, lua_State *L) {
  if (U->threaded) lua_sethook(L, mt_hook, LUA_MASKCOUNT, MT_HOOK_COUNT);
  else lua_sethook(L, NULL, 0, 0);
}

/* Called by the SIGINT watcher, from its own thread, like lua.c's
** signal handler: makes the running Lua code stop at its next
** instruction.  lua_sethook is documented as safe for this. */
void mt_hook_interrupt(lua_State *L) {
  lua_sethook(L, mt_hook, LUA_MASKCALL | LUA_MASKRET | LUA_MASKCOUNT, 1);
}

static void hook_if_unhooked(lua_State *L) {
  if (L != NULL && lua_gethook(L) == NULL)
    lua_sethook(L, mt_hook, LUA_MASKCOUNT, MT_HOOK_COUNT);
}

/* GIL held: no other thread runs Lua now, so hooking their states is
** safe.  Threads made later inherit the hook through lua_newthread. */
void mt_enter_threaded(lua_State *L) {
  mt_universe *U = mt_universe_of(L);
  if (U->threaded) return;
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
