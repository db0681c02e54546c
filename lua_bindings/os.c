/*
** os.c -- Python's additions to Lua's `os` (getpid, getppid,
** cpu_count) and an os.execute that releases the GIL while the command
** runs, so other threads go on.
*/
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <stdlib.h>
#include <unistd.h>

#include "mt_core.h"

static int os_getpid(lua_State *L) { lua_pushinteger(L, getpid()); return 1; }
static int os_getppid(lua_State *L) { lua_pushinteger(L, getppid()); return 1; }

static int os_cpu_count(lua_State *L) {
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  if (n < 1) lua_pushnil(L);
  else lua_pushinteger(L, n);
  return 1;
}

static int os_execute(lua_State *L) {
  const char *cmd = luaL_optstring(L, 1, NULL);
  int stat, err;
  mt_blocking_begin(L);
  errno = 0;   /* luaL_execresult reads it */
  stat = system(cmd);
  err = errno;
  mt_blocking_end(L);
  errno = err;
  if (cmd == NULL) {
    lua_pushboolean(L, stat);
    return 1;
  }
  mt_check_interrupt(L);
  return luaL_execresult(L, stat);
}

static const luaL_Reg os_funcs[] = {
  {"getpid", os_getpid},
  {"getppid", os_getppid},
  {"cpu_count", os_cpu_count},
  {"execute", os_execute},
  {NULL, NULL}
};

int luaopen_mt_os(lua_State *L) {
  lua_getglobal(L, "os");
  luaL_setfuncs(L, os_funcs, 0);
  return 1;
}
