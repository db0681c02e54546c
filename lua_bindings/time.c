/*
** time.c -- the `time` module: Python's clocks and a sleep that
** releases the GIL (and, under gevent's monkey patching, switches
** greenlets: it waits through mt_wait like every blocking call).
*/
#include <math.h>
#include <time.h>

#include "mt_core.h"

static double clock_seconds(clockid_t id) {
  struct timespec ts;
  clock_gettime(id, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static lua_Integer clock_ns(clockid_t id) {
  struct timespec ts;
  clock_gettime(id, &ts);
  return (lua_Integer)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int t_time(lua_State *L) { lua_pushnumber(L, clock_seconds(CLOCK_REALTIME)); return 1; }
static int t_time_ns(lua_State *L) { lua_pushinteger(L, clock_ns(CLOCK_REALTIME)); return 1; }
static int t_monotonic(lua_State *L) { lua_pushnumber(L, clock_seconds(CLOCK_MONOTONIC)); return 1; }
static int t_monotonic_ns(lua_State *L) { lua_pushinteger(L, clock_ns(CLOCK_MONOTONIC)); return 1; }
static int t_process_time(lua_State *L) {
  lua_pushnumber(L, clock_seconds(CLOCK_PROCESS_CPUTIME_ID));
  return 1;
}
static int t_process_time_ns(lua_State *L) {
  lua_pushinteger(L, clock_ns(CLOCK_PROCESS_CPUTIME_ID));
  return 1;
}
static int t_thread_time(lua_State *L) {
  lua_pushnumber(L, clock_seconds(CLOCK_THREAD_CPUTIME_ID));
  return 1;
}

static int t_sleep(lua_State *L) {
  if (lua_type(L, 1) != LUA_TNUMBER)
    return mt_argtype_error(L, 1, "sleep", "secs", "a number");
  double s = lua_tonumber(L, 1);
  if (isnan(s)) return mt_raise(L, "ValueError", "Invalid value NaN (not a number)");
  if (s < 0) return mt_raise(L, "ValueError", "sleep length must be non-negative");
  double deadline = mt_monotonic() + s;
  mt_waiter w;
  mt_waiter_init(L, &w);
  for (;;) {   /* a wake-up of a plain sleep is spurious: sleep on */
    int r = mt_wait(L, &w, isinf(s) ? -1 : deadline);
    if (r == MT_INTERRUPTED) mt_check_interrupt(L);
    if (r == MT_TIMEDOUT || mt_monotonic() >= deadline) break;
    w.woken = 0;
  }
  return 0;
}

static const luaL_Reg time_funcs[] = {
  {"sleep", t_sleep},
  {"time", t_time},
  {"time_ns", t_time_ns},
  {"monotonic", t_monotonic},
  {"monotonic_ns", t_monotonic_ns},
  {"perf_counter", t_monotonic},
  {"perf_counter_ns", t_monotonic_ns},
  {"process_time", t_process_time},
  {"process_time_ns", t_process_time_ns},
  {"thread_time", t_thread_time},
  {NULL, NULL}
};

int luaopen_mt_time(lua_State *L) {
  luaL_newlib(L, time_funcs);
  return 1;
}
