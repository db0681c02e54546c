/*
** fork.c -- forking a process that runs Lua threads.  Only the forking
** thread survives in the child: the runtime makes its GIL, its waits
** and threading's records consistent again before any Lua runs there.
*/
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "mt_core.h"

/* Lua-side clean-up of the child: threading forgets the other threads,
** math.random gets a new seed (Python reseeds random in children). */
static void lua_after_fork(lua_State *L) {
  lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  if (lua_getfield(L, -1, "threading") == LUA_TTABLE) {
    if (lua_getfield(L, -1, "_after_fork") == LUA_TFUNCTION) {
      if (lua_pcall(L, 0, 0, 0) != LUA_OK) lua_pop(L, 1);
    } else {
      lua_pop(L, 1);
    }
  }
  lua_pop(L, 2);
  lua_getglobal(L, "math");
  if (lua_getfield(L, -1, "randomseed") == LUA_TFUNCTION) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    lua_pushinteger(L, (lua_Integer)ts.tv_nsec ^ ((lua_Integer)getpid() << 20));
    lua_pushinteger(L, (lua_Integer)ts.tv_sec);
    if (lua_pcall(L, 2, 0, 0) != LUA_OK) lua_pop(L, 1);
  } else {
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
}

pid_t mt_fork(lua_State *L) {
  mt_universe *U = mt_universe_of(L);
  fflush(NULL);   /* nothing buffered may be written twice */
  mt_join_ending_threads();   /* none may be inside malloc at the fork */
  pid_t pid = fork();
  if (pid < 0) {
    int e = errno;
    mt_raise(L, "OSError", "[Errno %d] fork failed: %s", e, strerror(e));
  }
  if (pid == 0) {
    mt_universe_after_fork_child(U);
    lua_after_fork(L);
  }
  return pid;
}
