/*
** gil.c -- the global interpreter lock, after CPython's "new GIL"
** (Python/ceval_gil.c).  A thread that wants the GIL waits one switch
** interval; if the GIL has not changed hands meanwhile it sets
** drop_request, which the holder sees in its hook (set by a signal, or
** always there: threads.c).  The holder then drops the GIL and waits
** until someone else has taken it (forced switching), so a busy thread
** cannot starve the others.
*/
#include <errno.h>
#include <time.h>

#include "mt_core.h"

static void cond_init_monotonic(pthread_cond_t *c) {
  pthread_condattr_t attr;
  pthread_condattr_init(&attr);
  pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
  pthread_cond_init(c, &attr);
  pthread_condattr_destroy(&attr);
}

void gil_init(mt_gil *gil) {
  pthread_mutex_init(&gil->mutex, NULL);
  cond_init_monotonic(&gil->cond);
  pthread_cond_init(&gil->switch_cond, NULL);
  gil->locked = 0;
  gil->holder = NULL;
  gil->switch_number = 0;
  atomic_init(&gil->drop_request, 0);
  atomic_init(&gil->interval_us, 5000);
}

/* In a forked child the mutexes may have been copied while another
** thread held them: make them new, owned by the forking thread. */
void gil_reinit_after_fork(mt_gil *gil, mt_thread *self) {
  long interval = atomic_load(&gil->interval_us);
  gil_init(gil);
  atomic_store(&gil->interval_us, interval);
  gil->locked = 1;
  gil->holder = self;
}

static void deadline_in(struct timespec *ts, long us) {
  clock_gettime(CLOCK_MONOTONIC, ts);
  ts->tv_sec += us / 1000000;
  ts->tv_nsec += (us % 1000000) * 1000;
  if (ts->tv_nsec >= 1000000000) {
    ts->tv_sec++;
    ts->tv_nsec -= 1000000000;
  }
}

void gil_acquire(mt_gil *gil, mt_thread *self) {
  pthread_mutex_lock(&gil->mutex);
  while (gil->locked) {
    unsigned long seen = gil->switch_number;
    struct timespec ts;
    deadline_in(&ts, atomic_load_explicit(&gil->interval_us, memory_order_relaxed));
    int rc = pthread_cond_timedwait(&gil->cond, &gil->mutex, &ts);
    /* a whole interval passed and nobody switched: ask the holder */
    if (rc == ETIMEDOUT && gil->locked && gil->switch_number == seen) {
      atomic_store_explicit(&gil->drop_request, 1, memory_order_relaxed);
      mt_preempt(gil->holder);
    }
  }
  gil->locked = 1;
  if (gil->holder != self) {
    gil->holder = self;
    gil->switch_number++;
  }
  pthread_cond_signal(&gil->switch_cond);
  atomic_store_explicit(&gil->drop_request, 0, memory_order_relaxed);
  pthread_mutex_unlock(&gil->mutex);
}

void gil_release(mt_gil *gil, mt_thread *self, int forced) {
  pthread_mutex_lock(&gil->mutex);
  gil->locked = 0;
  pthread_cond_signal(&gil->cond);
  pthread_mutex_unlock(&gil->mutex);
  /* the GIL is free: now the threads woken meanwhile may run */
  if (self != NULL && self->ndeferred > 0) mt_flush_wakes(self);
  if (forced) {   /* wait until another thread has really taken the GIL */
    pthread_mutex_lock(&gil->mutex);
    while (gil->holder == self)
      pthread_cond_wait(&gil->switch_cond, &gil->mutex);
    pthread_mutex_unlock(&gil->mutex);
  }
  /* nothing of the universe is touched after an unforced release by an
  ** ending thread (self NULL): the main thread may free it at once */
}
