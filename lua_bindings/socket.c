/*
** socket.c -- the `socket` module: Python's socket subset (TCP and UDP
** over IPv4/IPv6, Unix sockets), name resolution, and the class
** socket.socket, a prelude class whose instances are tables holding
** the C state (so scripts subclass it as in Python).
**
** Every fd is non-blocking and close-on-exec.  A call tries its syscall
** with the GIL held (no GIL traffic when data is already there); on
** EAGAIN it waits for readiness: on the gevent hub when the coroutine
** binding's greenlet_wait_fd hook takes the wait (a greenlet under
** monkey patching, or any greenlet for a gevent.socket), otherwise with
** poll() and the GIL released -- in 50 ms slices in the main thread so
** that Ctrl-C is noticed.  The socket's timeout is a deadline for the
** whole call (sendall included), as in CPython.
**
** SIGPIPE: every send uses MSG_NOSIGNAL, and loading the module ignores
** SIGPIPE when it is at its default (CPython ignores it at startup), so
** a peer that went away gives BrokenPipeError, never a dead process.
*/
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netdb.h>
#include <poll.h>
#include <signal.h>
#include <stddef.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/un.h>

#include "mt_core.h"

typedef struct sk_sock {
  int fd;            /* -1 once closed (or detached) */
  int family, type, proto;
  double timeout;    /* < 0: none (blocking); 0: non-blocking; > 0: seconds */
  int gevent;        /* a gevent.socket: waits always switch greenlets */
  int read_waits;    /* reads had to wait lately: wait before reading */
} sk_sock;

typedef union sk_addr {
  struct sockaddr sa;
  struct sockaddr_in in;
  struct sockaddr_in6 in6;
  struct sockaddr_un un;
  struct sockaddr_storage ss;
} sk_addr;

static const char SOCK_KEY = 'S';             /* the C state in an instance */
static const char STATE_MT[] = "mtlua.socket_state";    /* closes at __gc */
static const char CLASS_KEY[] = "mtlua.socket_class";   /* socket.socket */
static const char DEFTIMEOUT_KEY[] = "mtlua.socket_defaulttimeout";

#define SK_SLICE_MS 50   /* main-thread poll slice: Ctrl-C latency */

/* ------------------------------------------------------------ errors */

static int sk_raise_errno(lua_State *L, int err) {
  return mt_raise_oserror(L, err);
}

static int sk_raise_timeout(lua_State *L) {
  return mt_raise(L, "TimeoutError", "timed out");
}

static int sk_raise_gai(lua_State *L, int code) {
  if (code == EAI_SYSTEM) return sk_raise_errno(L, errno);
  return mt_raise_errno(L, "socket.gaierror", code, gai_strerror(code));
}

/* ------------------------------------------------------------- state */

/* None (nil) when blocking, as Python's sock.timeout. */
static void sk_publish_timeout(lua_State *L, int selfidx, const sk_sock *s) {
  selfidx = lua_absindex(L, selfidx);
  if (s->timeout < 0) lua_pushnil(L);
  else lua_pushnumber(L, s->timeout);
  lua_setfield(L, selfidx, "timeout");
}

/* Every close of a socket's fd tells the hub first (its waits on the
** fd were made with MT_FD_KEEP: it may still watch it). */
static void sk_forget(lua_State *L, int fd) {
  mt_universe *U = mt_universe_of(L);
  if (U->greenlet_cancel_fd != NULL) U->greenlet_cancel_fd(L, fd);
}

static int state_gc(lua_State *L) {
  sk_sock *s = (sk_sock *)lua_touserdata(L, 1);
  if (s->fd >= 0) { sk_forget(L, s->fd); close(s->fd); s->fd = -1; }
  return 0;
}

/* Gives the instance at selfidx a fresh, closed C state. */
static sk_sock *sk_newstate(lua_State *L, int selfidx) {
  selfidx = lua_absindex(L, selfidx);
  sk_sock *s = (sk_sock *)lua_newuserdatauv(L, sizeof *s, 0);
  memset(s, 0, sizeof *s);
  s->fd = -1;
  s->family = AF_INET;
  s->type = SOCK_STREAM;
  s->proto = 0;
  s->timeout = -1;
  s->gevent = 0;
  luaL_setmetatable(L, STATE_MT);
  lua_rawsetp(L, selfidx, &SOCK_KEY);
  return s;
}

/* sock.family, .type, .proto and .timeout are plain fields of the
** instance, copied from the C state whenever it changes: a computed
** __getattr__ would put a Lua call into every method lookup (the
** class's __index becomes a function), a sixth of an echo loop's
** user-space time.  Python makes them read-only; here writing them
** changes nothing but the field. */
static void sk_publish(lua_State *L, int selfidx, const sk_sock *s) {
  selfidx = lua_absindex(L, selfidx);
  lua_pushinteger(L, s->family);
  lua_setfield(L, selfidx, "family");
  lua_pushinteger(L, s->type);
  lua_setfield(L, selfidx, "type");
  lua_pushinteger(L, s->proto);
  lua_setfield(L, selfidx, "proto");
  sk_publish_timeout(L, selfidx, s);
}

static sk_sock *sk_check(lua_State *L) {
  return (sk_sock *)mt_checkobject(L, 1, &SOCK_KEY, "socket");
}

/* The state of an open socket: a closed one raises OSError EBADF. */
static sk_sock *sk_checkopen(lua_State *L) {
  sk_sock *s = sk_check(L);
  if (s->fd < 0) sk_raise_errno(L, EBADF);
  return s;
}

static double default_timeout(lua_State *L) {
  lua_getfield(L, LUA_REGISTRYINDEX, DEFTIMEOUT_KEY);
  double t = lua_isnumber(L, -1) ? lua_tonumber(L, -1) : -1;
  lua_pop(L, 1);
  return t;
}

static int set_nonblock_cloexec(int fd) {
  int fl = fcntl(fd, F_GETFL);
  if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) return -1;
  fl = fcntl(fd, F_GETFD);
  if (fl < 0 || fcntl(fd, F_SETFD, fl | FD_CLOEXEC) < 0) return -1;
  return 0;
}

/* Makes an instance of the class at clsidx without calling __init__
** (as accept() does in CPython), with a closed state to fill in. */
static sk_sock *sk_pushnew(lua_State *L, int clsidx, const sk_sock *like) {
  clsidx = lua_absindex(L, clsidx);
  lua_createtable(L, 0, 1);
  lua_pushvalue(L, clsidx);
  lua_setmetatable(L, -2);
  sk_sock *s = sk_newstate(L, -1);
  if (like) {
    s->family = like->family;
    s->type = like->type;
    s->proto = like->proto;
    s->gevent = like->gevent;
  }
  s->timeout = default_timeout(L);
  if (lua_getfield(L, -1, "_gevent") != LUA_TNIL) s->gevent = lua_toboolean(L, -1);
  lua_pop(L, 1);
  sk_publish(L, -1, s);
  return s;
}

/* The class accepted and created sockets get: the instance's
** '_accept_class' (gevent.socket sets it) or socket.socket. */
static void push_accept_class(lua_State *L, int selfidx) {
  if (lua_getfield(L, selfidx, "_accept_class") == LUA_TTABLE) return;
  lua_pop(L, 1);
  lua_getfield(L, LUA_REGISTRYINDEX, CLASS_KEY);
}

