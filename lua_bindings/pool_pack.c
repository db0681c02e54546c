/*
** pool_pack.c -- the packed form of map chunks, for pool.c and the
** worker's side of lib/pool.lua (functions of module "_pool": pack,
** unpack, unpack_into, map_packed, newarray).
*/
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mt_core.h"
#include "pickle.h"
#include "pool_pack.h"

/* A chunk of map items or results crosses as one string.  Where every
** value is a number, a boolean or nil (the common map), it is packed:
** 'N', u32 count, a tag per value, 8 bytes per value -- a loop of
** memcpy instead of the general pickle, both ways.  Anything else is
** the pickle of the slice as an array with .n (a pickle never starts
** with 'N'). */
enum { PK_INT, PK_FLT, PK_NIL, PK_TRUE, PK_FALSE };

/* Stores the value on top (popped) as slot k of a packed chunk;
** returns 0, leaving it, when it is not a number, boolean or nil. */
static int put_packed(lua_State *L, char *tags, char *vals, size_t k) {
  char *v = vals + 8 * k;
  switch (lua_type(L, -1)) {
    case LUA_TNUMBER:
      if (lua_isinteger(L, -1)) {
        lua_Integer iv = lua_tointeger(L, -1);
        tags[k] = PK_INT;
        memcpy(v, &iv, 8);
      } else {
        lua_Number d = lua_tonumber(L, -1);
        tags[k] = PK_FLT;
        memcpy(v, &d, 8);
      }
      break;
    case LUA_TNIL: tags[k] = PK_NIL; memset(v, 0, 8); break;
    case LUA_TBOOLEAN:
      tags[k] = lua_toboolean(L, -1) ? PK_TRUE : PK_FALSE;
      memset(v, 0, 8);
      break;
    default: return 0;
  }
  lua_pop(L, 1);
  return 1;
}

/* Packs t[i..j] into out (5 + 9 * count bytes) if every value is a
** number, a boolean or nil; else returns 0.  One pass: a chunk of
** another kind shows it at once, usually at its first value. */
int pp_pack_into(lua_State *L, int t, lua_Integer i, lua_Integer j, char *out) {
  size_t n = (size_t)(j - i + 1);
  uint32_t n32 = (uint32_t)n;
  out[0] = 'N';
  memcpy(out + 1, &n32, 4);
  char *tags = out + 5, *vals = out + 5 + n;
  for (size_t k = 0; k < n; k++) {
    lua_rawgeti(L, t, i + (lua_Integer)k);
    if (!put_packed(L, tags, vals, k)) {
      lua_pop(L, 1);
      return 0;
    }
  }
  return 1;
}

static int pack_numbers(lua_State *L, int t, lua_Integer i, lua_Integer j) {
  size_t n = (size_t)(j - i + 1);
  luaL_Buffer b;
  char *out = luaL_buffinitsize(L, &b, 5 + 9 * n);
  if (!pp_pack_into(L, t, i, j, out)) {
    lua_pop(L, 1);   /* the buffer's box */
    return 0;
  }
  luaL_pushresultsize(&b, 5 + 9 * n);
  return 1;
}

/* Pushes the pickle of t[i..j] as an array with .n. */
void pp_pickle_slice(lua_State *L, int t, lua_Integer i, lua_Integer j) {
  lua_createtable(L, (int)(j - i + 1), 1);
  for (lua_Integer k = i; k <= j; k++) {
    lua_rawgeti(L, t, k);
    lua_rawseti(L, -2, k - i + 1);
  }
  lua_pushinteger(L, j - i + 1);
  lua_setfield(L, -2, "n");
  pk_dumps(L, -1);
  lua_remove(L, -2);
}

