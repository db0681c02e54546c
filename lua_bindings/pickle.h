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

/* The pickle of a scalar (nil, boolean, number, string) at idx without
** making it: head[0..n) followed by *tail[0..*taillen) (a string's own
** bytes; NULL for the others).  Returns n, or 0 for any other value.
** Lets a queue copy a string into shared memory once. */
#define PK_SCALAR_HEAD 24
int pk_scalar_parts(lua_State *L, int idx, unsigned char head[PK_SCALAR_HEAD],
                    const char **tail, size_t *taillen);

/* Pushes the value decoded from s[0..len).  Raises an error (never
** crashes) on damaged, truncated or trailing input. */
void pk_loads(lua_State *L, const char *s, size_t len);

#endif
