/*
** multiprocessing.c -- the C part of `multiprocessing` (module
** "_multiprocessing"): forking a child, waiting for and signalling it,
** leaving a child, and Pipe's Connections.  Process itself is Lua
** (lib/multiprocessing.lua), built on these.
**
** The Lua API, also for pool (lib/pool.lua):
**   fork(tie=true) -> pid in the parent, 0 in the child.  Wraps mt_fork
**     (stdio flushed, runtime re-initialised, math.random reseeded) and,
**     unless tie is false (a non-daemonic Process, which outlives its
**     parent as in Python), makes
**     the child die with its parent however the parent dies: with
**     PR_SET_PDEATHSIG(SIGKILL) when the forking thread is the main one
**     (the signal follows the forking *thread*), else with a helper
**     thread that waits for EOF on a "lifeline" pipe whose write end
**     only the parent holds.  The child must end with _exit(code).
**   pidfd(pid) -> fd or nil: a pidfd (Linux >= 5.3) to wait on.
**   wait(pid, pidfd, timeout) -> exitcode, or nil if still running
**     after 'timeout' (nil: wait forever; 0: just poll).  exitcode is
**     the exit status, or -N when killed by signal N.  Waits with the
**     GIL released; Ctrl-C raises KeyboardInterrupt.  Reaps the child.
**   kill(pid, sig) -> true, or false when there is no such process.
**   close_fd(fd); _exit(code) (flushes stdio, then _exit);
**   atexit(fn) (an exit handler of the state, run LIFO at close).
**   Pipe(duplex=true) -> two Connections.
**   SIGTERM, SIGKILL, signal_name(n).
*/
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#include "mt_core.h"
#include "pickle.h"

#define MP_SLICE_MS 50   /* fd waits wake this often to notice Ctrl-C */

/* --------------------------------------------------------- fd waiting */

/* Waits until fd is ready for 'events' or the deadline passes, with the
** GIL released (or as a greenlet switch under gevent's patching).
** Returns MT_WOKEN or MT_TIMEDOUT; raises KeyboardInterrupt. */
static int mp_wait_fd(lua_State *L, int fd, short events, double deadline) {
  mt_universe *U = mt_universe_of(L);
  if (U->greenlet_wait_fd != NULL) {
    int r = U->greenlet_wait_fd(L, fd, events, deadline, 0);
    if (r >= 0) {
      if (r == MT_INTERRUPTED) mt_check_interrupt(L);
      return r;
    }
  }
  for (;;) {
    struct pollfd p = { fd, events, 0 };
    int ms = MP_SLICE_MS;
    if (deadline >= 0) {
      double left = deadline - mt_monotonic();
      if (left <= 0) ms = 0;
      else if (left * 1000 < ms) ms = (int)ceil(left * 1000);
    }
    mt_blocking_begin(L);
    int n = poll(&p, 1, ms);
    mt_blocking_end(L);
    mt_check_interrupt(L);
    if (n > 0) return MT_WOKEN;
    if (n < 0 && errno != EINTR)
      return mt_raise(L, "OSError", "[Errno %d] poll: %s", errno, strerror(errno));
    if (deadline >= 0 && mt_monotonic() >= deadline) return MT_TIMEDOUT;
  }
}

/* ------------------------------------------------------------ forking */

static int lifeline_read = -1, lifeline_write = -1;   /* ours, for our children */
static int parent_lifeline = -1;   /* in a child: the read end from its parent */

static void *lifeline_watch(void *arg) {
  char c;
  int fd = (int)(intptr_t)arg;
  while (read(fd, &c, 1) < 0 && errno == EINTR) {}
  kill(getpid(), SIGKILL);   /* EOF: the parent is gone */
  return NULL;
}

static void start_lifeline_watch(int fd) {
  pthread_t th;
  pthread_attr_t attr;
  sigset_t all, old;
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  pthread_attr_setstacksize(&attr, 64 * 1024);
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  pthread_create(&th, &attr, lifeline_watch, (void *)(intptr_t)fd);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  pthread_attr_destroy(&attr);
}

/* In a child that outlives its parent (a non-daemonic Process): it
** holds no lifeline of ours, so it neither dies with us nor keeps our
** other children's lifelines open. */
static void child_untie(void) {
  if (lifeline_write >= 0) close(lifeline_write);
  if (lifeline_read >= 0) close(lifeline_read);
  lifeline_read = lifeline_write = -1;
}

