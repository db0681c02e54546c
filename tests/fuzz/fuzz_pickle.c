/*
** fuzz_pickle.c -- libFuzzer target for pickle.loads (make fuzz).
**
** Built with -DPK_FUZZ, where pickle.c uses a fixed MAC key and never
** runs decoded code (REDUCE calls a counting stub, no __gc functions):
** the harness re-signs every signed input, so the fuzzer reaches the
** decoding of functions, upvalues, C function names and REDUCE, not
** just the MAC check.  Without the MAC Lua would load and run hostile
** bytecode, which it cannot do safely; that is what the MAC is for.
*/
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mtlua.h"
#include "mt_core.h"
#include "pickle.h"

void pk_fuzz_sign(unsigned char *s, size_t len);

static lua_State *L;

/* The receiver: a class to re-link to, and no module whose functions
** touch the world (a C function by name is looked up, never called). */
static const char SETUP[] =
  "require 'pickle'\n"
  "local P = class('PkPoint'); function P:__init__(x, y) self.x, self.y = x, y end\n"
  "for name in pairs(package.loaded) do\n"
  "  if not ({_G=1, string=1, table=1, math=1, utf8=1, pickle=1})[name] then\n"
  "    package.loaded[name] = nil end end\n"
  "for _, k in ipairs{'os', 'io', 'debug', 'package', 'require', 'load', 'loadfile',\n"
  "                   'dofile', 'collectgarbage', 'print'} do _G[k] = nil end\n"
  "string.rep = nil\n";

/* Lua's undump trusts the sizes inside bytecode (a 6 GB code vector):
** harmless for real pickles, whose bytecode the MAC vouches for, but
** the harness signs anything.  Refusing huge blocks makes Lua raise its
** memory error instead. */
static void *limited_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  (void)ud; (void)osize;
  if (nsize == 0) { free(ptr); return NULL; }
  if (nsize > ((size_t)64 << 20)) return NULL;
  return realloc(ptr, nsize);
}

static int run_loads(lua_State *L) {
  const char *s = (const char *)lua_touserdata(L, 1);
  size_t n = (size_t)lua_tointeger(L, 2);
  pk_loads(L, s, n);
  return 1;
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc; (void)argv;
  L = mtlua_newstate();
  if (L == NULL || mtlua_dostring(L, SETUP) != 0) abort();
  lua_setallocf(L, limited_alloc, NULL);   /* same blocks: malloc's */
  lua_settop(L, 0);
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  unsigned char *copy = (unsigned char *)malloc(size ? size : 1);
  memcpy(copy, data, size);
  pk_fuzz_sign(copy, size);
  lua_pushcfunction(L, run_loads);
  lua_pushlightuserdata(L, copy);
  lua_pushinteger(L, (lua_Integer)size);
  lua_pcall(L, 2, 1, 0);
  if (lua_gc(L, LUA_GCISRUNNING) != 1) abort();   /* a big loads stops it: every exit restarts it */
  lua_settop(L, 0);
  free(copy);
  lua_gc(L, LUA_GCSTEP, 0);
  return 0;
}
