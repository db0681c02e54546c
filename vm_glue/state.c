/*
** state.c -- making and closing mtlua states: the standard libraries,
** the universe and its GIL, the modules (C ones from lua_bindings/,
** Lua ones from lib/ compiled into the binary), the prelude, exit
** handlers, and the host API of mtlua.h.
*/
#include <stdlib.h>
#include <string.h>

#include <lualib.h>

#include "mtlua.h"
#include "mt_core.h"
#include "modules.h"

/* the files of lib/, embedded by the Makefile (build/gen/lib_bundle.c) */
typedef struct mt_libsrc { const char *name; const char *src; size_t len; } mt_libsrc;
extern const mt_libsrc mt_libsrcs[];

static const char ATEXIT_KEY[] = "mtlua.atexit";

static const mt_libsrc *find_lib(const char *name) {
  for (const mt_libsrc *s = mt_libsrcs; s->name != NULL; s++)
    if (strcmp(s->name, name) == 0) return s;
  return NULL;
}

static int load_lib(lua_State *L, const mt_libsrc *s) {
  char chunkname[256];
  snprintf(chunkname, sizeof chunkname, "@mtlua/%s.lua", s->name);
  return luaL_loadbuffer(L, s->src, s->len, chunkname);
}

/* package.preload loader for an embedded Lua module */
static int lib_loader(lua_State *L) {
  const char *name = luaL_checkstring(L, 1);
  const mt_libsrc *s = find_lib(name);
  if (s == NULL) return luaL_error(L, "mtlua: no embedded module '%s'", name);
  if (load_lib(L, s) != LUA_OK) return lua_error(L);
  lua_pushstring(L, name);
  lua_call(L, 1, 1);
  return 1;
}

static void register_modules(lua_State *L) {
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  for (const luaL_Reg *m = mt_c_modules; m->name != NULL; m++) {
    lua_pushcfunction(L, m->func);
    lua_setfield(L, -2, m->name);
  }
  for (const mt_libsrc *s = mt_libsrcs; s->name != NULL; s++) {
    if (strcmp(s->name, "prelude") == 0) continue;
    lua_pushcfunction(L, lib_loader);
    lua_setfield(L, -2, s->name);
  }
  lua_pop(L, 1);
}

static void run_prelude(lua_State *L) {
  const mt_libsrc *s = find_lib("prelude");
  if (s == NULL || load_lib(L, s) != LUA_OK) {
    fprintf(stderr, "mtlua: cannot load the prelude\n");
    abort();
  }
  lua_pushcfunction(L, mt_lua_register_class);
  mt_push_with(L);
  lua_call(L, 2, 1);
  lua_setfield(L, LUA_REGISTRYINDEX, "mtlua.prelude");
  lua_getglobal(L, "class");
  lua_setfield(L, LUA_REGISTRYINDEX, "mtlua.class");
}

void mtlua_openlibs(lua_State *L) {
  luaL_openlibs(L);
  mt_universe *U = mt_universe_new(L);
  if (U == NULL) { fprintf(stderr, "mtlua: out of memory\n"); abort(); }
  mt_interrupt_start(U);
  lua_newtable(L);
  lua_setfield(L, LUA_REGISTRYINDEX, ATEXIT_KEY);
  register_modules(L);
  run_prelude(L);
  for (const luaL_Reg *m = mt_patches; m->name != NULL; m++) {
    luaL_requiref(L, m->name, m->func, 0);
    lua_pop(L, 1);
  }
}

lua_State *mtlua_newstate(void) {
  lua_State *L = luaL_newstate();
  if (L != NULL) mtlua_openlibs(L);
  return L;
}

/* ------------------------------------------------------- exit handlers */

void mt_atexit_push(lua_State *L, int fnidx) {
  fnidx = lua_absindex(L, fnidx);
  lua_getfield(L, LUA_REGISTRYINDEX, ATEXIT_KEY);
  lua_pushvalue(L, fnidx);
  lua_rawseti(L, -2, (lua_Integer)luaL_len(L, -2) + 1);
  lua_pop(L, 1);
}

static int status_of_error(lua_State *L, int idx) {
  if (mt_isinstance(L, idx, "SystemExit")) {
    int status = 0;
    lua_getfield(L, idx, "code");
    if (lua_isinteger(L, -1)) status = (int)lua_tointeger(L, -1);
    else if (lua_toboolean(L, -1)) {   /* a message: printed, status 1 */
      fprintf(stderr, "%s\n", luaL_tolstring(L, -1, NULL));
      lua_pop(L, 1);
      status = 1;
    }
    lua_pop(L, 1);
    return status;
  }
  if (mt_isinstance(L, idx, "KeyboardInterrupt")) return 130;
  return 1;
}

/* Reports an uncaught error the way the binary does and records the
** exit status it asks for. */
static void report_uncaught(lua_State *L, int idx) {
  mt_universe *U = mt_universe_of(L);
  idx = lua_absindex(L, idx);
  U->exit_status = status_of_error(L, idx);
  if (mt_isinstance(L, idx, "SystemExit")) return;
  mt_format_error(L, idx);
  fprintf(stderr, "%s\n", lua_tostring(L, -1));
  fflush(stderr);
  lua_pop(L, 1);
}