/* ------------------------------------------------------------ waiting */

/* poll() with the GIL released until fd is ready, the deadline passes
** or (main thread) Ctrl-C.  No Lua between begin and end. */
static int sk_poll(lua_State *L, int fd, int events, double deadline) {
  mt_thread *t = mt_self(L);
  int is_main = t != NULL && t->is_main;
  struct pollfd p;
  int result = MT_WOKEN;
  p.fd = fd;
  p.events = (short)events;
  mt_blocking_begin(L);
  for (;;) {
    int ms = -1;
    if (deadline >= 0) {
      double left = deadline - mt_monotonic();
      if (left <= 0) { result = MT_TIMEDOUT; break; }
      ms = (int)ceil(left * 1000);
    }
    if (is_main) {
      if (atomic_load(&t->interrupt)) { result = MT_INTERRUPTED; break; }
      if (ms < 0 || ms > SK_SLICE_MS) ms = SK_SLICE_MS;
    }
    p.revents = 0;
    int n = poll(&p, 1, ms);
    if (n > 0) break;
    if (n < 0 && errno != EINTR) break;   /* the retried call reports it */
  }
  mt_blocking_end(L);
  return result;
}

/* Waits until the socket is ready for 'events'; returns MT_WOKEN or
** MT_TIMEDOUT.  Raises KeyboardInterrupt on Ctrl-C, and EBADF when the
** socket was closed meanwhile (by another thread or greenlet). */
static int sk_wait(lua_State *L, sk_sock *s, int events, double deadline) {
  mt_universe *U = mt_universe_of(L);
  int r = -1;
  if (U->greenlet_wait_fd != NULL)
    r = U->greenlet_wait_fd(L, s->fd, events, deadline,
                            MT_FD_KEEP | (s->gevent ? MT_FD_FORCE : 0));
  if (r < 0) r = sk_poll(L, s->fd, events, deadline);
  if (r == MT_INTERRUPTED) { mt_check_interrupt(L); r = MT_WOKEN; }
  if (s->fd < 0) sk_raise_errno(L, EBADF);
  return r;
}

static double sk_deadline(sk_sock *s) {
  return s->timeout > 0 ? mt_deadline_after(s->timeout) : -1;
}

/* One non-blocking syscall on fd: returns >= 0 or -1 (errno).  It may
** run without the GIL, so it gets the fd, not the socket. */
typedef ssize_t (*sk_op)(int fd, void *arg);

/* A write runs with the GIL released, as in CPython: a peer it wakes
** can take the GIL at once instead of waking only to wait for it (on
** one CPU that halves the context switches of a ping-pong).  With one
** OS thread in the universe nobody can take it: the non-blocking
** syscall then runs with the GIL kept, saving two mutex round trips.
** (A host thread entering through mtlua_gil_ensure just waits until
** the next real wait, one syscall later.) */
static ssize_t run_op(lua_State *L, sk_sock *s, int events, sk_op op, void *arg) {
  ssize_t r;
  int fd = s->fd, err;
  if (events == POLLIN || mt_universe_of(L)->nthreads <= 1) return op(fd, arg);
  mt_blocking_begin(L);
  r = op(fd, arg);
  err = errno;
  mt_blocking_end(L);
  errno = err;
  return r;
}

/* CPython's sock_call: runs op until it does not say EAGAIN, waiting
** for readiness in between.  Reads try first while data keeps coming,
** but on a socket whose reads had to wait (a request/response peer)
** they wait first, saving the syscall bound to fail -- CPython always
** waits first on a socket with a timeout.  'full': a read of that many
** bytes means more is probably queued.  Errors raise OSError (its
** subclass). */
static ssize_t sk_call(lua_State *L, sk_sock *s, int events, sk_op op,
                       void *arg, double deadline, size_t full) {
  if (events == POLLIN && s->read_waits && s->timeout != 0) {
    if (sk_wait(L, s, events, deadline) == MT_TIMEDOUT) sk_raise_timeout(L);
  }
  for (;;) {
    ssize_t r = run_op(L, s, events, op, arg);
    if (r >= 0) {
      if (full > 0 && (size_t)r >= full) s->read_waits = 0;
      return r;
    }
    int err = errno;
    if (s->fd < 0) sk_raise_errno(L, EBADF);   /* closed meanwhile */
    if (err == EINTR) { mt_check_interrupt(L); continue; }
    if (events == POLLIN) s->read_waits = 1;
    if (err != EAGAIN && err != EWOULDBLOCK) sk_raise_errno(L, err);
    if (s->timeout == 0) sk_raise_errno(L, err);   /* BlockingIOError */
    if (sk_wait(L, s, events, deadline) == MT_TIMEDOUT) sk_raise_timeout(L);
  }
}

/* --------------------------------------------------------- addresses */

/* Resolves host for 'family' into a (port-less) address: "" is any,
** "<broadcast>" the broadcast address, numbers are parsed here, names
** go to getaddrinfo with the GIL released. */
static void sk_sethost(lua_State *L, const char *host, int family, sk_addr *a) {
  memset(a, 0, sizeof *a);
  a->sa.sa_family = (sa_family_t)family;
  if (family == AF_INET) {
    if (*host == '\0') { a->in.sin_addr.s_addr = htonl(INADDR_ANY); return; }
    if (strcmp(host, "<broadcast>") == 0) { a->in.sin_addr.s_addr = htonl(INADDR_BROADCAST); return; }
    if (inet_pton(AF_INET, host, &a->in.sin_addr) == 1) return;
  } else {
    if (*host == '\0') { a->in6.sin6_addr = in6addr_any; return; }
    if (strchr(host, '%') == NULL && inet_pton(AF_INET6, host, &a->in6.sin6_addr) == 1) return;
  }
  struct addrinfo hints, *res = NULL;
  memset(&hints, 0, sizeof hints);
  hints.ai_family = family;
  mt_blocking_begin(L);
  int rc = getaddrinfo(host, NULL, &hints, &res);
  mt_blocking_end(L);
  if (rc != 0) sk_raise_gai(L, rc);
  if (res->ai_addrlen <= sizeof *a) memcpy(a, res->ai_addr, res->ai_addrlen);
  freeaddrinfo(res);
}

static int get_port(lua_State *L, int tidx, const char *fname) {
  int isnum;
  lua_geti(L, tidx, 2);
  lua_Integer port = lua_tointegerx(L, -1, &isnum);
  if (!isnum) {
    mt_raise(L, "TypeError", "%s(): port must be an integer, not %s", fname, luaL_typename(L, -1));
  }
  if (port < 0 || port > 65535) mt_raise(L, "OverflowError", "%s(): port must be 0-65535.", fname);
  lua_pop(L, 1);
  return (int)port;
}

static lua_Integer get_opt_int(lua_State *L, int tidx, int i, const char *fname, const char *what) {
  lua_Integer v = 0;
  int isnum;
  if (lua_geti(L, tidx, i) != LUA_TNIL) {
    v = lua_tointegerx(L, -1, &isnum);
    if (!isnum) mt_raise(L, "TypeError", "%s(): %s must be an integer", fname, what);
  }
  lua_pop(L, 1);
  return v;
}

