/*
** errors.c -- exceptions raised from C, the message handler that gives
** uncaught errors their traceback, the uncaught-error report, and the
** argument helpers for Python-style optional parameters.
**
** Exception classes are the prelude's (lib/prelude.lua); C code names
** them by qualified name ("ValueError", "queue.Empty").  Global names
** are found in the registry table CLASSES, filled by the prelude and by
** modules through mt_register_class, so that a script rebinding the
** global ValueError does not change what C raises.
*/
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <string.h>

#include "mt_core.h"

static const char CLASSES_KEY[] = "mtlua.classes";

static void push_classes(lua_State *L) {
  if (lua_getfield(L, LUA_REGISTRYINDEX, CLASSES_KEY) != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_newtable(L);
    lua_pushvalue(L, -1);
    lua_setfield(L, LUA_REGISTRYINDEX, CLASSES_KEY);
  }
}

void mt_register_class(lua_State *L, const char *qualname, int idx) {
  idx = lua_absindex(L, idx);
  push_classes(L);
  lua_pushvalue(L, idx);
  lua_setfield(L, -2, qualname);
  lua_pop(L, 1);
}

int mt_lua_register_class(lua_State *L) {
  luaL_checkstring(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  mt_register_class(L, lua_tostring(L, 1), 2);
  return 0;
}

int mt_push_class(lua_State *L, const char *qualname) {
  push_classes(L);
  if (lua_getfield(L, -1, qualname) == LUA_TNIL) {
    lua_pop(L, 1);
    lua_getglobal(L, qualname);
  }
  lua_remove(L, -2);
  return lua_type(L, -1) == LUA_TTABLE;
}

void mt_push_exception(lua_State *L, const char *cls, const char *msg) {
  if (!mt_push_class(L, cls)) {   /* no prelude: a plain message */
    lua_pop(L, 1);
    lua_pushfstring(L, "%s: %s", cls, msg ? msg : "");
    return;
  }
  if (msg) {
    lua_pushstring(L, msg);
    lua_call(L, 1, 1);
  } else {
    lua_call(L, 0, 1);
  }
}

int mt_raise(lua_State *L, const char *cls, const char *fmt, ...) {
  const char *msg = NULL;
  if (fmt != NULL) {
    va_list ap;
    va_start(ap, fmt);
    msg = lua_pushvfstring(L, fmt, ap);
    va_end(ap);
  }
  mt_push_exception(L, cls, msg);
  if (lua_type(L, -1) == LUA_TTABLE) {
    luaL_traceback(L, L, NULL, 1);
    lua_setfield(L, -2, "traceback");
  }
  return lua_error(L);
}

/* The OSError subclass Python picks for an errno (PEP 3151). */
static const char *oserror_class(int err) {
  switch (err) {
    case ECONNREFUSED: return "ConnectionRefusedError";
    case ECONNRESET: return "ConnectionResetError";
    case ECONNABORTED: return "ConnectionAbortedError";
    case EPIPE: case ESHUTDOWN: return "BrokenPipeError";
    case ETIMEDOUT: return "TimeoutError";
    case ENOENT: return "FileNotFoundError";
    case EACCES: case EPERM: return "PermissionError";
    case EINTR: return "InterruptedError";
    case EAGAIN: case EINPROGRESS: case EALREADY: return "BlockingIOError";
    default: return "OSError";
  }
}

int mt_raise_errno(lua_State *L, const char *cls, int code, const char *msg) {
  if (!mt_push_class(L, cls)) {   /* e.g. BlockingIOError unknown */
    lua_pop(L, 1);
    mt_push_class(L, "OSError");
  }
  lua_pushinteger(L, code);
  lua_pushstring(L, msg);
  lua_call(L, 2, 1);
  if (lua_type(L, -1) == LUA_TTABLE) {
    luaL_traceback(L, L, NULL, 1);
    lua_setfield(L, -2, "traceback");
  }
  return lua_error(L);
}

int mt_raise_oserror(lua_State *L, int err) {
  return mt_raise_errno(L, oserror_class(err), err, strerror(err));
}

int mt_isinstance(lua_State *L, int idx, const char *qualname) {
  int result = 0;
  idx = lua_absindex(L, idx);
  if (!mt_push_class(L, qualname)) { lua_pop(L, 1); return 0; }
  if (!lua_getmetatable(L, idx)) { lua_pop(L, 1); return 0; }
  for (int depth = 0; depth < 100 && lua_type(L, -1) == LUA_TTABLE; depth++) {
    if (lua_rawequal(L, -1, -2)) { result = 1; break; }
    lua_pushliteral(L, "super");
    lua_rawget(L, -2);
    lua_remove(L, -2);
  }
  lua_pop(L, 2);
  return result;
}

static int is_exception(lua_State *L, int idx) {
  return lua_type(L, idx) == LUA_TTABLE && mt_isinstance(L, idx, "BaseException");
}

/* For xpcall: an exception gets its traceback if raise() did not give
** it one; any other value becomes "message\nstack traceback...". */
int mt_msghandler(lua_State *L) {
  if (is_exception(L, 1)) {
    if (lua_getfield(L, 1, "traceback") == LUA_TNIL) {
      luaL_traceback(L, L, NULL, 1);
      lua_setfield(L, 1, "traceback");
    }
    lua_settop(L, 1);
    return 1;
  }
  const char *msg = lua_tostring(L, 1);
  if (msg == NULL) {
    if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING)
      msg = lua_tostring(L, -1);
    else
      msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
  }
  luaL_traceback(L, L, msg, 1);
  return 1;
}

