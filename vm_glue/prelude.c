/*
** prelude.c -- the parts of the prelude (lib/prelude.lua) written in C
** because they sit on hot paths: with(obj).
*/
#include "mt_core.h"

static const char CLOSER_MT[] = "mtlua.with_closer";

/* The closer of with() for an __enter__ that did not return obj. */
static int closer_close(lua_State *L) {
  lua_getfield(L, 1, "obj");
  lua_getfield(L, -1, "__exit__");
  lua_insert(L, -2);
  lua_pushvalue(L, 2);   /* the error, or nil */
  lua_call(L, 2, 0);
  return 0;
}

/* with's upvalues: the names it looks up on every call, made once (a
** lua_getfield would hash and compare the C string each time), and the
** anchors of U->with_last (its instance and bound __enter__). */
#define ENTER_NAME  lua_upvalueindex(1)
#define CLOSE_NAME  lua_upvalueindex(2)
#define LAST_INST   lua_upvalueindex(3)
#define LAST_ENTER  lua_upvalueindex(4)

/* Does obj (at 1) have a __close metamethod? */
static int has_close(lua_State *L) {
  if (!lua_getmetatable(L, 1)) return 0;
  lua_pushvalue(L, CLOSE_NAME);
  int t = lua_rawget(L, -2);
  lua_pop(L, 2);
  return t != LUA_TNIL;
}

/* Bound __enter__ closures (mt_fast_method) whose C part with() may run
** itself: registered once per C type by its module. */
#define MAX_FAST_ENTERS 8
static struct {
  lua_CFunction bound;
  mt_enter_fn enter;
  const void *key;
} fast_enters[MAX_FAST_ENTERS];
static int nfast_enters;

void mt_register_fast_enter(lua_CFunction bound, mt_enter_fn enter, const void *key) {
  for (int i = 0; i < nfast_enters; i++)
    if (fast_enters[i].bound == bound) return;
  if (nfast_enters < MAX_FAST_ENTERS) {
    fast_enters[nfast_enters].bound = bound;
    fast_enters[nfast_enters].enter = enter;
    fast_enters[nfast_enters].key = key;
    nfast_enters++;
  }
}

/* Runs the C part of obj's (at 1) bound __enter__ (at 2) and leaves
** with()'s two results, obj and obj. */
static int enter_state(lua_State *L, mt_enter_fn enter, void *state) {
  enter(L, state);
  lua_copy(L, 1, 2);
  return 2;
}

/* obj (at 1) found __enter__ (at 2) a registered bound closure over
** its own state: runs the C part directly, without a Lua call -- half
** the cost of `with(lock)` -- and remembers obj in U->with_last, so
** that the next with(obj) and obj's __close skip their lookups.  Its
** class has __close (the C type's).  Returns 0, the stack as it was,
** when it does not apply. */
static int fast_enter(lua_State *L, mt_universe *U) {
  lua_CFunction f = lua_tocfunction(L, 2);
  int i = 0;
  while (f != NULL && i < nfast_enters && fast_enters[i].bound != f) i++;
  if (f == NULL || i == nfast_enters) return 0;
  lua_getupvalue(L, 2, 2);   /* the instance it is bound to */
  if (!lua_rawequal(L, 1, 3)) {
    lua_settop(L, 2);
    return 0;
  }
  lua_getupvalue(L, 2, 1);   /* its state */
  void *state = lua_touserdata(L, 4);
  lua_settop(L, 2);
  if (U != NULL) {
    lua_copy(L, 1, LAST_INST);
    lua_copy(L, 2, LAST_ENTER);
    U->with_last.inst = lua_topointer(L, 1);
    U->with_last.enter = lua_topointer(L, 2);
    U->with_last.key = fast_enters[i].key;
    U->with_last.state = state;
    U->with_last.fn = fast_enters[i].enter;
  }
  return enter_state(L, fast_enters[i].enter, state);
}

/* with(obj) -> closer, value: calls obj:__enter__(); the closer's
** closing calls obj:__exit__(err).  When __enter__ returns obj and obj
** has a __close metamethod, obj is its own closer. */
static int with(lua_State *L) {
  if (lua_gettop(L) != 1) lua_settop(L, 1);
  int t = lua_type(L, 1);
  if (t == LUA_TTABLE || t == LUA_TUSERDATA) {
    lua_pushvalue(L, ENTER_NAME);
    t = lua_gettable(L, 1);
  }
  if (t == LUA_TNIL || lua_gettop(L) == 1) {
    const char *tname = luaL_typename(L, 1);
    if (lua_istable(L, 1) && luaL_getmetafield(L, 1, "__name__") == LUA_TSTRING)
      tname = lua_tostring(L, -1);
    return mt_raise(L, "TypeError", "'%s' object does not support the context manager protocol", tname);
  }
  mt_universe *U = mt_universe_of(L);
  if (U != NULL && lua_topointer(L, 1) == U->with_last.inst
      && lua_topointer(L, 2) == U->with_last.enter)
    return enter_state(L, U->with_last.fn, U->with_last.state);
  if (fast_enter(L, U)) return 2;
  lua_pushvalue(L, 1);
  lua_call(L, 1, 1);
  if (lua_rawequal(L, 1, 2) && has_close(L)) return 2;
  lua_settop(L, 2);
  lua_createtable(L, 0, 1);
  lua_pushvalue(L, 1);
  lua_setfield(L, -2, "obj");
  if (luaL_newmetatable(L, CLOSER_MT)) {
    lua_pushcfunction(L, closer_close);
    lua_setfield(L, -2, "__close");
    lua_pushliteral(L, "with");
    lua_setfield(L, -2, "__name");
  }
  lua_setmetatable(L, -2);
  lua_insert(L, 2);
  return 2;
}

void mt_push_with(lua_State *L) {
  lua_pushliteral(L, "__enter__");
  lua_pushliteral(L, "__close");
  lua_pushnil(L);
  lua_pushnil(L);
  lua_pushcclosure(L, with, 4);
}