/* The socket address at idx ({host, port}, {host, port, flowinfo,
** scope_id} or a path) for a socket of 'family'; returns its length. */
static socklen_t sk_getaddr(lua_State *L, int family, int idx, sk_addr *a, const char *fname) {
  idx = lua_absindex(L, idx);
  if (family == AF_UNIX) {
    size_t len;
    if (lua_type(L, idx) != LUA_TSTRING)
      mt_raise(L, "TypeError", "%s(): AF_UNIX address must be a string, not %s", fname, luaL_typename(L, idx));
    const char *path = lua_tolstring(L, idx, &len);
    if (len >= sizeof a->un.sun_path) sk_raise_errno(L, ENAMETOOLONG);
    memset(a, 0, sizeof *a);
    a->un.sun_family = AF_UNIX;
    memcpy(a->un.sun_path, path, len);
    /* an abstract name (leading NUL) has no terminator */
    return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + (len > 0 && path[0] != '\0'));
  }
  if (family != AF_INET && family != AF_INET6)
    mt_raise(L, "OSError", "%s(): unsupported address family %d", fname, family);
  if (lua_type(L, idx) != LUA_TTABLE)
    mt_raise(L, "TypeError", "%s(): %s address must be a {host, port} table, not %s", fname,
             family == AF_INET ? "AF_INET" : "AF_INET6", luaL_typename(L, idx));
  if (lua_geti(L, idx, 1) != LUA_TSTRING)
    mt_raise(L, "TypeError", "%s(): host must be a string, not %s", fname, luaL_typename(L, -1));
  int port = get_port(L, idx, fname);
  if (family == AF_INET6) {
    lua_Integer flow = get_opt_int(L, idx, 3, fname, "flowinfo");
    lua_Integer scope = get_opt_int(L, idx, 4, fname, "scope_id");
    if (flow < 0 || flow > 0xfffff) mt_raise(L, "OverflowError", "%s(): flowinfo must be 0-1048575.", fname);
    sk_sethost(L, lua_tostring(L, -1), AF_INET6, a);
    a->in6.sin6_port = htons((uint16_t)port);
    a->in6.sin6_flowinfo = htonl((uint32_t)flow);
    if (scope != 0) a->in6.sin6_scope_id = (uint32_t)scope;
    lua_pop(L, 1);
    return sizeof a->in6;
  }
  sk_sethost(L, lua_tostring(L, -1), AF_INET, a);
  a->in.sin_port = htons((uint16_t)port);
  lua_pop(L, 1);
  return sizeof a->in;
}

/* Pushes an address as Python gives it: {host, port}, {host, port,
** flowinfo, scope_id} for IPv6, a path string for AF_UNIX. */
static void sk_pushaddr(lua_State *L, const sk_addr *a, socklen_t len) {
  char buf[INET6_ADDRSTRLEN];
  switch (len == 0 ? AF_UNSPEC : a->sa.sa_family) {
    case AF_INET:
      inet_ntop(AF_INET, &a->in.sin_addr, buf, sizeof buf);
      lua_createtable(L, 2, 0);
      lua_pushstring(L, buf);
      lua_rawseti(L, -2, 1);
      lua_pushinteger(L, ntohs(a->in.sin_port));
      lua_rawseti(L, -2, 2);
      return;
    case AF_INET6:
      inet_ntop(AF_INET6, &a->in6.sin6_addr, buf, sizeof buf);
      lua_createtable(L, 4, 0);
      lua_pushstring(L, buf);
      lua_rawseti(L, -2, 1);
      lua_pushinteger(L, ntohs(a->in6.sin6_port));
      lua_rawseti(L, -2, 2);
      lua_pushinteger(L, ntohl(a->in6.sin6_flowinfo));
      lua_rawseti(L, -2, 3);
      lua_pushinteger(L, a->in6.sin6_scope_id);
      lua_rawseti(L, -2, 4);
      return;
    case AF_UNIX: {
      size_t n = len - offsetof(struct sockaddr_un, sun_path);
      if (len <= offsetof(struct sockaddr_un, sun_path)) n = 0;
      else if (a->un.sun_path[0] != '\0') n = strnlen(a->un.sun_path, n);
      lua_pushlstring(L, a->un.sun_path, n);
      return;
    }
    default:
      lua_pushnil(L);
  }
}

/* ------------------------------------------------------ construction */

static int checkint_arg(lua_State *L, int idx, const char *fname, const char *arg, int def) {
  int isnum;
  if (lua_isnoneornil(L, idx)) return def;
  lua_Integer v = lua_tointegerx(L, idx, &isnum);
  if (!isnum || lua_type(L, idx) != LUA_TNUMBER)
    return mt_argtype_error(L, idx, fname, arg, "an integer");
  if (v < -1 || v > 0x7fffffff) mt_raise(L, "OverflowError", "%s() argument '%s' out of range", fname, arg);
  return (int)v;
}

/* Python-call form: socket{family, type, proto, fileno} or named
** fields; rewrites the stack to self, family, type, proto, fileno. */
static void init_call_form(lua_State *L) {
  static const char *const names[] = {"family", "type", "proto", "fileno"};
  if (lua_type(L, 2) != LUA_TTABLE || lua_getmetatable(L, 2)) {
    if (lua_type(L, 2) == LUA_TTABLE) lua_pop(L, 1);
    lua_settop(L, 5);
    return;
  }
  lua_settop(L, 2);
  for (int i = 0; i < 4; i++) {
    if (lua_getfield(L, 2, names[i]) == LUA_TNIL) { lua_pop(L, 1); lua_geti(L, 2, i + 1); }
  }
  lua_remove(L, 2);
  lua_settop(L, 5);
}

static int sockopt_int(int fd, int opt, int def) {
  int v;
  socklen_t len = sizeof v;
  return getsockopt(fd, SOL_SOCKET, opt, &v, &len) == 0 ? v : def;
}

/* socket(family=AF_INET, type=SOCK_STREAM, proto=0, fileno=nil) */
static int sk_init(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  init_call_form(L);
  int fileno = checkint_arg(L, 5, "socket", "fileno", -1);
  int family = checkint_arg(L, 2, "socket", "family", fileno >= 0 ? -1 : AF_INET);
  int type = checkint_arg(L, 3, "socket", "type", fileno >= 0 ? -1 : SOCK_STREAM);
  int proto = checkint_arg(L, 4, "socket", "proto", fileno >= 0 ? -1 : 0);
  sk_sock *s = mt_toobject(L, 1, &SOCK_KEY);
  if (s != NULL && s->fd >= 0) {   /* re-__init__ */
    sk_forget(L, s->fd);
    close(s->fd);
    s->fd = -1;
  }
  s = sk_newstate(L, 1);
  s->timeout = default_timeout(L);
  if (lua_getfield(L, 1, "_gevent") != LUA_TNIL) s->gevent = lua_toboolean(L, -1);
  lua_pop(L, 1);
  if (type >= 0 && (type & SOCK_NONBLOCK)) s->timeout = 0;
  if (fileno >= 0) {   /* wrap an existing fd: ask it what it is */
    if (set_nonblock_cloexec(fileno) < 0) sk_raise_errno(L, errno);
    s->fd = fileno;
    s->family = family >= 0 ? family : sockopt_int(fileno, SO_DOMAIN, AF_INET);
    s->type = type >= 0 ? type : sockopt_int(fileno, SO_TYPE, SOCK_STREAM);
    s->proto = proto >= 0 ? proto : sockopt_int(fileno, SO_PROTOCOL, 0);
  } else {
    int fd = socket(family, type | SOCK_NONBLOCK | SOCK_CLOEXEC, proto);
    if (fd < 0) sk_raise_errno(L, errno);
    s->fd = fd;
    s->family = family;
    s->type = type;
    s->proto = proto;
  }
  s->type &= ~(SOCK_NONBLOCK | SOCK_CLOEXEC);
  sk_publish(L, 1, s);
  return 0;
}