/* In the child, before any Lua runs: tie its life to the parent's. */
static void child_tie_to_parent(pid_t parent, int from_main) {
  if (from_main) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(1);   /* it died before the prctl */
  } else if (lifeline_read >= 0) {
    start_lifeline_watch(lifeline_read);
    parent_lifeline = lifeline_read;
  }
  if (lifeline_write >= 0) close(lifeline_write);   /* else we keep it alive */
  if (lifeline_read >= 0 && parent_lifeline != lifeline_read) close(lifeline_read);
  lifeline_read = lifeline_write = -1;
}

static int mp_fork(lua_State *L) {
  mt_thread *self = mt_self(L);
  int from_main = self != NULL && self->is_main;
  int tie = lua_isnoneornil(L, 1) || lua_toboolean(L, 1);
  pid_t parent = getpid();
  if (tie && !from_main && lifeline_write < 0) {
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0)
      return mt_raise(L, "OSError", "[Errno %d] pipe: %s", errno, strerror(errno));
    lifeline_read = fds[0];
    lifeline_write = fds[1];
  }
  pid_t pid = mt_fork(L);
  if (pid == 0) {
    if (tie) child_tie_to_parent(parent, from_main);
    else child_untie();
  }
  lua_pushinteger(L, pid);
  return 1;
}

static int mp_pidfd(lua_State *L) {
#ifdef SYS_pidfd_open
  int fd = (int)syscall(SYS_pidfd_open, (pid_t)luaL_checkinteger(L, 1), 0);
  if (fd >= 0) { lua_pushinteger(L, fd); return 1; }
#endif
  lua_pushnil(L);
  return 1;
}

static int exitcode_of(int status) {
  if (WIFSIGNALED(status)) return -WTERMSIG(status);
  return WEXITSTATUS(status);
}

/* One waitpid: 1 reaped (*code set), 0 still running, -1 no such child. */
static int reap(pid_t pid, int *code) {
  int status;
  pid_t r;
  do r = waitpid(pid, &status, WNOHANG); while (r < 0 && errno == EINTR);
  if (r == pid) { *code = exitcode_of(status); return 1; }
  return r == 0 ? 0 : -1;
}

/* Without a pidfd: sleep through mt_wait, 1 ms growing to 20 ms. */
static void sleep_a_little(lua_State *L, double *step, double deadline) {
  mt_waiter w;
  double until = mt_monotonic() + *step;
  if (deadline >= 0 && until > deadline) until = deadline;
  mt_waiter_init(L, &w);
  if (mt_wait(L, &w, until) == MT_INTERRUPTED) mt_check_interrupt(L);
  if (*step < 0.02) *step *= 2;
}

static int mp_wait(lua_State *L) {
  pid_t pid = (pid_t)luaL_checkinteger(L, 1);
  int pidfd = (int)luaL_optinteger(L, 2, -1);
  double timeout = mt_opt_timeout(L, 3, 0, "timeout", "join");
  double deadline = isnan(timeout) ? -1 : mt_monotonic() + (timeout < 0 ? 0 : timeout);
  double step = 0.001;
  int code;
  for (;;) {
    int r = reap(pid, &code);
    if (r == 1) { lua_pushinteger(L, code); return 1; }
    if (r < 0) {
      return mt_raise(L, "OSError", "[Errno %d] no child process %d",
                      ECHILD, (int)pid);
    }
    if (deadline >= 0 && mt_monotonic() >= deadline) break;
    if (pidfd >= 0) mp_wait_fd(L, pidfd, POLLIN, deadline);
    else sleep_a_little(L, &step, deadline);
  }
  lua_pushnil(L);
  return 1;
}

static int mp_kill(lua_State *L) {
  pid_t pid = (pid_t)luaL_checkinteger(L, 1);
  int sig = (int)luaL_checkinteger(L, 2);
  if (pid <= 0) return mt_raise(L, "ValueError", "kill(): bad pid %d", (int)pid);
  lua_pushboolean(L, kill(pid, sig) == 0);
  return 1;
}

static int mp_close_fd(lua_State *L) {
  int fd = (int)luaL_checkinteger(L, 1);
  if (fd >= 0) close(fd);
  return 0;
}

