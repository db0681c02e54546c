/*
** pickle_names.c -- the names pickle gives C functions (pickle_names.h):
** a C function crosses to another process as the path it has in
** package.loaded ("module\0field", or "module\0Class\0method"), and
** the receiver looks that path up in its own modules.
*/
#include <lauxlib.h>

#include "pickle_names.h"

static const char CNAMES_KEY[] = "mtlua.pickle.cnames";

/* map[fn] = the name on top (popped), unless fn has a name already. */
static void cname_add(lua_State *L, int map, int fn) {
  lua_pushvalue(L, fn);
  if (lua_rawget(L, map) == LUA_TNIL) {
    lua_pop(L, 1);
    lua_pushvalue(L, fn);
    lua_insert(L, -2);
    lua_rawset(L, map);
  } else {
    lua_pop(L, 2);
  }
}

/* Pushes prefix "\0" key. */
static void push_path(lua_State *L, int prefix, int key) {
  lua_pushvalue(L, prefix);
  lua_pushlstring(L, "\0", 1);
  lua_pushvalue(L, key);
  lua_concat(L, 3);
}

/* Names the C functions that are string-keyed fields of the table at
** t (named by the string at prefix); with depth 1, those one table
** further down instead (class methods: threading.Lock.acquire). */
static void cname_scan(lua_State *L, int map, int t, int prefix, int depth) {
  luaL_checkstack(L, 8, "pickle");
  lua_pushnil(L);
  while (lua_next(L, t)) {
    int v = lua_gettop(L);
    if (lua_type(L, v - 1) == LUA_TSTRING) {
      if (depth == 0 && lua_iscfunction(L, v)) {
        push_path(L, prefix, v - 1);
        cname_add(L, map, v);
      } else if (depth > 0 && lua_istable(L, v)) {
        push_path(L, prefix, v - 1);
        cname_scan(L, map, v, v + 1, depth - 1);
      }
    }
    lua_settop(L, v - 1);
  }
}

/* Builds the map into a fresh table (weak keys) and stores it: module
** fields first, so that the shortest name wins. */
static void cname_build(lua_State *L) {
  luaL_checkstack(L, 12, "pickle");
  lua_newtable(L);
  int map = lua_gettop(L);
  lua_newtable(L);
  lua_pushliteral(L, "k");
  lua_setfield(L, -2, "__mode");
  lua_setmetatable(L, map);
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  int loaded = map + 1;
  for (int depth = 0; depth <= 1; depth++) {
    lua_pushnil(L);
    while (lua_next(L, loaded)) {
      int mod = lua_gettop(L);
      if (lua_type(L, mod - 1) == LUA_TSTRING) {
        if (depth == 0 && lua_iscfunction(L, mod)) {
          lua_pushvalue(L, mod - 1);
          cname_add(L, map, mod);
        } else if (lua_istable(L, mod)) {
          cname_scan(L, map, mod, mod - 1, depth);
        }
      }
      lua_settop(L, mod - 1);
    }
  }
  lua_pop(L, 1);   /* loaded */
  lua_setfield(L, LUA_REGISTRYINDEX, CNAMES_KEY);
}

static int cname_get(lua_State *L, int f) {
  if (lua_getfield(L, LUA_REGISTRYINDEX, CNAMES_KEY) != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_pushnil(L);
    return 0;
  }
  lua_pushvalue(L, f);
  lua_rawget(L, -2);
  lua_remove(L, -2);
  return lua_type(L, -1) == LUA_TSTRING;
}

int pk_cname_lookup(lua_State *L, int f, int build) {
  f = lua_absindex(L, f);
  if (cname_get(L, f) || !build) return lua_type(L, -1) == LUA_TSTRING;
  lua_pop(L, 1);
  cname_build(L);
  return cname_get(L, f);
}
