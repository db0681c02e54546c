/*
** interrupt.c -- Ctrl-C.  The SIGINT handler only writes to an eventfd
** (async-signal-safe); a watcher thread reads it and, for each universe
** of the process, marks its main thread interrupted, makes its running
** Lua code stop at the next instruction (lua_sethook, as lua.c does
** from its handler) and wakes it if it is parked.  The main thread then
** raises KeyboardInterrupt.  A handler rather than sigwait keeps SIGINT
** unblocked, so programs started by os.execute get Ctrl-C as usual.
*/
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>
#include <sys/eventfd.h>

#include "mt_core.h"

void mt_hook_interrupt(lua_State *L);

#define MAX_UNIVERSES 64

static pthread_mutex_t watch_mutex = PTHREAD_MUTEX_INITIALIZER;
static mt_universe *universes[MAX_UNIVERSES];
static int wake_fd = -1;
static pid_t watcher_pid = 0;      /* the process whose watcher runs */
static int sigint_ignored = -1;    /* as found at first start */

static void on_sigint(int sig) {
  int saved = errno;
  uint64_t one = 1;
  (void)sig;
  if (wake_fd >= 0 && write(wake_fd, &one, sizeof one) < 0) { /* nothing to do */ }
  errno = saved;
}

static void interrupt_universe(mt_universe *U) {
  mt_thread *m = U->main;
  if (m == NULL || m->dead) return;
  atomic_store(&m->interrupt, 1);
  if (m->running != NULL) mt_hook_interrupt(m->running);
  pthread_mutex_lock(&m->park_mutex);
  pthread_cond_broadcast(&m->park_cond);
  pthread_mutex_unlock(&m->park_mutex);
  if (U->on_interrupt) U->on_interrupt(U);
}

static void *watcher(void *arg) {
  int fd = (int)(intptr_t)arg;
  uint64_t n;
  for (;;) {
    ssize_t r = read(fd, &n, sizeof n);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return NULL;
    pthread_mutex_lock(&watch_mutex);
    for (int i = 0; i < MAX_UNIVERSES; i++)
      if (universes[i] != NULL && universes[i]->pid == getpid())
        interrupt_universe(universes[i]);
    pthread_mutex_unlock(&watch_mutex);
  }
}

static void start_watcher(void) {
  pthread_t th;
  pthread_attr_t attr;
  sigset_t all, old;
  if (wake_fd >= 0) close(wake_fd);
  wake_fd = eventfd(0, EFD_CLOEXEC);
  if (wake_fd < 0) return;
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  pthread_attr_setstacksize(&attr, 64 * 1024);
  /* the watcher itself never runs the handler */
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  if (pthread_create(&th, &attr, watcher, (void *)(intptr_t)wake_fd) == 0)
    watcher_pid = getpid();
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  pthread_attr_destroy(&attr);
}

static void install_handler(void) {
  struct sigaction sa, old;
  if (sigaction(SIGINT, NULL, &old) == 0 && sigint_ignored < 0)
    sigint_ignored = (old.sa_handler == SIG_IGN);
  if (sigint_ignored) return;   /* ignored at start: stays ignored */
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_sigint;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  sigaction(SIGINT, &sa, NULL);
}

/* Registers U; starts the watcher the first time in this process
** (again in a forked child, which has no watcher thread). */
void mt_interrupt_start(mt_universe *U) {
  pthread_mutex_lock(&watch_mutex);
  if (watcher_pid != getpid()) {
    install_handler();
    if (!sigint_ignored) start_watcher();
  }
  int free_slot = -1;
  for (int i = 0; i < MAX_UNIVERSES; i++) {
    if (universes[i] == U) { free_slot = -2; break; }
    if (universes[i] == NULL && free_slot == -1) free_slot = i;
  }
  if (free_slot >= 0) universes[free_slot] = U;
  pthread_mutex_unlock(&watch_mutex);
}

void mt_interrupt_stop(mt_universe *U) {
  pthread_mutex_lock(&watch_mutex);
  for (int i = 0; i < MAX_UNIVERSES; i++)
    if (universes[i] == U) universes[i] = NULL;
  pthread_mutex_unlock(&watch_mutex);
}

/* After fork, the parent's watcher mutex may be held by a thread that
** is gone: reset it before anything else runs in the child. */
void mt_interrupt_after_fork_child(void) {
  pthread_mutex_init(&watch_mutex, NULL);
}

void mt_check_interrupt(lua_State *L) {
  mt_thread *t = mt_self(L);
  mt_universe *U = mt_universe_of(L);
  if (U->raise_pending != NULL) U->raise_pending(L);
  if (t != NULL && atomic_exchange(&t->interrupt, 0))
    mt_raise(L, "KeyboardInterrupt", NULL);
}