static int mp_exit(lua_State *L) {
  int code = (int)luaL_optinteger(L, 1, 0);
  fflush(NULL);
  _exit(code);
  return 0;
}

static int mp_atexit(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  mt_atexit_push(L, 1);
  return 0;
}

static int mp_signal_name(lua_State *L) {
  int sig = (int)luaL_checkinteger(L, 1);
  const char *abbrev = sigabbrev_np(sig);
  if (abbrev == NULL) lua_pushnil(L);
  else lua_pushfstring(L, "SIG%s", abbrev);
  return 1;
}

/* -------------------------------------------------------- Connection */

/* A message is a 4-byte length (host order: both ends are this
** machine) then the bytes; send() sends pickle.dumps(v).  Reads are
** buffered so that a small message costs one read(). */
typedef struct mp_conn {
  int rfd, wfd;            /* -1 when this end cannot read / write */
  int closed;
  char *buf;               /* received, not yet consumed: buf[pos..len) */
  size_t pos, len, size;
} mp_conn;

static const char CONN_KEY = 'C';
static const char CONN_MT[] = "mtlua.connection";

static mp_conn *conn_check(lua_State *L) {
  mp_conn *c = (mp_conn *)mt_checkobject(L, 1, &CONN_KEY, "Connection");
  if (c->closed) mt_raise(L, "OSError", "handle is closed");
  return c;
}

static void conn_release(mp_conn *c) {
  if (c->rfd >= 0) close(c->rfd);
  if (c->wfd >= 0 && c->wfd != c->rfd) close(c->wfd);
  c->rfd = c->wfd = -1;
  free(c->buf);
  c->buf = NULL;
  c->pos = c->len = c->size = 0;
  c->closed = 1;
}

static int conn_gc(lua_State *L) {
  conn_release((mp_conn *)luaL_checkudata(L, 1, CONN_MT));
  return 0;
}

static void conn_write_all(lua_State *L, mp_conn *c, const char *p, size_t n) {
  while (n > 0) {
    ssize_t w = write(c->wfd, p, n);
    if (w > 0) { p += w; n -= (size_t)w; continue; }
    if (w < 0 && errno == EINTR) continue;
    if (w < 0 && errno == EAGAIN) { mp_wait_fd(L, c->wfd, POLLOUT, -1); continue; }
    if (errno == EPIPE || errno == ECONNRESET)
      mt_raise(L, "BrokenPipeError", "[Errno %d] %s", errno, strerror(errno));
    mt_raise(L, "OSError", "[Errno %d] %s", errno, strerror(errno));
  }
}

static void conn_send_raw(lua_State *L, mp_conn *c, const char *s, size_t n) {
  if (c->wfd < 0) mt_raise(L, "OSError", "connection is read-only");
  if (n > 0x7fffffffu) mt_raise(L, "ValueError", "send(): message too large");
  uint32_t len = (uint32_t)n;
  if (n <= 4096) {   /* one write: header and body together */
    char frame[4 + 4096];
    memcpy(frame, &len, 4);
    memcpy(frame + 4, s, n);
    conn_write_all(L, c, frame, n + 4);
  } else {
    conn_write_all(L, c, (const char *)&len, 4);
    conn_write_all(L, c, s, n);
  }
}

static int conn_send(lua_State *L) {
  mp_conn *c = conn_check(L);
  size_t n;
  luaL_checkany(L, 2);
  pk_dumps(L, 2);
  const char *s = lua_tolstring(L, -1, &n);
  conn_send_raw(L, c, s, n);
  return 0;
}

static int conn_send_bytes(lua_State *L) {
  mp_conn *c = conn_check(L);
  size_t n;
  if (lua_type(L, 2) != LUA_TSTRING)
    return mt_argtype_error(L, 2, "send_bytes", "buf", "a string");
  const char *s = lua_tolstring(L, 2, &n);
  lua_Integer offset = luaL_optinteger(L, 3, 0);
  lua_Integer size = luaL_optinteger(L, 4, (lua_Integer)n - offset);
  if (offset < 0 || (size_t)offset > n) return mt_raise(L, "ValueError", "send_bytes(): offset out of range");
  if (size < 0 || (size_t)(offset + size) > n) return mt_raise(L, "ValueError", "send_bytes(): size out of range");
  conn_send_raw(L, c, s + offset, (size_t)size);
  return 0;
}