/* ----------------------------------------------------------- methods */

static int sk_close(lua_State *L) {
  sk_sock *s = sk_check(L);
  if (s->fd >= 0) {
    int fd = s->fd;
    s->fd = -1;
    sk_forget(L, fd);
    /* ECONNRESET on close is not an error for the caller (CPython) */
    if (close(fd) < 0 && errno != ECONNRESET && errno != EINTR) sk_raise_errno(L, errno);
  }
  return 0;
}

static int sk_detach(lua_State *L) {
  sk_sock *s = sk_check(L);
  lua_pushinteger(L, s->fd);
  if (s->fd >= 0) sk_forget(L, s->fd);   /* whoever gets it may close it */
  s->fd = -1;
  return 1;
}

static int sk_fileno(lua_State *L) {
  lua_pushinteger(L, sk_check(L)->fd);
  return 1;
}

static int sk_enter(lua_State *L) {
  sk_check(L);
  lua_settop(L, 1);
  return 1;
}

static int sk_exit(lua_State *L) {
  lua_settop(L, 1);
  return sk_close(L);
}

static int sk_bind(lua_State *L) {
  sk_sock *s = sk_checkopen(L);
  sk_addr a;
  socklen_t len = sk_getaddr(L, s->family, 2, &a, "bind");
  if (bind(s->fd, &a.sa, len) < 0) sk_raise_errno(L, errno);
  return 0;
}

static int sk_listen(lua_State *L) {
  sk_sock *s = sk_checkopen(L);
  int backlog = checkint_arg(L, 2, "listen", "backlog", SOMAXCONN < 128 ? SOMAXCONN : 128);
  if (backlog < 0) backlog = 0;
  if (listen(s->fd, backlog) < 0) sk_raise_errno(L, errno);
  return 0;
}

typedef struct accept_arg {
  sk_addr addr;
  socklen_t len;
} accept_arg;

static ssize_t op_accept(int fd, void *arg) {
  accept_arg *a = arg;
  a->len = sizeof a->addr;
  return accept4(fd, &a->addr.sa, &a->len, SOCK_NONBLOCK | SOCK_CLOEXEC);
}

/* accept() -> conn, address */
static int sk_accept(lua_State *L) {
  sk_sock *s = sk_checkopen(L);
  accept_arg a;
  push_accept_class(L, 1);
  sk_sock *c = sk_pushnew(L, -1, s);   /* before the fd exists: no leak */
  c->fd = (int)sk_call(L, s, POLLIN, op_accept, &a, sk_deadline(s), 0);
  sk_pushaddr(L, &a.addr, a.len);
  return 2;
}

/* Connects; returns 0 or the errno (raising only for timeouts when
** 'raise' is set, and for bad arguments). */
static int sk_do_connect(lua_State *L, sk_sock *s, const sk_addr *a, socklen_t len, int raise) {
  int r = connect(s->fd, &a->sa, len);
  if (r == 0) return 0;
  int err = errno;
  if (err != EINPROGRESS && err != EINTR) return err;
  if (s->timeout == 0) return err;
  if (sk_wait(L, s, POLLOUT, sk_deadline(s)) == MT_TIMEDOUT) {
    if (raise) sk_raise_timeout(L);
    return EWOULDBLOCK;
  }
  socklen_t elen = sizeof err;
  if (getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &elen) < 0) err = errno;
  return err;
}

static int sk_connect(lua_State *L) {
  sk_sock *s = sk_checkopen(L);
  sk_addr a;
  socklen_t len = sk_getaddr(L, s->family, 2, &a, "connect");
  int err = sk_do_connect(L, s, &a, len, 1);
  if (err != 0) sk_raise_errno(L, err);
  return 0;
}

static int sk_connect_ex(lua_State *L) {
  sk_sock *s = sk_checkopen(L);
  sk_addr a;
  socklen_t len = sk_getaddr(L, s->family, 2, &a, "connect_ex");
  lua_pushinteger(L, sk_do_connect(L, s, &a, len, 0));
  return 1;
}

static int opt_flags(lua_State *L, int idx, const char *fname) {
  return checkint_arg(L, idx, fname, "flags", 0);
}

static size_t check_bufsize(lua_State *L, int idx, const char *fname) {
  int isnum;
  lua_Integer n = lua_tointegerx(L, idx, &isnum);
  if (!isnum || lua_type(L, idx) != LUA_TNUMBER)
    mt_argtype_error(L, idx, fname, "bufsize", "an integer");
  if (n < 0) mt_raise(L, "ValueError", "negative buffersize in %s", fname);
  if (n > 0x7fffffff) mt_raise(L, "OverflowError", "%s(): bufsize too large", fname);
  return (size_t)n;
}

static const char *check_data(lua_State *L, int idx, size_t *len, const char *fname) {
  if (lua_type(L, idx) != LUA_TSTRING)
    mt_argtype_error(L, idx, fname, "data", "a string");
  return lua_tolstring(L, idx, len);
}

typedef struct io_arg {
  char *buf;
  size_t len;
  int flags;
  sk_addr addr;        /* recvfrom, sendto */
  socklen_t addrlen;
} io_arg;

static ssize_t op_recv(int fd, void *arg) {
  io_arg *a = arg;
  return recv(fd, a->buf, a->len, a->flags);
}

static ssize_t op_recvfrom(int fd, void *arg) {
  io_arg *a = arg;
  a->addrlen = sizeof a->addr;
  return recvfrom(fd, a->buf, a->len, a->flags, &a->addr.sa, &a->addrlen);
}

static ssize_t op_send(int fd, void *arg) {
  io_arg *a = arg;
  return send(fd, a->buf, a->len, a->flags | MSG_NOSIGNAL);
}

static ssize_t op_sendto(int fd, void *arg) {
  io_arg *a = arg;
  return sendto(fd, a->buf, a->len, a->flags | MSG_NOSIGNAL, &a->addr.sa, a->addrlen);
}

/* recv(bufsize, flags=0) -> string ("" at end of stream) */
/* reads of up to this many bytes land in a buffer on the C stack and
** are copied once into the string: a recv(4096) loop otherwise makes
** and collects a 4 KiB heap buffer per call */
#define SK_STACK_RECV 16384

static int sk_recv(lua_State *L) {
  sk_sock *s = sk_checkopen(L);
  size_t n = check_bufsize(L, 2, "recv");
  io_arg a;
  luaL_Buffer b;
  a.flags = opt_flags(L, 3, "recv");
  if (n == 0) { lua_pushliteral(L, ""); return 1; }   /* as CPython: no syscall */
  a.len = n;
  if (n <= SK_STACK_RECV) {   /* the common small read: no heap buffer */
    char buf[SK_STACK_RECV];
    a.buf = buf;
    lua_pushlstring(L, buf, (size_t)sk_call(L, s, POLLIN, op_recv, &a, sk_deadline(s), n));
    return 1;
  }
  a.buf = luaL_buffinitsize(L, &b, n);
  luaL_pushresultsize(&b, (size_t)sk_call(L, s, POLLIN, op_recv, &a, sk_deadline(s), n));
  return 1;
}

