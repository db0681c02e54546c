/*
** mtlua.h -- the public C API of mtlua: Lua 5.4 with Python's
** multitasking toolkit (threading, queue, multiprocessing, pool,
** greenlet/gevent).  See README.md for an example host.
*/
#ifndef MTLUA_H
#define MTLUA_H

#include <lua.h>

#ifdef __cplusplus
extern "C" {
#endif

/* A new state with every mtlua module and the prelude loaded.  The
** calling OS thread becomes the state's main thread and holds its GIL.
** Each state has its own GIL: several may run in parallel. */
lua_State *mtlua_newstate(void);

/* The same on a state the host made with luaL_newstate (the calling
** thread becomes its main thread and holds its GIL). */
void mtlua_openlibs(lua_State *L);

/* Run a file / a string as the main chunk would be run: returns
** LUA_OK, or an error code with the formatted error (message and
** traceback) on the stack.  An uncaught SystemExit is reported as
** LUA_ERRRUN with the exception object on the stack; mtlua_exitstatus
** tells the status it asks for. */
int mtlua_dofile(lua_State *L, const char *filename);
int mtlua_dostring(lua_State *L, const char *chunk);

/* Around a host's own long work, like Py_BEGIN/END_ALLOW_THREADS:
** other threads of the state run meanwhile.  Do not touch L between. */
void mtlua_gil_release(lua_State *L);
void mtlua_gil_acquire(lua_State *L);

/* For a host OS thread that is not the state's: takes the GIL and
** returns the lua_State this OS thread must use (a Lua thread of the
** state, made on first use).  Pair with mtlua_gil_leave(that state),
** which releases the GIL.  Calls nest. */
lua_State *mtlua_gil_ensure(lua_State *L);
void mtlua_gil_leave(lua_State *Lthread);

/* Joins non-daemon threads and child processes, runs the registered
** exit handlers, closes the state and returns the exit status the
** script asked for (0 when it asked for nothing). */
int mtlua_close(lua_State *L);

#ifdef __cplusplus
}
#endif
#endif