/* Reads more into the buffer; 0 at EOF.  Waits for data first. */
static int conn_fill(lua_State *L, mp_conn *c, size_t want) {
  if (c->pos > 0 && c->pos == c->len) c->pos = c->len = 0;
  if (c->len + want > c->size) {
    if (c->pos > 0) {   /* slide down first */
      memmove(c->buf, c->buf + c->pos, c->len - c->pos);
      c->len -= c->pos;
      c->pos = 0;
    }
    size_t size = c->size ? c->size : 65536;
    while (size < c->len + want) size *= 2;
    if (size != c->size) {
      char *b = realloc(c->buf, size);
      if (b == NULL) mt_raise(L, "MemoryError", "recv(): no memory");
      c->buf = b;
      c->size = size;
    }
  }
  for (;;) {
    mp_wait_fd(L, c->rfd, POLLIN, -1);
    ssize_t r = read(c->rfd, c->buf + c->len, c->size - c->len);
    if (r > 0) { c->len += (size_t)r; return 1; }
    if (r == 0) return 0;
    if (errno == EINTR || errno == EAGAIN) continue;
    if (errno == ECONNRESET) return 0;
    mt_raise(L, "OSError", "[Errno %d] %s", errno, strerror(errno));
  }
}

/* Makes the next whole message available: returns its length, its
** bytes at c->buf + c->pos + 4.  EOFError when the writers are gone. */
static size_t conn_next(lua_State *L, mp_conn *c) {
  uint32_t len;
  if (c->rfd < 0) mt_raise(L, "OSError", "connection is write-only");
  while (c->len - c->pos < 4)
    if (!conn_fill(L, c, 4)) mt_raise(L, "EOFError", NULL);
  memcpy(&len, c->buf + c->pos, 4);
  while (c->len - c->pos < 4 + (size_t)len)
    if (!conn_fill(L, c, 4 + (size_t)len - (c->len - c->pos))) mt_raise(L, "EOFError", NULL);
  return len;
}

static int conn_recv(lua_State *L) {
  mp_conn *c = conn_check(L);
  size_t len = conn_next(L, c);
  const char *p = c->buf + c->pos + 4;
  c->pos += 4 + len;   /* consumed first: a bad pickle is not read twice */
  pk_loads(L, p, len);
  return 1;
}

static int conn_recv_bytes(lua_State *L) {
  mp_conn *c = conn_check(L);
  size_t len = conn_next(L, c);
  lua_Integer maxlength = luaL_optinteger(L, 2, -1);
  if (maxlength >= 0 && len > (size_t)maxlength) {
    c->pos += 4 + len;
    return mt_raise(L, "OSError", "bad message length");
  }
  lua_pushlstring(L, c->buf + c->pos + 4, len);
  c->pos += 4 + len;
  return 1;
}

/* poll(timeout=0): is there something to read?  nil waits forever. */
static int conn_poll(lua_State *L) {
  mp_conn *c = conn_check(L);
  double timeout = 0;
  if (c->rfd < 0) return mt_raise(L, "OSError", "connection is write-only");
  if (lua_gettop(L) >= 2) {
    timeout = mt_opt_timeout(L, 2, lua_istable(L, 2) ? 2 : 0, "timeout", "poll");
    if (isnan(timeout)) timeout = -1;
    else if (timeout < 0) timeout = 0;
  }
  if (c->len > c->pos) { lua_pushboolean(L, 1); return 1; }
  double deadline = timeout < 0 ? -1 : mt_monotonic() + timeout;
  lua_pushboolean(L, mp_wait_fd(L, c->rfd, POLLIN, deadline) == MT_WOKEN);
  return 1;
}

static int conn_close(lua_State *L) {
  mp_conn *c = (mp_conn *)mt_checkobject(L, 1, &CONN_KEY, "Connection");
  conn_release(c);
  return 0;
}

static int conn_fileno(lua_State *L) {
  mp_conn *c = conn_check(L);
  lua_pushinteger(L, c->rfd >= 0 ? c->rfd : c->wfd);
  return 1;
}

static int conn_field(lua_State *L, int which) {
  mp_conn *c = (mp_conn *)mt_checkobject(L, 1, &CONN_KEY, "Connection");
  lua_pushboolean(L, which == 0 ? c->closed : which == 1 ? c->rfd >= 0 : c->wfd >= 0);
  return 1;
}