/* recvfrom(bufsize, flags=0) -> data, address */
static int sk_recvfrom(lua_State *L) {
  sk_sock *s = sk_checkopen(L);
  size_t n = check_bufsize(L, 2, "recvfrom");
  io_arg a;
  luaL_Buffer b;
  a.flags = opt_flags(L, 3, "recvfrom");
  a.len = n;
  a.buf = luaL_buffinitsize(L, &b, n);
  ssize_t got = sk_call(L, s, POLLIN, op_recvfrom, &a, sk_deadline(s), n);
  luaL_pushresultsize(&b, (size_t)got);
  sk_pushaddr(L, &a.addr, a.addrlen);
  return 2;
}

/* send(data, flags=0) -> bytes sent */
static int sk_send(lua_State *L) {
  sk_sock *s = sk_checkopen(L);
  io_arg a;
  a.buf = (char *)check_data(L, 2, &a.len, "send");
  a.flags = opt_flags(L, 3, "send");
  lua_pushinteger(L, (lua_Integer)sk_call(L, s, POLLOUT, op_send, &a, sk_deadline(s), 0));
  return 1;
}

/* sendall(data, flags=0): sends everything; the timeout bounds the
** whole call.  The string stays on the stack, so its bytes stay put
** while the GIL is released. */
static int sk_sendall(lua_State *L) {
  sk_sock *s = sk_checkopen(L);
  io_arg a;
  size_t len;
  const char *p = check_data(L, 2, &len, "sendall");
  double deadline = sk_deadline(s);
  a.flags = opt_flags(L, 3, "sendall");
  while (len > 0) {
    a.buf = (char *)p;
    a.len = len;
    size_t n = (size_t)sk_call(L, s, POLLOUT, op_send, &a, deadline, 0);
    p += n;
    len -= n;
    if (len > 0) mt_check_interrupt(L);
  }
  return 0;
}

/* sendto(data, address) or sendto(data, flags, address) -> bytes sent */
static int sk_sendto(lua_State *L) {
  sk_sock *s = sk_checkopen(L);
  io_arg a;
  int addridx = lua_gettop(L) >= 4 ? 4 : 3;
  a.buf = (char *)check_data(L, 2, &a.len, "sendto");
  a.flags = addridx == 4 ? opt_flags(L, 3, "sendto") : 0;
  if (lua_isnoneornil(L, addridx))
    return mt_raise(L, "TypeError", "sendto() takes 2 or 3 arguments (1 given)");
  a.addrlen = sk_getaddr(L, s->family, addridx, &a.addr, "sendto");
  lua_pushinteger(L, (lua_Integer)sk_call(L, s, POLLOUT, op_sendto, &a, sk_deadline(s), 0));
  return 1;
}

static int sk_shutdown(lua_State *L) {
  sk_sock *s = sk_checkopen(L);
  int how = checkint_arg(L, 2, "shutdown", "how", -2);
  if (how == -2) return mt_argtype_error(L, 2, "shutdown", "how", "an integer");
  if (shutdown(s->fd, how) < 0) sk_raise_errno(L, errno);
  return 0;
}

/* A timeout argument: nil (None) -> -1; a negative number -> ValueError. */
static double check_timeout(lua_State *L, int idx, const char *fname) {
  if (lua_isnoneornil(L, idx)) return -1;
  if (lua_type(L, idx) != LUA_TNUMBER)
    return mt_argtype_error(L, idx, fname, "value", "a number or nil");
  double t = lua_tonumber(L, idx);
  if (isnan(t)) mt_raise(L, "ValueError", "Invalid value NaN (not a number)");
  if (t < 0) mt_raise(L, "ValueError", "Timeout value out of range");
  return t;
}

static int sk_settimeout(lua_State *L) {
  sk_sock *s = sk_check(L);
  s->timeout = check_timeout(L, 2, "settimeout");
  sk_publish_timeout(L, 1, s);
  return 0;
}

static void push_timeout(lua_State *L, double t) {
  if (t < 0) lua_pushnil(L);
  else lua_pushnumber(L, t);
}

static int sk_gettimeout(lua_State *L) {
  push_timeout(L, sk_check(L)->timeout);
  return 1;
}

static int sk_setblocking(lua_State *L) {
  sk_sock *s = sk_check(L);
  if (lua_type(L, 2) != LUA_TBOOLEAN && lua_type(L, 2) != LUA_TNUMBER)
    return mt_argtype_error(L, 2, "setblocking", "flag", "a boolean");
  int on = lua_type(L, 2) == LUA_TNUMBER ? lua_tonumber(L, 2) != 0 : lua_toboolean(L, 2);
  s->timeout = on ? -1 : 0;
  sk_publish_timeout(L, 1, s);
  return 0;
}

static int sk_getblocking(lua_State *L) {
  lua_pushboolean(L, sk_checkopen(L)->timeout != 0);
  return 1;
}

/* setsockopt(level, option, value): value an integer, a boolean or a
** string of raw bytes (e.g. a packed struct linger). */
static int sk_setsockopt(lua_State *L) {
  sk_sock *s = sk_checkopen(L);
  int level = checkint_arg(L, 2, "setsockopt", "level", -2);
  int opt = checkint_arg(L, 3, "setsockopt", "option", -2);
  if (level == -2) return mt_argtype_error(L, 2, "setsockopt", "level", "an integer");
  if (opt == -2) return mt_argtype_error(L, 3, "setsockopt", "option", "an integer");
  int r, v;
  switch (lua_type(L, 4)) {
    case LUA_TBOOLEAN:
      v = lua_toboolean(L, 4);
      r = setsockopt(s->fd, level, opt, &v, sizeof v);
      break;
    case LUA_TNUMBER:
      if (!lua_isinteger(L, 4)) return mt_argtype_error(L, 4, "setsockopt", "value", "an integer");
      v = (int)lua_tointeger(L, 4);
      r = setsockopt(s->fd, level, opt, &v, sizeof v);
      break;
    case LUA_TSTRING: {
      size_t len;
      const char *p = lua_tolstring(L, 4, &len);
      r = setsockopt(s->fd, level, opt, p, (socklen_t)len);
      break;
    }
    default:
      return mt_argtype_error(L, 4, "setsockopt", "value", "an integer, boolean or string");
  }
  if (r < 0) sk_raise_errno(L, errno);
  return 0;
}

/* getsockopt(level, option, buflen?) -> integer, or raw bytes with buflen */
static int sk_getsockopt(lua_State *L) {
  sk_sock *s = sk_checkopen(L);
  int level = checkint_arg(L, 2, "getsockopt", "level", -2);
  int opt = checkint_arg(L, 3, "getsockopt", "option", -2);
  if (level == -2) return mt_argtype_error(L, 2, "getsockopt", "level", "an integer");
  if (opt == -2) return mt_argtype_error(L, 3, "getsockopt", "option", "an integer");
  if (lua_isnoneornil(L, 4)) {
    int v = 0;
    socklen_t len = sizeof v;
    if (getsockopt(s->fd, level, opt, &v, &len) < 0) sk_raise_errno(L, errno);
    lua_pushinteger(L, v);
    return 1;
  }
  int buflen = checkint_arg(L, 4, "getsockopt", "buflen", 0);
  if (buflen <= 0 || buflen > 1024) return mt_raise(L, "OSError", "getsockopt(): buflen out of range");
  char buf[1024];
  socklen_t len = (socklen_t)buflen;
  if (getsockopt(s->fd, level, opt, buf, &len) < 0) sk_raise_errno(L, errno);
  lua_pushlstring(L, buf, len);
  return 1;
}

