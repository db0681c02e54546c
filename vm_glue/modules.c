/*
** modules.c -- the tables of modules declared in modules.h.
*/
#include "modules.h"

const luaL_Reg mt_c_modules[] = {
  {"_threading", luaopen_mt_threading},
  {"time", luaopen_mt_time},
  {"pickle", luaopen_mt_pickle},
  {"socket", luaopen_mt_socket},
  {"queue", luaopen_mt_queue},
  {"_pool", luaopen_mt_pool},
  {"_multiprocessing", luaopen_mt_multiprocessing},
  {"_shm", luaopen_mt_shm},
  {"_mpsync", luaopen_mt_mpsync},
  {"_greenlet", luaopen_mt_greenlet},
  {"_hub", luaopen_mt_hub},
  {NULL, NULL}
};

/* loaded in this order by mtlua_openlibs; each patches a std library */
const luaL_Reg mt_patches[] = {
  {"_mt_os", luaopen_mt_os},
  {"_mt_io", luaopen_mt_io},
  {"_mt_coroutine", luaopen_mt_coroutine},
  {NULL, NULL}
};
