/*
** test_capi.c -- the embedding API of mtlua.h, as a host uses it.
** Prints TAP; run by tests/capi.lua.
*/
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lualib.h>

#include "mtlua.h"

static int count = 0, failed = 0;

static void ok(int cond, const char *name) {
  count++;
  if (!cond) failed++;
  printf("%s %d - %s\n", cond ? "ok" : "not ok", count, name);
  fflush(stdout);
}

static lua_Integer global_int(lua_State *L, const char *name) {
  lua_getglobal(L, name);
  lua_Integer v = lua_tointeger(L, -1);
  lua_pop(L, 1);
  return v;
}

/* a host thread calling into the state while its main thread waits */
static void *host_thread(void *arg) {
  lua_State *L = arg;
  for (int i = 0; i < 100; i++) {
    lua_State *T = mtlua_gil_ensure(L);
    lua_getglobal(T, "bump");
    lua_call(T, 0, 0);
    mtlua_gil_leave(T);
  }
  return NULL;
}

/* an independent interpreter per OS thread */
static void *own_state(void *arg) {
  long *result = arg;
  lua_State *L = mtlua_newstate();
  int st = mtlua_dostring(L,
    "local threading = require 'threading'\n"
    "n = 0\n"
    "local lk = threading.Lock()\n"
    "local ts = {}\n"
    "for i = 1, 4 do ts[i] = threading.Thread{target=function()\n"
    "  for _ = 1, 10000 do lk:acquire(); n = n + 1; lk:release() end end}\n"
    "  ts[i]:start() end\n"
    "for i = 1, 4 do ts[i]:join() end\n");
  *result = st == LUA_OK ? (long)global_int(L, "n") : -1;
  mtlua_close(L);
  return NULL;
}

int main(void) {
  lua_State *L = mtlua_newstate();
  ok(L != NULL, "mtlua_newstate");
  ok(mtlua_dostring(L, "x = 40 + 2") == LUA_OK && global_int(L, "x") == 42, "mtlua_dostring");
  ok(mtlua_dostring(L, "assert(type(require('threading').Thread) == 'table')") == LUA_OK,
     "modules are there");
  int st = mtlua_dostring(L, "error(ValueError('bad'))");
  ok(st != LUA_OK && strstr(lua_tostring(L, -1), "ValueError: bad") != NULL,
     "an error comes back formatted");
  lua_pop(L, 1);

  /* release the GIL around host work while a Lua thread runs */
  ok(mtlua_dostring(L,
     "local threading = require 'threading'\n"
     "ticks = 0\n"
     "worker = threading.Thread{target=function()\n"
     "  local t = require('time')\n"
     "  local stop = t.monotonic() + 0.2\n"
     "  while t.monotonic() < stop do ticks = ticks + 1 end end}\n"
     "worker:start()") == LUA_OK, "start a Lua thread");
  mtlua_gil_release(L);
  usleep(300000);
  mtlua_gil_acquire(L);
  ok(global_int(L, "ticks") > 0, "a Lua thread runs while the host released the GIL");
  ok(mtlua_dostring(L, "worker:join()") == LUA_OK, "join it");

  /* host threads entering Lua with gil_ensure */
  ok(mtlua_dostring(L, "bumps = 0 function bump() bumps = bumps + 1 end") == LUA_OK, "define bump");
  pthread_t th[3];
  for (int i = 0; i < 3; i++) pthread_create(&th[i], NULL, host_thread, L);
  mtlua_gil_release(L);
  for (int i = 0; i < 3; i++) pthread_join(th[i], NULL);
  mtlua_gil_acquire(L);
  ok(global_int(L, "bumps") == 300, "3 host threads x 100 calls through gil_ensure");
  lua_State *T = mtlua_gil_ensure(L);   /* nesting from the holder is a no-op */
  mtlua_gil_leave(T);
  ok(mtlua_dostring(L, "y = 1") == LUA_OK, "ensure/leave by the holder keeps the GIL");

  /* two independent interpreters in parallel */
  long r1 = 0, r2 = 0;
  pthread_t a, b;
  pthread_create(&a, NULL, own_state, &r1);
  pthread_create(&b, NULL, own_state, &r2);
  mtlua_gil_release(L);
  pthread_join(a, NULL);
  pthread_join(b, NULL);
  mtlua_gil_acquire(L);
  ok(r1 == 40000 && r2 == 40000, "two states with their own GILs in parallel");

  /* close: waits for non-daemon threads, returns the exit status */
  ok(mtlua_dostring(L,
     "require('threading').Thread{target=function() require('time').sleep(0.1) done = true end}:start()\n"
     "raise(SystemExit(3))") != LUA_OK, "SystemExit is an error for dostring");
  lua_pop(L, 1);
  ok(mtlua_close(L) == 3, "mtlua_close returns the SystemExit status");

  /* openlibs on a host-made state */
  lua_State *L2 = luaL_newstate();
  mtlua_openlibs(L2);
  ok(mtlua_dostring(L2, "assert(class and isinstance and require('time').sleep)") == LUA_OK,
     "mtlua_openlibs on a host state");
  ok(mtlua_close(L2) == 0, "clean close → 0");

  printf("1..%d\n", count);
  return failed ? 1 : 0;
}