/* getsockname() / getpeername() -> address */
static int push_name(lua_State *L, int (*get)(int, struct sockaddr *, socklen_t *)) {
  sk_sock *s = sk_checkopen(L);
  sk_addr a;
  socklen_t len = sizeof a;
  memset(&a, 0, sizeof a);
  if (get(s->fd, &a.sa, &len) < 0) sk_raise_errno(L, errno);
  sk_pushaddr(L, &a, len);
  return 1;
}

static int sk_getsockname(lua_State *L) { return push_name(L, getsockname); }
static int sk_getpeername(lua_State *L) { return push_name(L, getpeername); }

/* dup() -> a new socket on a duplicate of the fd */
static int sk_dup(lua_State *L) {
  sk_sock *s = sk_checkopen(L);
  push_accept_class(L, 1);
  sk_sock *c = sk_pushnew(L, -1, s);
  c->timeout = s->timeout;
  sk_publish_timeout(L, -1, c);
  c->fd = fcntl(s->fd, F_DUPFD_CLOEXEC, 0);
  if (c->fd < 0) sk_raise_errno(L, errno);
  return 1;
}

/* Adds ", name=addr" as Python's repr shows it (a path unquoted). */
static void add_repraddr(luaL_Buffer *b, const char *name, const sk_addr *a, socklen_t len) {
  char host[INET6_ADDRSTRLEN];
  char num[64];
  if (len == 0) return;
  switch (a->sa.sa_family) {
    case AF_INET:
      inet_ntop(AF_INET, &a->in.sin_addr, host, sizeof host);
      snprintf(num, sizeof num, "', %d)", ntohs(a->in.sin_port));
      break;
    case AF_INET6:
      inet_ntop(AF_INET6, &a->in6.sin6_addr, host, sizeof host);
      snprintf(num, sizeof num, "', %d, %u, %u)", ntohs(a->in6.sin6_port),
               (unsigned)ntohl(a->in6.sin6_flowinfo), (unsigned)a->in6.sin6_scope_id);
      break;
    case AF_UNIX: {
      size_t n = len > offsetof(struct sockaddr_un, sun_path) ? len - offsetof(struct sockaddr_un, sun_path) : 0;
      if (n == 0) return;
      luaL_addstring(b, ", ");
      luaL_addstring(b, name);
      luaL_addchar(b, '=');
      if (a->un.sun_path[0] != '\0') luaL_addlstring(b, a->un.sun_path, strnlen(a->un.sun_path, n));
      else luaL_addlstring(b, a->un.sun_path, n);
      return;
    }
    default:
      return;
  }
  luaL_addstring(b, ", ");
  luaL_addstring(b, name);
  luaL_addstring(b, "=('");
  luaL_addstring(b, host);
  luaL_addstring(b, num);
}

/* <socket.socket fd=3, family=2, type=1, proto=0, laddr=('127.0.0.1', 5000)> */
static int sk_tostring(lua_State *L) {
  sk_sock *s = sk_check(L);
  luaL_Buffer b;
  sk_addr a;
  socklen_t len;
  lua_getfield(L, 1, "__name__");
  const char *name = lua_isstring(L, -1) ? lua_tostring(L, -1) : "socket.socket";
  luaL_buffinit(L, &b);
  lua_pushfstring(L, "<%s %sfd=%d, family=%d, type=%d, proto=%d", name,
                  s->fd < 0 ? "[closed] " : "", s->fd, s->family, s->type, s->proto);
  luaL_addvalue(&b);
  if (s->fd >= 0) {
    len = sizeof a;
    if (getsockname(s->fd, &a.sa, &len) == 0) add_repraddr(&b, "laddr", &a, len);
    len = sizeof a;
    if (getpeername(s->fd, &a.sa, &len) == 0) add_repraddr(&b, "raddr", &a, len);
  }
  luaL_addchar(&b, '>');
  luaL_pushresult(&b);
  return 1;
}

static const luaL_Reg sk_methods[] = {
  {"__init__", sk_init},
  {"__tostring", sk_tostring},
  {"__enter__", sk_enter},
  {"__exit__", sk_exit},
  {"bind", sk_bind},
  {"listen", sk_listen},
  {"accept", sk_accept},
  {"connect", sk_connect},
  {"connect_ex", sk_connect_ex},
  {"recv", sk_recv},
  {"recvfrom", sk_recvfrom},
  {"send", sk_send},
  {"sendall", sk_sendall},
  {"sendto", sk_sendto},
  {"shutdown", sk_shutdown},
  {"close", sk_close},
  {"detach", sk_detach},
  {"dup", sk_dup},
  {"fileno", sk_fileno},
  {"settimeout", sk_settimeout},
  {"gettimeout", sk_gettimeout},
  {"setblocking", sk_setblocking},
  {"getblocking", sk_getblocking},
  {"setsockopt", sk_setsockopt},
  {"getsockopt", sk_getsockopt},
  {"getsockname", sk_getsockname},
  {"getpeername", sk_getpeername},
  {NULL, NULL}
};

/* ------------------------------------------------- module functions */

/* getaddrinfo with the GIL released; host and port may be nil.  The
** strings stay on the stack (anchored) while the GIL is away. */
static struct addrinfo *sk_resolve(lua_State *L, int hostidx, int portidx, int family,
                                   int type, int proto, int flags, const char *fname) {
  const char *host = NULL, *port = NULL;
  char portbuf[32];
  struct addrinfo hints, *res = NULL;
  if (!lua_isnoneornil(L, hostidx)) {
    if (lua_type(L, hostidx) != LUA_TSTRING)
      mt_argtype_error(L, hostidx, fname, "host", "a string or nil");
    host = lua_tostring(L, hostidx);
  }
  if (lua_type(L, portidx) == LUA_TNUMBER) {
    if (!lua_isinteger(L, portidx)) mt_argtype_error(L, portidx, fname, "port", "an integer, string or nil");
    snprintf(portbuf, sizeof portbuf, "%lld", (long long)lua_tointeger(L, portidx));
    port = portbuf;
  } else if (lua_type(L, portidx) == LUA_TSTRING) {
    port = lua_tostring(L, portidx);
  } else if (!lua_isnoneornil(L, portidx)) {
    mt_argtype_error(L, portidx, fname, "port", "an integer, string or nil");
  }
  memset(&hints, 0, sizeof hints);
  hints.ai_family = family;
  hints.ai_socktype = type;
  hints.ai_protocol = proto;
  hints.ai_flags = flags;
  mt_blocking_begin(L);
  int rc = getaddrinfo(host, port, &hints, &res);
  mt_blocking_end(L);
  if (rc != 0) sk_raise_gai(L, rc);
  return res;
}