/* The report of an uncaught error, Python's order: traceback first,
** then "Class: message". */
void mt_format_error(lua_State *L, int idx) {
  idx = lua_absindex(L, idx);
  if (is_exception(L, idx)) {
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    if (lua_getfield(L, idx, "traceback") == LUA_TSTRING) {
      luaL_addvalue(&b);
      luaL_addchar(&b, '\n');
    } else {
      lua_pop(L, 1);
    }
    luaL_tolstring(L, idx, NULL);
    luaL_addvalue(&b);
    luaL_pushresult(&b);
    return;
  }
  if (lua_type(L, idx) == LUA_TSTRING) {
    lua_pushvalue(L, idx);
    return;
  }
  luaL_tolstring(L, idx, NULL);
}

/* ------------------------------------------------ optional arguments */

static int arg_or_field(lua_State *L, int idx, int optidx, const char *field) {
  if (optidx > 0 && idx >= optidx) {
    lua_getfield(L, optidx, field);
    return lua_gettop(L);
  }
  lua_pushvalue(L, idx);
  return lua_gettop(L);
}

int mt_opt_boolean(lua_State *L, int idx, int optidx, const char *field, int def) {
  int at = arg_or_field(L, idx, optidx, field);
  int v = lua_isnoneornil(L, at) ? def : lua_toboolean(L, at);
  lua_pop(L, 1);
  return v;
}

int mt_argtype_error(lua_State *L, int idx, const char *fname,
                     const char *arg, const char *expected) {
  return mt_raise(L, "TypeError", "%s() argument '%s' must be %s, not %s",
                  fname, arg, expected, luaL_typename(L, idx));
}

double mt_opt_timeout(lua_State *L, int idx, int optidx, const char *field,
                      const char *fname) {
  int at = arg_or_field(L, idx, optidx, field);
  double v;
  if (lua_isnoneornil(L, at)) v = NAN;
  else if (lua_type(L, at) == LUA_TNUMBER) v = lua_tonumber(L, at);
  else return mt_argtype_error(L, at, fname, field, "a number or nil");
  lua_pop(L, 1);
  return v;
}

/* ------------------------------------------------------- C classes */

void *mt_newobject(lua_State *L, int selfidx, const void *key, size_t size) {
  selfidx = lua_absindex(L, selfidx);
  mt_universe *U = mt_universe_of(L);
  if (U != NULL && U->with_last.inst == lua_topointer(L, selfidx))
    U->with_last.inst = NULL;   /* a re-__init__: its state changes */
  void *p = lua_newuserdatauv(L, size, 0);
  memset(p, 0, size);
  lua_rawsetp(L, selfidx, key);
  return p;
}

void *mt_toobject(lua_State *L, int idx, const void *key) {
  void *p;
  if (lua_type(L, idx) != LUA_TTABLE) return NULL;
  if ((p = mt_with_last_state(L, idx, key)) != NULL) return p;
  lua_rawgetp(L, idx, key);
  p = lua_touserdata(L, -1);
  lua_pop(L, 1);
  return p;
}

void *mt_checkobject(lua_State *L, int idx, const void *key, const char *tname) {
  void *p = mt_toobject(L, idx, key);
  if (p == NULL)
    mt_raise(L, "TypeError", "expected a %s object, got %s (did you call with '.' instead of ':'?)",
             tname, luaL_typename(L, idx));
  return p;
}

void mt_bind_fast_methods(lua_State *L, int selfidx, const void *key, const mt_fast_method *m) {
  selfidx = lua_absindex(L, selfidx);
  lua_rawgetp(L, selfidx, key);
  int state = lua_gettop(L);
  for (; m->name != NULL; m++) {
    lua_getfield(L, selfidx, m->name);   /* what a call would find */
    lua_CFunction f = lua_tocfunction(L, -1);
    if (f == m->generic || f == m->bound) {   /* bound: a re-__init__ */
      lua_pushstring(L, m->name);
      lua_pushvalue(L, state);
      lua_pushvalue(L, selfidx);
      lua_pushcclosure(L, m->bound, 2);
      lua_rawset(L, selfidx);
    }
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
}

void mt_newclass(lua_State *L, const char *name, const luaL_Reg *methods) {
  lua_getfield(L, LUA_REGISTRYINDEX, "mtlua.class");
  lua_pushstring(L, name);
  lua_call(L, 1, 1);
  if (methods) luaL_setfuncs(L, methods, 0);
}
