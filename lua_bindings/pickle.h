/*
** pickle.h -- serializing Lua values across processes (lua_bindings/
** pickle.c; the Lua module is `pickle`).  The contract is SPEC.md §9.
*/
#ifndef MT_PICKLE_H
#define MT_PICKLE_H

#include <stddef.h>
#include <lua.h>

/* Pushes the pickle (a string) of the value at idx.  Raises TypeError
** ("cannot pickle 'X' object") or ValueError (nesting too deep); the
** stack is otherwise unchanged. */
void pk_dumps(lua_State *L, int idx);

/* Pushes the value decoded from s[0..len).  Raises an error (never
** crashes) on damaged, truncated or trailing input. */
void pk_loads(lua_State *L, const char *s, size_t len);

#endif