/* Pushes getaddrinfo's list as Python gives it; frees it. */
static void push_addrinfo(lua_State *L, struct addrinfo *res) {
  int i = 0;
  lua_newtable(L);
  for (struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next) {
    lua_createtable(L, 5, 0);
    lua_pushinteger(L, ai->ai_family);
    lua_rawseti(L, -2, 1);
    lua_pushinteger(L, ai->ai_socktype);
    lua_rawseti(L, -2, 2);
    lua_pushinteger(L, ai->ai_protocol);
    lua_rawseti(L, -2, 3);
    lua_pushstring(L, ai->ai_canonname ? ai->ai_canonname : "");
    lua_rawseti(L, -2, 4);
    sk_pushaddr(L, (const sk_addr *)ai->ai_addr, ai->ai_addrlen);
    lua_rawseti(L, -2, 5);
    lua_rawseti(L, -2, ++i);
  }
}

/* getaddrinfo(host, port, family=0, type=0, proto=0, flags=0), or
** getaddrinfo(host, port, {family=, type=, proto=, flags=}) */
static int m_getaddrinfo(lua_State *L) {
  if (lua_type(L, 3) == LUA_TTABLE) {   /* trailing options */
    static const char *const names[] = {"family", "type", "proto", "flags"};
    lua_settop(L, 3);
    for (int i = 0; i < 4; i++) lua_getfield(L, 3, names[i]);
    lua_remove(L, 3);
  }
  int family = checkint_arg(L, 3, "getaddrinfo", "family", AF_UNSPEC);
  int type = checkint_arg(L, 4, "getaddrinfo", "type", 0);
  int proto = checkint_arg(L, 5, "getaddrinfo", "proto", 0);
  int flags = checkint_arg(L, 6, "getaddrinfo", "flags", 0);
  struct addrinfo *res = sk_resolve(L, 1, 2, family, type, proto, flags, "getaddrinfo");
  push_addrinfo(L, res);
  freeaddrinfo(res);
  return 1;
}

static int m_gethostname(lua_State *L) {
  char buf[256];
  if (gethostname(buf, sizeof buf) < 0) return sk_raise_errno(L, errno);
  buf[sizeof buf - 1] = '\0';
  lua_pushstring(L, buf);
  return 1;
}

/* gethostbyname(name) -> an IPv4 address string */
static int m_gethostbyname(lua_State *L) {
  sk_addr a;
  if (lua_type(L, 1) != LUA_TSTRING) return mt_argtype_error(L, 1, "gethostbyname", "hostname", "a string");
  sk_sethost(L, lua_tostring(L, 1), AF_INET, &a);
  char buf[INET_ADDRSTRLEN];
  inet_ntop(AF_INET, &a.in.sin_addr, buf, sizeof buf);
  lua_pushstring(L, buf);
  return 1;
}

static int m_getdefaulttimeout(lua_State *L) {
  push_timeout(L, default_timeout(L));
  return 1;
}

static int m_setdefaulttimeout(lua_State *L) {
  double t = check_timeout(L, 1, "setdefaulttimeout");
  lua_pushnumber(L, t);
  lua_setfield(L, LUA_REGISTRYINDEX, DEFTIMEOUT_KEY);
  return 0;
}

/* The class bound to a module function (upvalue 1). */
#define CLASS_UPV lua_upvalueindex(1)

/* create_connection({host, port}, timeout?, source_address?), also
** create_connection(addr, {timeout=, source_address=}): tries every
** address of the host in turn, as CPython does. */
static int m_create_connection(lua_State *L) {
  double timeout;
  if (lua_type(L, 2) == LUA_TTABLE) {   /* trailing options */
    lua_settop(L, 2);
    lua_getfield(L, 2, "timeout");
    timeout = lua_isnil(L, 3) ? default_timeout(L) : check_timeout(L, 3, "create_connection");
    lua_pop(L, 1);
    lua_getfield(L, 2, "source_address");   /* 3 */
  } else {
    timeout = lua_isnone(L, 2) ? default_timeout(L) : check_timeout(L, 2, "create_connection");
  }
  if (lua_type(L, 1) != LUA_TTABLE)
    return mt_argtype_error(L, 1, "create_connection", "address", "a {host, port} table");
  lua_settop(L, 3);
  lua_geti(L, 1, 1);   /* 4: host */
  lua_geti(L, 1, 2);   /* 5: port */
  struct addrinfo *res = sk_resolve(L, 4, 5, AF_UNSPEC, SOCK_STREAM, 0, 0, "create_connection");
  /* copy the list to Lua-owned memory so that errors below cannot leak it */
  push_addrinfo(L, res);   /* 6 */
  freeaddrinfo(res);
  int n = (int)luaL_len(L, 6), lasterr = ECONNREFUSED;
  for (int i = 1; i <= n; i++) {
    lua_geti(L, 6, i);
    lua_geti(L, -1, 1);
    int family = (int)lua_tointeger(L, -1);
    lua_pop(L, 1);
    sk_sock *s = sk_pushnew(L, CLASS_UPV, NULL);   /* 8 */
    int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) { lasterr = errno; lua_pop(L, 2); continue; }
    s->fd = fd;
    s->family = family;
    s->timeout = timeout;
    sk_publish(L, -1, s);
    if (!lua_isnil(L, 3)) {
      sk_addr src;
      socklen_t slen = sk_getaddr(L, family, 3, &src, "create_connection");
      if (bind(fd, &src.sa, slen) < 0) sk_raise_errno(L, errno);
    }
    sk_addr a;
    lua_geti(L, 7, 5);
    socklen_t len = sk_getaddr(L, family, -1, &a, "create_connection");
    lua_pop(L, 1);
    int err = sk_do_connect(L, s, &a, len, 1);
    if (err == 0) return 1;
    lasterr = err;
    sk_forget(L, s->fd);
    close(s->fd);
    s->fd = -1;
    lua_pop(L, 2);
  }
  if (n == 0) return mt_raise(L, "OSError", "getaddrinfo returns an empty list");
  return sk_raise_errno(L, lasterr);
}

/* create_server({host, port}, {family=AF_INET, backlog=nil,
** reuse_port=false, dualstack_ipv6=false}): a bound, listening socket
** with SO_REUSEADDR (as CPython on POSIX). */
static int m_create_server(lua_State *L) {
  int family = AF_INET, backlog = -1, reuse_port = 0, dualstack = 0;
  if (lua_type(L, 2) == LUA_TTABLE) {
    lua_getfield(L, 2, "family");
    family = checkint_arg(L, -1, "create_server", "family", AF_INET);
    lua_getfield(L, 2, "backlog");
    backlog = checkint_arg(L, -1, "create_server", "backlog", -1);
    lua_getfield(L, 2, "reuse_port");
    reuse_port = lua_toboolean(L, -1);
    lua_getfield(L, 2, "dualstack_ipv6");
    dualstack = lua_toboolean(L, -1);
    lua_pop(L, 4);
  } else if (!lua_isnoneornil(L, 2)) {
    return mt_argtype_error(L, 2, "create_server", "options", "a table");
  }
  if (dualstack && family != AF_INET6)
    return mt_raise(L, "ValueError", "create_server(): dualstack_ipv6 requires AF_INET6 family");
  lua_settop(L, 1);
  sk_sock *s = sk_pushnew(L, CLASS_UPV, NULL);   /* 2 */
  int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return sk_raise_errno(L, errno);
  s->fd = fd;
  s->family = family;
  sk_publish(L, -1, s);
  int on = 1;
  if (family != AF_UNIX && setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on) < 0)
    return sk_raise_errno(L, errno);
  if (reuse_port && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &on, sizeof on) < 0)
    return sk_raise_errno(L, errno);
  if (family == AF_INET6) {
    int only = !dualstack;
    setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &only, sizeof only);
  }
  sk_addr a;
  socklen_t len = sk_getaddr(L, family, 1, &a, "create_server");
  if (bind(fd, &a.sa, len) < 0) return sk_raise_errno(L, errno);
  if (listen(fd, backlog >= 0 ? backlog : (SOMAXCONN < 128 ? SOMAXCONN : 128)) < 0)
    return sk_raise_errno(L, errno);
  return 1;
}