/* _pool.pack(t, i, j) -> string: t[i..j] as one chunk. */
static int pl_pack(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_Integer i = luaL_checkinteger(L, 2), j = luaL_checkinteger(L, 3);
  if (j < i) j = i - 1;
  if (j - i >= 0x7ffffff) return mt_raise(L, "ValueError", "pool: chunk of %d items is too large", (int)(j - i + 1));
  if (pack_numbers(L, 1, i, j)) return 1;
  pp_pickle_slice(L, 1, i, j);
  return 1;
}

/* Pushes the value k of a packed chunk. */
static void push_packed(lua_State *L, const char *tags, const char *vals, size_t k) {
  switch (tags[k]) {
    case PK_INT: { lua_Integer v; memcpy(&v, vals + 8 * k, 8); lua_pushinteger(L, v); break; }
    case PK_FLT: { lua_Number v; memcpy(&v, vals + 8 * k, 8); lua_pushnumber(L, v); break; }
    case PK_TRUE: lua_pushboolean(L, 1); break;
    case PK_FALSE: lua_pushboolean(L, 0); break;
    default: lua_pushnil(L); break;
  }
}

/* Checks a packed chunk's length; returns its count. */
static size_t packed_count(lua_State *L, const char *s, size_t len) {
  uint32_t n;
  if (len < 5) luaL_error(L, "pool: damaged chunk");
  memcpy(&n, s + 1, 4);
  if (len != 5 + 9 * (size_t)n) luaL_error(L, "pool: damaged chunk");
  return n;
}

/* _pool.unpack_into(t, start, s) -> count: stores the chunk's values
** at t[start], t[start + 1], ... */
static int pl_unpack_into(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_Integer start = luaL_checkinteger(L, 2);
  size_t len;
  const char *s = luaL_checklstring(L, 3, &len);
  if (len > 0 && s[0] == 'N') {
    size_t n = packed_count(L, s, len);
    const char *tags = s + 5, *vals = s + 5 + n;
    for (size_t k = 0; k < n; k++) {
      if (tags[k] == PK_NIL) continue;
      push_packed(L, tags, vals, k);
      lua_rawseti(L, 1, start + (lua_Integer)k);
    }
    lua_pushinteger(L, (lua_Integer)n);
    return 1;
  }
  pk_loads(L, s, len);
  if (!lua_istable(L, -1)) return luaL_error(L, "pool: damaged chunk");
  lua_getfield(L, -1, "n");
  lua_Integer n = lua_tointeger(L, -1);
  lua_pop(L, 1);
  for (lua_Integer k = 1; k <= n; k++) {
    if (lua_rawgeti(L, -1, k) == LUA_TNIL) { lua_pop(L, 1); continue; }
    lua_rawseti(L, 1, start + k - 1);
  }
  lua_pushinteger(L, n);
  return 1;
}

/* _pool.unpack(s) -> array with .n */
static int pl_unpack(lua_State *L) {
  size_t len;
  const char *s = luaL_checklstring(L, 1, &len);
  if (len > 0 && s[0] == 'N') {
    size_t n = packed_count(L, s, len);
    const char *tags = s + 5, *vals = s + 5 + n;
    lua_createtable(L, (int)n, 1);
    for (size_t k = 0; k < n; k++) {
      if (tags[k] == PK_NIL) continue;
      push_packed(L, tags, vals, k);
      lua_rawseti(L, -2, (lua_Integer)k + 1);
    }
    lua_pushinteger(L, (lua_Integer)n);
    lua_setfield(L, -2, "n");
    return 1;
  }
  pk_loads(L, s, len);
  return 1;
}

/* The packed results of a map chunk are built in one buffer kept for
** the next chunk: a new userdata per chunk is garbage the size of the
** chunk, and in generational mode garbage that size soon forces a
** major collection of the worker's whole heap.  While a chunk uses it
** the buffer is busy; a to-be-closed guard frees it however the map
** ends (the mapped function may raise).  A nested map_packed gets a
** userdata of its own. */
static char *pp_scratch;
static size_t pp_scratch_size;
static int pp_scratch_busy;

