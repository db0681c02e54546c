/*
** wait.c -- blocking with the GIL released.  Every wait of this
** project (locks, conditions, queues, join, sleep) parks the OS thread
** on its own mutex and condition variable; a waker holding the GIL
** marks the waiter and signals it.  One primitive for all means one
** place where Ctrl-C interrupts a wait and one place where gevent's
** monkey patching turns a wait into a greenlet switch.
*/
#include <errno.h>
#include <math.h>
#include <time.h>

#include "mt_core.h"

double mt_monotonic(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

double mt_deadline_after(double timeout) {
  if (timeout < 0 || isnan(timeout)) return -1;
  if (timeout > 1e9) return -1;   /* beyond TIMEOUT_MAX: forever */
  return mt_monotonic() + timeout;
}

void mt_waiter_init(lua_State *L, mt_waiter *w) {
  w->next = w->prev = NULL;
  w->thread = mt_self(L);
  w->greenlet = NULL;
  w->woken = 0;
  w->linked = 0;
  w->data = 0;
}

void mt_waitlist_push(mt_waitlist *wl, mt_waiter *w) {
  w->next = NULL;
  w->prev = wl->tail;
  if (wl->tail) wl->tail->next = w;
  else wl->head = w;
  wl->tail = w;
  w->linked = 1;
  wl->count++;
}

void mt_waitlist_remove(mt_waitlist *wl, mt_waiter *w) {
  if (!w->linked) return;
  if (w->prev) w->prev->next = w->next;
  else wl->head = w->next;
  if (w->next) w->next->prev = w->prev;
  else wl->tail = w->prev;
  w->next = w->prev = NULL;
  w->linked = 0;
  wl->count--;
}

/* Signals wait number seq of thread t, if that wait is still on. */
static void signal_thread(mt_thread *t, unsigned long seq) {
  pthread_mutex_lock(&t->park_mutex);
  if (t->park_seq == seq) {
    t->park_signaled = 1;
    pthread_cond_signal(&t->park_cond);
  }
  pthread_mutex_unlock(&t->park_mutex);
}

/* Called with the GIL held.  The waiter learns it was woken from
** w->woken, which it reads after taking the GIL back; the signal that
** makes its thread run is sent when this thread lets the GIL go. */
void mt_waiter_wake(mt_waiter *w) {
  mt_thread *t = w->thread;
  w->woken = 1;
  if (w->greenlet != NULL && t->U->greenlet_wake != NULL) {
    t->U->greenlet_wake(w);
    return;
  }
  mt_thread *self = mt_thread_self_in(t->U);
  if (self == NULL || self == t || self->ndeferred == 32) {
    signal_thread(t, w->seq);
    return;
  }
  self->deferred[self->ndeferred].thread = t;
  self->deferred[self->ndeferred].seq = w->seq;
  if (self->ndeferred++ == 0) mt_arm_flush_hook(self);
}

void mt_flush_wakes(mt_thread *self) {
  int n = self->ndeferred;
  self->ndeferred = 0;
  for (int i = 0; i < n; i++)
    signal_thread(self->deferred[i].thread, self->deferred[i].seq);
}

int mt_wake_one(mt_waitlist *wl) {
  while (wl->head != NULL) {
    mt_waiter *w = wl->head;
    mt_waitlist_remove(wl, w);
    if (w->thread == NULL || w->thread->dead) continue;  /* left by fork */
    mt_waiter_wake(w);
    return 1;
  }
  return 0;
}

int mt_wake_all(mt_waitlist *wl) {
  int n = 0;
  while (mt_wake_one(wl)) n++;
  return n;
}

static void to_timespec(double t, struct timespec *ts) {
  double sec = floor(t);
  ts->tv_sec = (time_t)sec;
  ts->tv_nsec = (long)((t - sec) * 1e9);
  if (ts->tv_nsec >= 1000000000) { ts->tv_sec++; ts->tv_nsec -= 1000000000; }
}

/* Blocks (GIL released) until the current wait is signalled, the
** deadline passes or an interrupt comes. */
static void park(mt_thread *t, double deadline) {
  struct timespec ts;
  if (deadline >= 0) to_timespec(deadline, &ts);
  pthread_mutex_lock(&t->park_mutex);
  while (!t->park_signaled && !atomic_load(&t->interrupt)) {
    if (deadline < 0) pthread_cond_wait(&t->park_cond, &t->park_mutex);
    else if (pthread_cond_timedwait(&t->park_cond, &t->park_mutex, &ts) == ETIMEDOUT) break;
  }
  pthread_mutex_unlock(&t->park_mutex);
}

/* A new wait of t: stale signals meant for earlier waits are ignored. */
static void begin_wait(mt_thread *t, mt_waiter *w) {
  pthread_mutex_lock(&t->park_mutex);
  w->seq = ++t->park_seq;
  t->park_signaled = 0;
  pthread_mutex_unlock(&t->park_mutex);
}

int mt_wait(lua_State *L, mt_waiter *w, double deadline) {
  mt_universe *U = mt_universe_of(L);
  mt_thread *t = w->thread;
  if (U->greenlet_wait != NULL) {
    int result = U->greenlet_wait(L, w, deadline);
    if (result >= 0) return result;   /* < 0: not in a patched greenlet */
  }
  if (w->woken) return MT_WOKEN;
  if (atomic_load(&t->interrupt)) return MT_INTERRUPTED;
  begin_wait(t, w);
  gil_release(&U->gil, t, 0);
  park(t, deadline);
  gil_acquire(&U->gil, t);
  if (w->woken) return MT_WOKEN;   /* set under the GIL by the waker */
  if (atomic_load(&t->interrupt)) return MT_INTERRUPTED;
  return MT_TIMEDOUT;
}

void mt_blocking_begin(lua_State *L) {
  mt_universe *U = mt_universe_of(L);
  gil_release(&U->gil, mt_self(L), 0);
}

void mt_blocking_end(lua_State *L) {
  mt_universe *U = mt_universe_of(L);
  gil_acquire(&U->gil, mt_self(L));
}
