/*
** pool_pack.h -- map chunks of numbers, booleans and nils packed
** (integers as varint deltas, others as tagged 8-byte slots) (lua_bindings/pool_pack.c), for pool.c.
*/
#ifndef MT_POOL_PACK_H
#define MT_POOL_PACK_H

#include <stddef.h>

#include <lua.h>

/* The most bytes a packed chunk of n values takes. */
size_t pp_packed_max(size_t n);

/* Packs t[i..j] into out (pp_packed_max(j - i + 1) bytes); returns the
** bytes used, 0 when a value is not a number, a boolean or nil. */
size_t pp_pack_into(lua_State *L, int t, lua_Integer i, lua_Integer j, char *out);

/* Pushes the pickle of t[i..j] as an array with .n. */
void pp_pickle_slice(lua_State *L, int t, lua_Integer i, lua_Integer j);

/* Adds pack, unpack, unpack_into, map_packed and newarray to the
** module table on top of the stack. */
void pp_setfuncs(lua_State *L);

#endif