/* computed fields closed/readable/writable, as Python's properties */
static int conn_getattr(lua_State *L) {
  const char *k = lua_tostring(L, 2);
  if (k == NULL) return 0;
  if (strcmp(k, "closed") == 0) return conn_field(L, 0);
  if (strcmp(k, "readable") == 0) return conn_field(L, 1);
  if (strcmp(k, "writable") == 0) return conn_field(L, 2);
  return 0;
}

static int conn_enter(lua_State *L) {
  lua_settop(L, 1);
  return 1;
}

static int conn_tostring(lua_State *L) {
  mp_conn *c = (mp_conn *)mt_toobject(L, 1, &CONN_KEY);
  lua_pushfstring(L, "<multiprocessing.connection.Connection object at %p%s>",
                  lua_topointer(L, 1), c && c->closed ? " (closed)" : "");
  return 1;
}

static const luaL_Reg conn_methods[] = {
  {"send", conn_send},
  {"recv", conn_recv},
  {"send_bytes", conn_send_bytes},
  {"recv_bytes", conn_recv_bytes},
  {"poll", conn_poll},
  {"close", conn_close},
  {"fileno", conn_fileno},
  {"__getattr__", conn_getattr},
  {"__enter__", conn_enter},
  {"__exit__", conn_close},
  {"__tostring", conn_tostring},
  {NULL, NULL}
};

static void conn_new(lua_State *L, int rfd, int wfd) {
  lua_newtable(L);
  mt_push_class(L, "multiprocessing.Connection");
  lua_setmetatable(L, -2);
  mp_conn *c = (mp_conn *)mt_newobject(L, -1, &CONN_KEY, sizeof(mp_conn));
  c->rfd = rfd;
  c->wfd = wfd;
  lua_rawgetp(L, -1, &CONN_KEY);
  luaL_setmetatable(L, CONN_MT);
  lua_pop(L, 1);
}

static void set_nonblocking(int fd) {
  int fl = fcntl(fd, F_GETFL);
  if (fl >= 0) fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

/* Pipe(duplex=true) -> conn1, conn2 (one-way: conn1 reads, conn2 writes) */
static int mp_pipe(lua_State *L) {
  int duplex = 1, fds[2];
  if (lua_istable(L, 1)) duplex = mt_opt_boolean(L, 2, 1, "duplex", 1);
  else if (!lua_isnoneornil(L, 1)) duplex = lua_toboolean(L, 1);
  int r = duplex ? socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds)
                 : pipe2(fds, O_CLOEXEC);
  if (r != 0) return mt_raise(L, "OSError", "[Errno %d] Pipe(): %s", errno, strerror(errno));
  set_nonblocking(fds[0]);
  set_nonblocking(fds[1]);
  if (duplex) { conn_new(L, fds[0], fds[0]); conn_new(L, fds[1], fds[1]); }
  else { conn_new(L, fds[0], -1); conn_new(L, -1, fds[1]); }
  return 2;
}

/* ------------------------------------------------------------- module */

static const luaL_Reg mp_funcs[] = {
  {"fork", mp_fork},
  {"pidfd", mp_pidfd},
  {"wait", mp_wait},
  {"kill", mp_kill},
  {"close_fd", mp_close_fd},
  {"_exit", mp_exit},
  {"atexit", mp_atexit},
  {"signal_name", mp_signal_name},
  {"Pipe", mp_pipe},
  {NULL, NULL}
};

int luaopen_mt_multiprocessing(lua_State *L) {
  signal(SIGPIPE, SIG_IGN);   /* a closed reader is an error, not death */
  if (luaL_newmetatable(L, CONN_MT)) {
    lua_pushcfunction(L, conn_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_pop(L, 1);
  luaL_newlib(L, mp_funcs);
  mt_newclass(L, "Connection", conn_methods);
  mt_register_class(L, "multiprocessing.Connection", -1);
  lua_setfield(L, -2, "Connection");
  lua_pushinteger(L, SIGTERM);
  lua_setfield(L, -2, "SIGTERM");
  lua_pushinteger(L, SIGKILL);
  lua_setfield(L, -2, "SIGKILL");
  return 1;
}
