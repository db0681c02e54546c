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

/* A chunk of map items or results crosses as one string, in one of
** three forms:
**   'D', u32 count, a varint per value: a chunk of integers only (the
**       common map), each the zigzag of its difference from the one
**       before (from 0).  A range or a linear map takes a byte a value:
**       the chunk's buffers, frames and strings are a ninth of the
**       tagged form's, and a first map over fresh memory faults that
**       much fewer pages in (what a chunk of cheap calls costs most);
**   'N', u32 count, a tag per value, 8 bytes per value: numbers,
**       booleans and nils -- a loop of memcpy instead of the pickle;
**   anything else: the pickle of the slice as an array with .n (a
**       pickle starts with neither 'D' nor 'N').
** A chunk of n values packs into at most pp_packed_max(n) bytes. */
enum { PK_INT, PK_FLT, PK_NIL, PK_TRUE, PK_FALSE };

#define VARINT_MAX 10

size_t pp_packed_max(size_t n) { return 5 + VARINT_MAX * n; }

static void put_header(char *out, char form, size_t n) {
  uint32_t n32 = (uint32_t)n;
  out[0] = form;
  memcpy(out + 1, &n32, 4);
}

/* The delta form's writer: the previous value, and where the next goes. */
typedef struct delta_writer { char *p; uint64_t prev; } delta_writer;

static void put_delta(delta_writer *w, lua_Integer v) {
  uint64_t d = (uint64_t)v - w->prev;   /* wraps: any two integers */
  uint64_t z = (d << 1) ^ (0 - (d >> 63));
  w->prev = (uint64_t)v;
  while (z >= 0x80) { *w->p++ = (char)(z | 0x80); z >>= 7; }
  *w->p++ = (char)z;
}

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

/* t[i..j] in the delta form, if all are integers; else 0. */
static size_t pack_deltas(lua_State *L, int t, lua_Integer i, lua_Integer j, char *out) {
  delta_writer w = { out + 5, 0 };
  for (lua_Integer k = i; k <= j; k++) {
    lua_rawgeti(L, t, k);
    int isint = lua_isinteger(L, -1);   /* the float 1.0 is no integer */
    if (isint) put_delta(&w, lua_tointeger(L, -1));
    lua_pop(L, 1);
    if (!isint) return 0;
  }
  put_header(out, 'D', (size_t)(j - i + 1));
  return (size_t)(w.p - out);
}

/* t[i..j] in the tagged form, if all are numbers, booleans or nils;
** else 0.  One pass: a chunk of another kind shows it at once, usually
** at its first value. */
static size_t pack_tagged(lua_State *L, int t, lua_Integer i, lua_Integer j, char *out) {
  size_t n = (size_t)(j - i + 1);
  char *tags = out + 5, *vals = out + 5 + n;
  for (size_t k = 0; k < n; k++) {
    lua_rawgeti(L, t, i + (lua_Integer)k);
    if (!put_packed(L, tags, vals, k)) {
      lua_pop(L, 1);
      return 0;
    }
  }
  put_header(out, 'N', n);
  return 5 + 9 * n;
}

/* Packs t[i..j] into out (pp_packed_max(count) bytes); returns the bytes
** used, or 0 when a value is not a number, a boolean or nil. */
size_t pp_pack_into(lua_State *L, int t, lua_Integer i, lua_Integer j, char *out) {
  size_t used = pack_deltas(L, t, i, j, out);
  return used ? used : pack_tagged(L, t, i, j, out);
}

