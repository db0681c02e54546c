/*
** coroutine.c -- Lua's coroutine library, extended.  resume and wrap
** are replaced by versions that tell the runtime which coroutine runs
** (so Ctrl-C can stop it) and give coroutines made before threading
** began the preemption hook; the rest of the library is Lua's own.
*/
#include "mt_core.h"

#if LUA_VERSION_RELEASE_NUM >= 50406
#define close_thread(co, L) lua_closethread(co, L)
#else
#define close_thread(co, L) lua_resetthread(co)
#endif

/* Resumes co with narg values from L's top; returns the number of
** results moved to L, or -1 with the error on L's top. */
static int resume_values(lua_State *L, lua_State *co, int narg) {
  int status, nres;
  if (!lua_checkstack(co, narg)) {
    lua_pushliteral(L, "too many arguments to resume");
    return -1;
  }
  if (lua_status(co) == LUA_OK && lua_gettop(co) == 0) {
    lua_pushliteral(L, "cannot resume dead coroutine");
    return -1;
  }
  lua_xmove(L, co, narg);
  mt_prepare_resume(L, co);
  status = lua_resume(co, L, narg, &nres);
  mt_set_running(L);
  if (status == LUA_OK || status == LUA_YIELD) {
    if (!lua_checkstack(L, nres + 1)) {
      lua_pop(co, nres);
      lua_pushliteral(L, "too many results to resume");
      return -1;
    }
    lua_xmove(co, L, nres);
    return nres;
  }
  lua_xmove(co, L, 1);
  return -1;
}

static lua_State *checkco(lua_State *L, int idx) {
  lua_State *co = lua_tothread(L, idx);
  luaL_argexpected(L, co != NULL, idx, "coroutine");
  return co;
}

static int co_resume(lua_State *L) {
  lua_State *co = checkco(L, 1);
  if (co == L) {
    lua_pushboolean(L, 0);
    lua_pushliteral(L, "cannot resume non-suspended coroutine");
    return 2;
  }
  int r = resume_values(L, co, lua_gettop(L) - 1);
  mt_check_interrupt(L);
  if (r < 0) {
    lua_pushboolean(L, 0);
    lua_insert(L, -2);
    return 2;
  }
  lua_pushboolean(L, 1);
  lua_insert(L, -(r + 1));
  return r + 1;
}

static int wrapped(lua_State *L) {
  lua_State *co = lua_tothread(L, lua_upvalueindex(1));
  int r = resume_values(L, co, lua_gettop(L));
  mt_check_interrupt(L);
  if (r < 0) {
    int stat = lua_status(co);
    if (stat != LUA_OK && stat != LUA_YIELD) {   /* error inside co */
      stat = close_thread(co, L);                /* run its <close>s */
      lua_xmove(co, L, 1);
    }
    if (stat != LUA_ERRMEM && lua_type(L, -1) == LUA_TSTRING) {
      luaL_where(L, 1);
      lua_insert(L, -2);
      lua_concat(L, 2);
    }
    return lua_error(L);
  }
  return r;
}

static int co_wrap(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  lua_State *co = lua_newthread(L);
  lua_pushvalue(L, 1);
  lua_xmove(L, co, 1);
  lua_pushcclosure(L, wrapped, 1);
  return 1;
}

static const luaL_Reg co_funcs[] = {
  {"resume", co_resume},
  {"wrap", co_wrap},
  {NULL, NULL}
};

int luaopen_mt_coroutine(lua_State *L) {
  lua_getglobal(L, "coroutine");
  luaL_setfuncs(L, co_funcs, 0);
  return 1;
}