static int scratch_release(lua_State *L) {
  (void)L;
  pp_scratch_busy = 0;
  return 0;
}

/* Pushes the guard (*guarded = 1) or a userdata; returns a buffer of
** 'size' bytes. */
static char *map_buffer(lua_State *L, size_t size, int *guarded) {
  *guarded = 0;
  if (!pp_scratch_busy && size > pp_scratch_size) {
    char *p = realloc(pp_scratch, size);
    if (p != NULL) { pp_scratch = p; pp_scratch_size = size; }
  }
  if (pp_scratch_busy || size > pp_scratch_size) return lua_newuserdatauv(L, size, 0);
  lua_newuserdatauv(L, 0, 0);
  if (luaL_newmetatable(L, "mtlua.pool_scratch")) {
    lua_pushcfunction(L, scratch_release);
    lua_setfield(L, -2, "__close");
  }
  lua_setmetatable(L, -2);
  lua_toclose(L, -1);
  pp_scratch_busy = 1;
  *guarded = 1;
  return pp_scratch;
}

/* _pool.map_packed(func, chunk) -> results chunk: a worker's map over a
** packed chunk, with no table of items or of results in between (the
** results are packed as they come).  From the first result that cannot
** be packed on, results go to a table, pickled at the end. */
static int pl_map_packed(lua_State *L) {
  luaL_checkany(L, 1);
  size_t len;
  const char *s = luaL_checklstring(L, 2, &len);
  if (len == 0 || s[0] != 'N') return luaL_argerror(L, 2, "not a packed chunk");
  size_t n = packed_count(L, s, len);
  const char *tags = s + 5, *vals = s + 5 + n;
  int guarded;
  char *out = map_buffer(L, 5 + 9 * n, &guarded);   /* index 3 */
  char *otags = out + 5, *ovals = out + 5 + n;
  int spill = 0;   /* index of the results table, once one is needed */
  for (size_t k = 0; k < n; k++) {
    lua_pushvalue(L, 1);
    push_packed(L, tags, vals, k);
    lua_call(L, 1, 1);
    if (!spill && put_packed(L, otags, ovals, k)) continue;
    if (!spill) {   /* move what was packed so far to a table */
      lua_createtable(L, (int)n, 1);
      lua_insert(L, -2);
      spill = lua_gettop(L) - 1;
      for (size_t i = 0; i < k; i++) {
        push_packed(L, otags, ovals, i);
        lua_rawseti(L, spill, (lua_Integer)i + 1);
      }
    }
    lua_rawseti(L, spill, (lua_Integer)k + 1);
  }
  if (spill) {
    lua_pushinteger(L, (lua_Integer)n);
    lua_setfield(L, spill, "n");
    pk_dumps(L, spill);
    if (guarded) lua_closeslot(L, 3);
    return 1;
  }
  uint32_t n32 = (uint32_t)n;
  out[0] = 'N';
  memcpy(out + 1, &n32, 4);
  lua_pushlstring(L, out, 5 + 9 * n);
  if (guarded) lua_closeslot(L, 3);   /* the buffer is free again */
  return 1;
}

/* _pool.newarray(n) -> a table sized for n values, with .n = n */
static int pl_newarray(lua_State *L) {
  lua_Integer n = luaL_checkinteger(L, 1);
  lua_createtable(L, n > 0 && n < 0x7fffffff ? (int)n : 0, 1);
  lua_pushinteger(L, n);
  lua_setfield(L, -2, "n");
  return 1;
}

static const luaL_Reg pp_funcs[] = {
  {"pack", pl_pack},
  {"unpack", pl_unpack},
  {"unpack_into", pl_unpack_into},
  {"newarray", pl_newarray},
  {"map_packed", pl_map_packed},
  {NULL, NULL}
};

/* Adds the chunk functions to the module table on top of the stack. */
void pp_setfuncs(lua_State *L) {
  luaL_setfuncs(L, pp_funcs, 0);
}