static int pack_numbers(lua_State *L, int t, lua_Integer i, lua_Integer j) {
  size_t n = (size_t)(j - i + 1);
  luaL_Buffer b;
  char *out = luaL_buffinitsize(L, &b, pp_packed_max(n));
  size_t used = pp_pack_into(L, t, i, j, out);
  if (used == 0) {
    lua_pop(L, 1);   /* the buffer's box */
    return 0;
  }
  luaL_pushresultsize(&b, used);
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

/* Pushes the value k of a tagged chunk. */
static void push_packed(lua_State *L, const char *tags, const char *vals, size_t k) {
  switch (tags[k]) {
    case PK_INT: { lua_Integer v; memcpy(&v, vals + 8 * k, 8); lua_pushinteger(L, v); break; }
    case PK_FLT: { lua_Number v; memcpy(&v, vals + 8 * k, 8); lua_pushnumber(L, v); break; }
    case PK_TRUE: lua_pushboolean(L, 1); break;
    case PK_FALSE: lua_pushboolean(L, 0); break;
    default: lua_pushnil(L); break;
  }
}

static int is_packed(const char *s, size_t len) {
  return len > 0 && (s[0] == 'D' || s[0] == 'N');
}

/* Reads a packed chunk (either form) value by value. */
typedef struct chunk_reader {
  const char *s, *p, *end;   /* delta form: the next varint */
  size_t n, k;
  uint64_t prev;
} chunk_reader;

/* Checks a packed chunk's header (and a tagged one's length); returns
** its count. */
static size_t reader_init(lua_State *L, chunk_reader *r, const char *s, size_t len) {
  uint32_t n;
  if (len < 5) luaL_error(L, "pool: damaged chunk");
  memcpy(&n, s + 1, 4);
  if (s[0] == 'N' ? len != 5 + 9 * (size_t)n : len - 5 < (size_t)n || (n == 0 && len != 5))
    luaL_error(L, "pool: damaged chunk");
  r->s = s;
  r->p = s + 5;
  r->end = s + len;
  r->n = n;
  r->k = 0;
  r->prev = 0;
  return n;
}

/* Pushes the next value; returns 0 (pushing nothing) for a nil. */
static int reader_push(lua_State *L, chunk_reader *r) {
  size_t k = r->k++;
  if (r->s[0] == 'N') {
    const char *tags = r->s + 5;
    if (tags[k] == PK_NIL) return 0;
    push_packed(L, tags, tags + r->n, k);
    return 1;
  }
  uint64_t z = 0;
  for (int shift = 0;; shift += 7) {
    if (r->p == r->end || shift > 63) luaL_error(L, "pool: damaged chunk");
    unsigned char c = (unsigned char)*r->p++;
    z |= (uint64_t)(c & 0x7f) << shift;
    if (c < 0x80) break;
  }
  r->prev += (z >> 1) ^ (0 - (z & 1));
  if (r->k == r->n && r->p != r->end) luaL_error(L, "pool: damaged chunk");
  lua_pushinteger(L, (lua_Integer)r->prev);
  return 1;
}

/* _pool.unpack_into(t, start, s) -> count: stores the chunk's values
** at t[start], t[start + 1], ... */
static int pl_unpack_into(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_Integer start = luaL_checkinteger(L, 2);
  size_t len;
  const char *s = luaL_checklstring(L, 3, &len);
  if (is_packed(s, len)) {
    chunk_reader r;
    size_t n = reader_init(L, &r, s, len);
    for (size_t k = 0; k < n; k++)
      if (reader_push(L, &r)) lua_rawseti(L, 1, start + (lua_Integer)k);
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
  if (is_packed(s, len)) {
    chunk_reader r;
    size_t n = reader_init(L, &r, s, len);
    lua_createtable(L, (int)n, 1);
    for (size_t k = 0; k < n; k++)
      if (reader_push(L, &r)) lua_rawseti(L, -2, (lua_Integer)k + 1);
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

/* The first k results, written in the delta form from out + 5 to end,
** are rewritten in the tagged form (a result that is no integer came). */
static void deltas_to_tagged(lua_State *L, char *out, const char *end, size_t n, size_t k) {
  lua_Integer *tmp = lua_newuserdatauv(L, k * sizeof *tmp + 1, 0);
  put_header(out, 'D', k);   /* the reader goes by it */
  chunk_reader r = { out, out + 5, end, k, 0, 0 };
  for (size_t i = 0; i < k; i++) {
    reader_push(L, &r);
    tmp[i] = lua_tointeger(L, -1);
    lua_pop(L, 1);
  }
  char *tags = out + 5, *vals = out + 5 + n;
  for (size_t i = 0; i < k; i++) {
    tags[i] = PK_INT;
    memcpy(vals + 8 * i, &tmp[i], 8);
  }
  lua_pop(L, 1);
}

/* Moves the first k results, tagged at out, to a new table, inserted
** below the value on top; returns the table's index. */
static int tagged_to_table(lua_State *L, const char *out, size_t n, size_t k) {
  const char *tags = out + 5, *vals = out + 5 + n;
  lua_createtable(L, (int)n, 1);
  lua_insert(L, -2);
  int spill = lua_gettop(L) - 1;
  for (size_t i = 0; i < k; i++) {
    push_packed(L, tags, vals, i);
    lua_rawseti(L, spill, (lua_Integer)i + 1);
  }
  return spill;
}

/* _pool.map_packed(func, chunk) -> results chunk: a worker's map over a
** packed chunk, with no table of items or of results in between (the
** results are packed as they come: in the delta form while they are
** integers, then tagged).  From the first result that cannot be packed
** on, results go to a table, pickled at the end. */
static int pl_map_packed(lua_State *L) {
  luaL_checkany(L, 1);
  size_t len;
  const char *s = luaL_checklstring(L, 2, &len);
  if (!is_packed(s, len)) return luaL_argerror(L, 2, "not a packed chunk");
  chunk_reader in;
  size_t n = reader_init(L, &in, s, len);
  int guarded;
  char *out = map_buffer(L, pp_packed_max(n), &guarded);   /* index 3 */
  char form = 'D';
  delta_writer w = { out + 5, 0 };
  int spill = 0;   /* index of the results table, once one is needed */
  for (size_t k = 0; k < n; k++) {
    lua_pushvalue(L, 1);
    if (!reader_push(L, &in)) lua_pushnil(L);
    lua_call(L, 1, 1);
    if (form == 'D') {
      if (lua_isinteger(L, -1)) {
        put_delta(&w, lua_tointeger(L, -1));
        lua_pop(L, 1);
        continue;
      }
      deltas_to_tagged(L, out, w.p, n, k);
      form = 'N';
    }
    if (!spill && put_packed(L, out + 5, out + 5 + n, k)) continue;
    if (!spill) spill = tagged_to_table(L, out, n, k);
    lua_rawseti(L, spill, (lua_Integer)k + 1);
  }
  if (spill) {
    lua_pushinteger(L, (lua_Integer)n);
    lua_setfield(L, spill, "n");
    pk_dumps(L, spill);
  } else {
    put_header(out, form, n);
    lua_pushlstring(L, out, form == 'D' ? (size_t)(w.p - out) : 5 + 9 * n);
  }
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