/* As CPython's finalisation: the non-daemon threads are waited for
** first, then the exit handlers run (multiprocessing's join of its
** children, pools' terminate...). */
static void join_threads(lua_State *L) {
  int top = lua_gettop(L);
  lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  if (lua_getfield(L, -1, "threading") == LUA_TTABLE &&
      lua_getfield(L, -1, "_shutdown") == LUA_TFUNCTION) {
    lua_pushcfunction(L, mt_msghandler);
    lua_insert(L, -2);
    if (lua_pcall(L, 0, 0, -2) != LUA_OK) report_uncaught(L, -1);
  }
  lua_settop(L, top);
}

void mt_run_atexit(lua_State *L) {
  join_threads(L);
  lua_getfield(L, LUA_REGISTRYINDEX, ATEXIT_KEY);
  for (lua_Integer i = luaL_len(L, -1); i >= 1; i--) {
    lua_pushcfunction(L, mt_msghandler);
    lua_rawgeti(L, -2, i);
    lua_pushnil(L);
    lua_rawseti(L, -4, i);
    if (lua_pcall(L, 0, 0, -2) != LUA_OK) {
      report_uncaught(L, -1);
      lua_pop(L, 1);
      i = luaL_len(L, -2) + 1;   /* handlers may have been added */
    }
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
}

/* ------------------------------------------------------- running code */

static int run_chunk(lua_State *L, int status) {
  if (status == LUA_OK) {
    int base = lua_gettop(L);
    lua_pushcfunction(L, mt_msghandler);
    lua_insert(L, base);
    status = lua_pcall(L, 0, 0, base);
    lua_remove(L, base);
  }
  if (status != LUA_OK) {
    mt_universe *U = mt_universe_of(L);
    U->exit_status = status_of_error(L, -1);
    if (!mt_isinstance(L, -1, "SystemExit")) {
      mt_format_error(L, -1);
      lua_remove(L, -2);
    }
  }
  return status;
}

int mtlua_dofile(lua_State *L, const char *filename) {
  return run_chunk(L, luaL_loadfile(L, filename));
}

int mtlua_dostring(lua_State *L, const char *chunk) {
  return run_chunk(L, luaL_loadstring(L, chunk));
}

void mt_report_error(lua_State *L, int idx) {
  report_uncaught(L, idx);
}

/* ------------------------------------------------------------- the GIL */

void mtlua_gil_release(lua_State *L) {
  mt_blocking_begin(L);
}

void mtlua_gil_acquire(lua_State *L) {
  mt_blocking_end(L);
}

static int gil_held_by(mt_gil *gil, mt_thread *t) {
  pthread_mutex_lock(&gil->mutex);
  int held = gil->locked && gil->holder == t;
  pthread_mutex_unlock(&gil->mutex);
  return held;
}

/* Each nesting level remembers (one bit) whether it took the GIL, so
** that an ensure from a thread already holding it is a no-op. */
lua_State *mtlua_gil_ensure(lua_State *L) {
  mt_universe *U = mt_universe_of(L);
  mt_thread *t = mt_thread_self_in(U);
  if (t == NULL) {   /* a new host thread: record, GIL, then its Lua thread */
    t = mt_thread_alloc(U, NULL, -1);
    if (t == NULL) return NULL;
    mt_thread_bind_self(t);
    gil_acquire(&U->gil, t);
    mt_enter_threaded(U->L);
    t->L = t->running = lua_newthread(U->L);
    t->ref = luaL_ref(U->L, LUA_REGISTRYINDEX);
    mt_thread_link(t);
    t->ensure_taken = 1;
    t->ensure_depth = 1;
    return t->L;
  }
  int take = !gil_held_by(&U->gil, t);
  if (take) gil_acquire(&U->gil, t);
  if (t->ensure_depth < 64) {
    t->ensure_taken = (t->ensure_taken << 1) | (unsigned long long)take;
    t->ensure_depth++;
  }
  return t->L;
}

void mtlua_gil_leave(lua_State *Lt) {
  mt_universe *U = mt_universe_of(Lt);
  mt_thread *t = mt_self(Lt);
  if (t == NULL || t->ensure_depth == 0) return;
  int taken = (int)(t->ensure_taken & 1);
  t->ensure_taken >>= 1;
  t->ensure_depth--;
  if (taken) gil_release(&U->gil, t, 0);
}

/* --------------------------------------------------------------- close */

int mtlua_close(lua_State *L) {
  mt_universe *U = mt_universe_of(L);
  mt_run_atexit(L);
  int status = U->exit_status;
  U->closing = 1;
  mt_interrupt_stop(U);
  lua_close(L);
  mt_join_ending_threads();
  /* daemon threads may still wait for the GIL we keep: the universe
  ** must outlive them, so it is freed only when no thread is left */
  if (U->nthreads <= 1) mt_universe_free(U);
  return status;
}
