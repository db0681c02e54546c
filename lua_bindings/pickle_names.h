/*
** pickle_names.h -- C functions by name, for pickle.c
** (lua_bindings/pickle_names.c).
*/
#ifndef MT_PICKLE_NAMES_H
#define MT_PICKLE_NAMES_H

#include <lua.h>

/* Looks the C function at idx up in the name map; pushes its name or
** nil, and returns whether it has one.  The map (function ->
** "module\0field[\0field]", weak keys, shortest name first) is built
** from package.loaded at first need, and again on a miss when 'build'
** is set (pickle's safe mode; 0 never builds it). */
int pk_cname_lookup(lua_State *L, int idx, int build);

#endif
