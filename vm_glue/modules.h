/*
** modules.h -- the C modules of lua_bindings/ that a state carries.
** mt_c_modules go to package.preload (loaded by require); mt_patches
** are loaded at state creation because they extend the standard
** libraries (os, io, coroutine) rather than make a module.
*/
#ifndef MT_MODULES_H
#define MT_MODULES_H

#include <lauxlib.h>

extern const luaL_Reg mt_c_modules[];
extern const luaL_Reg mt_patches[];

int luaopen_mt_threading(lua_State *L);   /* lua_bindings/threading.c */
int luaopen_mt_time(lua_State *L);        /* lua_bindings/time.c */
int luaopen_mt_pickle(lua_State *L);      /* lua_bindings/pickle.c */
int luaopen_mt_socket(lua_State *L);      /* lua_bindings/socket.c */
int luaopen_mt_queue(lua_State *L);       /* lua_bindings/queue.c */
int luaopen_mt_pool(lua_State *L);        /* lua_bindings/pool.c */
int luaopen_mt_os(lua_State *L);          /* lua_bindings/os.c */
int luaopen_mt_io(lua_State *L);          /* lua_bindings/io.c */
int luaopen_mt_coroutine(lua_State *L);   /* lua_bindings/coroutine.c */
int luaopen_mt_greenlet(lua_State *L);    /* lua_bindings/coroutine.c */
int luaopen_mt_hub(lua_State *L);         /* lua_bindings/hub.c */

int luaopen_mt_multiprocessing(lua_State *L);  /* lua_bindings/multiprocessing.c */
int luaopen_mt_shm(lua_State *L);            /* lua_bindings/shm.c */
int luaopen_mt_mpsync(lua_State *L);         /* lua_bindings/mpsync.c */

#endif