/* socketpair(family=AF_UNIX, type=SOCK_STREAM, proto=0) -> a, b */
static int m_socketpair(lua_State *L) {
  int family = checkint_arg(L, 1, "socketpair", "family", AF_UNIX);
  int type = checkint_arg(L, 2, "socketpair", "type", SOCK_STREAM);
  int proto = checkint_arg(L, 3, "socketpair", "proto", 0);
  int fds[2];
  sk_sock *a = sk_pushnew(L, CLASS_UPV, NULL);
  sk_sock *b = sk_pushnew(L, CLASS_UPV, NULL);
  if (socketpair(family, type | SOCK_NONBLOCK | SOCK_CLOEXEC, proto, fds) < 0)
    return sk_raise_errno(L, errno);
  a->fd = fds[0];
  b->fd = fds[1];
  a->family = b->family = family;
  a->type = b->type = type & ~(SOCK_NONBLOCK | SOCK_CLOEXEC);
  a->proto = b->proto = proto;
  sk_publish(L, -2, a);
  sk_publish(L, -1, b);
  return 2;
}

static const luaL_Reg class_funcs[] = {   /* bound to a class (upvalue) */
  {"create_connection", m_create_connection},
  {"create_server", m_create_server},
  {"socketpair", m_socketpair},
  {NULL, NULL}
};

/* _bind_class(cls) -> {create_connection=, create_server=, socketpair=}
** making instances of cls (gevent.socket uses this). */
static int m_bind_class(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_newtable(L);
  lua_pushvalue(L, 1);
  luaL_setfuncs(L, class_funcs, 1);
  return 1;
}

static const luaL_Reg m_funcs[] = {
  {"getaddrinfo", m_getaddrinfo},
  {"gethostname", m_gethostname},
  {"gethostbyname", m_gethostbyname},
  {"getdefaulttimeout", m_getdefaulttimeout},
  {"setdefaulttimeout", m_setdefaulttimeout},
  {"_bind_class", m_bind_class},
  {NULL, NULL}
};

static const struct { const char *name; int value; } sk_constants[] = {
  {"AF_INET", AF_INET}, {"AF_INET6", AF_INET6}, {"AF_UNIX", AF_UNIX},
  {"AF_UNSPEC", AF_UNSPEC},
  {"SOCK_STREAM", SOCK_STREAM}, {"SOCK_DGRAM", SOCK_DGRAM}, {"SOCK_RAW", SOCK_RAW},
  {"SOCK_NONBLOCK", SOCK_NONBLOCK}, {"SOCK_CLOEXEC", SOCK_CLOEXEC},
  {"SOL_SOCKET", SOL_SOCKET}, {"SO_REUSEADDR", SO_REUSEADDR},
  {"SO_REUSEPORT", SO_REUSEPORT}, {"SO_KEEPALIVE", SO_KEEPALIVE},
  {"SO_BROADCAST", SO_BROADCAST}, {"SO_RCVBUF", SO_RCVBUF}, {"SO_SNDBUF", SO_SNDBUF},
  {"SO_ERROR", SO_ERROR}, {"SO_TYPE", SO_TYPE}, {"SO_LINGER", SO_LINGER},
  {"SO_RCVLOWAT", SO_RCVLOWAT}, {"SO_SNDLOWAT", SO_SNDLOWAT},
  {"IPPROTO_IP", IPPROTO_IP}, {"IPPROTO_IPV6", IPPROTO_IPV6},
  {"IPPROTO_TCP", IPPROTO_TCP}, {"IPPROTO_UDP", IPPROTO_UDP},
  {"IPV6_V6ONLY", IPV6_V6ONLY}, {"TCP_NODELAY", TCP_NODELAY},
  {"TCP_KEEPIDLE", TCP_KEEPIDLE}, {"TCP_KEEPINTVL", TCP_KEEPINTVL},
  {"TCP_KEEPCNT", TCP_KEEPCNT},
  {"SHUT_RD", SHUT_RD}, {"SHUT_WR", SHUT_WR}, {"SHUT_RDWR", SHUT_RDWR},
  {"MSG_PEEK", MSG_PEEK}, {"MSG_WAITALL", MSG_WAITALL},
  {"MSG_DONTWAIT", MSG_DONTWAIT}, {"MSG_OOB", MSG_OOB},
  {"SOMAXCONN", SOMAXCONN},
  {"AI_PASSIVE", AI_PASSIVE}, {"AI_CANONNAME", AI_CANONNAME},
  {"AI_NUMERICHOST", AI_NUMERICHOST}, {"AI_NUMERICSERV", AI_NUMERICSERV},
  {"EAI_NONAME", EAI_NONAME}, {"EAI_AGAIN", EAI_AGAIN},
  {NULL, 0}
};

static void make_gaierror(lua_State *L) {
  lua_getfield(L, LUA_REGISTRYINDEX, "mtlua.class");
  lua_pushliteral(L, "socket.gaierror");
  mt_push_class(L, "OSError");
  lua_call(L, 2, 1);
  mt_register_class(L, "socket.gaierror", -1);
}

/* CPython ignores SIGPIPE at startup; do it when sockets come in, if
** nobody chose a disposition (MSG_NOSIGNAL already covers sends). */
static void ignore_sigpipe(void) {
  struct sigaction old;
  if (sigaction(SIGPIPE, NULL, &old) == 0 && old.sa_handler == SIG_DFL)
    signal(SIGPIPE, SIG_IGN);
}

int luaopen_mt_socket(lua_State *L) {
  ignore_sigpipe();
  if (luaL_newmetatable(L, STATE_MT)) {
    lua_pushcfunction(L, state_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_pop(L, 1);
  luaL_newlib(L, m_funcs);
  for (int i = 0; sk_constants[i].name != NULL; i++) {
    lua_pushinteger(L, sk_constants[i].value);
    lua_setfield(L, -2, sk_constants[i].name);
  }
  lua_pushboolean(L, 1);
  lua_setfield(L, -2, "has_ipv6");
  mt_newclass(L, "socket.socket", sk_methods);
  mt_register_class(L, "socket.socket", -1);
  lua_pushvalue(L, -1);
  lua_setfield(L, LUA_REGISTRYINDEX, CLASS_KEY);
  lua_setfield(L, -2, "socket");
  lua_getfield(L, LUA_REGISTRYINDEX, CLASS_KEY);
  luaL_setfuncs(L, class_funcs, 1);   /* module functions making sockets */
  make_gaierror(L);
  lua_setfield(L, -2, "gaierror");
  mt_push_class(L, "OSError");
  lua_setfield(L, -2, "error");
  mt_push_class(L, "TimeoutError");
  lua_setfield(L, -2, "timeout");
  return 1;
}
