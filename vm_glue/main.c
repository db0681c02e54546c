/*
** main.c -- the mtlua binary: `mtlua [options] [script [args]]`, with
** the options of Lua's own `lua` plus -u (unbuffered stdout/stderr, as
** `python -u`).  Exit status: the script's os.exit or SystemExit code,
** 1 after an uncaught error (traceback on stderr), 130 after an
** uncaught KeyboardInterrupt.
*/
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>

#include <lauxlib.h>
#include <lualib.h>

#include "mtlua.h"
#include "mt_core.h"

static const char *progname = "mtlua";

static void print_usage(const char *badoption) {
  fprintf(stderr, "%s: ", progname);
  if (badoption[1] == 'e' || badoption[1] == 'l')
    fprintf(stderr, "'%s' needs argument\n", badoption);
  else
    fprintf(stderr, "unrecognized option '%s'\n", badoption);
  fprintf(stderr,
          "usage: %s [options] [script [args]]\n"
          "Available options are:\n"
          "  -e stat   execute string 'stat'\n"
          "  -i        enter interactive mode after executing 'script'\n"
          "  -l mod    require library 'mod' into global 'mod'\n"
          "  -l g=mod  require library 'mod' into global 'g'\n"
          "  -u        unbuffered stdout and stderr (as python -u)\n"
          "  -v        show version information\n"
          "  -E        ignore environment variables\n"
          "  -W        turn warnings on\n"
          "  --        stop handling options\n"
          "  -         stop handling options and execute stdin\n",
          progname);
}

enum { HAS_ERROR = 1, HAS_I = 2, HAS_V = 4, HAS_E = 8, HAS_BIG_E = 16, HAS_U = 32, HAS_W = 64 };

/* Scans the options; returns the index of the script (or argc), with
** the HAS_ flags in *flags; -1 with *flags = HAS_ERROR on a bad one. */
static int collect_args(char **argv, int *flags) {
  int i;
  *flags = 0;
  for (i = 1; argv[i] != NULL; i++) {
    const char *a = argv[i];
    if (a[0] != '-') return i;
    switch (a[1]) {
      case '-':
        if (a[2] != '\0') { *flags = HAS_ERROR; return i; }
        return i + 1;
      case '\0': return i;
      case 'E': if (a[2]) { *flags = HAS_ERROR; return i; } *flags |= HAS_BIG_E; break;
      case 'W': if (a[2]) { *flags = HAS_ERROR; return i; } *flags |= HAS_W; break;
      case 'u': if (a[2]) { *flags = HAS_ERROR; return i; } *flags |= HAS_U; break;
      case 'i': if (a[2]) { *flags = HAS_ERROR; return i; } *flags |= HAS_I | HAS_V; break;
      case 'v': if (a[2]) { *flags = HAS_ERROR; return i; } *flags |= HAS_V; break;
      case 'e': *flags |= HAS_E; /* fall through */
      case 'l':
        if (a[2] == '\0') {
          i++;
          if (argv[i] == NULL || argv[i][0] == '-') { *flags = HAS_ERROR; return i - 1; }
        }
        break;
      default: *flags = HAS_ERROR; return i;
    }
  }
  return i;
}

/* arg: the script at 0, the interpreter and options below, args above */
static void create_arg_table(lua_State *L, char **argv, int argc, int script) {
  int narg = argc - (script + 1);
  lua_createtable(L, narg, script + 1);
  for (int i = 0; i < argc; i++) {
    lua_pushstring(L, argv[i]);
    lua_rawseti(L, -2, i - script);
  }
  lua_setglobal(L, "arg");
}

/* Reports an uncaught error and returns its status. */
static int report(lua_State *L, int status) {
  if (status != LUA_OK) {
    if (lua_type(L, -1) == LUA_TSTRING) {
      fprintf(stderr, "%s\n", lua_tostring(L, -1));
      fflush(stderr);
    }
    lua_pop(L, 1);
  }
  return status;
}

static int run_string(lua_State *L, const char *s) {
  return report(L, mtlua_dostring(L, s));
}

static int run_require(lua_State *L, const char *spec) {
  char *copy = strdup(spec);
  char *eq = strchr(copy, '=');
  const char *global = copy, *mod = copy;
  if (eq) { *eq = '\0'; mod = eq + 1; }
  lua_getglobal(L, "require");
  lua_pushstring(L, mod);
  int base = lua_gettop(L) - 1;
  lua_pushcfunction(L, mt_msghandler);
  lua_insert(L, base);
  int status = lua_pcall(L, 1, 1, base);
  lua_remove(L, base);
  if (status == LUA_OK) lua_setglobal(L, global);
  else { mt_report_error(L, -1); lua_pop(L, 1); }
  free(copy);
  return status;
}

static int run_options(lua_State *L, char **argv, int script) {
  for (int i = 1; i < script; i++) {
    const char *a = argv[i];
    if (a[0] != '-' || (a[1] != 'e' && a[1] != 'l' && a[1] != 'W')) continue;
    if (a[1] == 'W') { lua_warning(L, "@on", 0); continue; }
    const char *extra = a + 2;
    if (*extra == '\0') extra = argv[++i];
    int status = a[1] == 'e' ? run_string(L, extra) : run_require(L, extra);
    if (status != LUA_OK) return 0;
  }
  return 1;
}

static int run_init(lua_State *L) {
  const char *name = "=LUA_INIT_5_4";
  const char *init = getenv(name + 1);
  if (init == NULL) { name = "=LUA_INIT"; init = getenv(name + 1); }
  if (init == NULL) return LUA_OK;
  if (init[0] == '@') return report(L, mtlua_dofile(L, init + 1));
  return run_string(L, init);
}

static int run_script(lua_State *L, char **argv, int script, int argc) {
  const char *fname = argv[script];
  if (strcmp(fname, "-") == 0 && strcmp(argv[script - 1], "--") != 0) fname = NULL;
  int status = luaL_loadfile(L, fname);
  if (status != LUA_OK) {
    mt_universe_of(L)->exit_status = 1;
    return report(L, status);
  }
  int n = argc - script - 1;
  luaL_checkstack(L, n + 3, "too many arguments to script");
  for (int i = 1; i <= n; i++) lua_pushstring(L, argv[script + i]);
  int base = lua_gettop(L) - n;
  lua_pushcfunction(L, mt_msghandler);
  lua_insert(L, base);
  status = lua_pcall(L, n, 0, base);
  lua_remove(L, base);
  if (status != LUA_OK) { mt_report_error(L, -1); lua_pop(L, 1); }
  return status;
}

/* ----------------------------------------------------------------- REPL */

static int incomplete(lua_State *L, int status) {
  size_t lmsg;
  const char *msg = lua_tolstring(L, -1, &lmsg);
  const char *eof = "<eof>";
  size_t leof = strlen(eof);
  if (status == LUA_ERRSYNTAX && lmsg >= leof && strcmp(msg + lmsg - leof, eof) == 0) {
    lua_pop(L, 1);
    return 1;
  }
  return 0;
}

static int read_line(lua_State *L, const char *prompt, char *buf, size_t size) {
  fputs(prompt, stdout);
  fflush(stdout);
  mtlua_gil_release(L);   /* other threads run while we wait for a line */
  char *r = fgets(buf, (int)size, stdin);
  mtlua_gil_acquire(L);
  return r != NULL;
}

static void repl(lua_State *L) {
  char line[4096];
  luaL_Buffer unused;
  (void)unused;
  for (;;) {
    if (!read_line(L, "> ", line, sizeof line)) break;
    lua_pushstring(L, line);
    /* first as an expression to print, then as a statement */
    lua_pushfstring(L, "return %s", line);
    int status = luaL_loadbuffer(L, lua_tostring(L, -1), lua_rawlen(L, -1), "=stdin");
    lua_remove(L, -2);
    if (status != LUA_OK) {
      lua_pop(L, 1);
      for (;;) {
        status = luaL_loadbuffer(L, lua_tostring(L, -1), lua_rawlen(L, -1), "=stdin");
        if (!incomplete(L, status)) break;
        if (!read_line(L, ">> ", line, sizeof line)) { lua_pop(L, 1); return; }
        lua_pushstring(L, line);
        lua_concat(L, 2);
      }
      lua_remove(L, -2);
    } else {
      lua_remove(L, -2);
    }
    if (status == LUA_OK) {
      int base = lua_gettop(L);
      lua_pushcfunction(L, mt_msghandler);
      lua_insert(L, base);
      status = lua_pcall(L, 0, LUA_MULTRET, base);
      lua_remove(L, base);
      if (status == LUA_OK && lua_gettop(L) >= base) {
        int n = lua_gettop(L) - base + 1;
        lua_getglobal(L, "print");
        lua_insert(L, base);
        lua_pcall(L, n, 0, 0);
      }
    }
    if (status != LUA_OK) {
      mt_format_error(L, -1);
      fprintf(stderr, "%s\n", lua_tostring(L, -1));
      lua_pop(L, 2);
    }
    lua_settop(L, 0);
  }
  fputc('\n', stdout);
}

static void print_version(void) {
  printf("%s (mtlua: threading, queue, multiprocessing, pool, greenlet, gevent)\n",
         LUA_COPYRIGHT);
  fflush(stdout);
}

/* Lua frees as it collects.  With glibc's default thresholds a burst of
** garbage gives its memory back to the kernel and the next burst faults
** it in again: a third of pickle's time went to page faults.  The
** process keeps some, as CPython's allocator keeps its arenas (the
** binary only: a host program embedding mtlua tunes its own malloc).
** MALLOC_*_ variables in the environment still win. */
static void tune_malloc(void) {
  if (getenv("MALLOC_TRIM_THRESHOLD_") == NULL) mallopt(M_TRIM_THRESHOLD, 32 << 20);
  if (getenv("MALLOC_TOP_PAD_") == NULL) mallopt(M_TOP_PAD, 4 << 20);
  if (getenv("MALLOC_MMAP_THRESHOLD_") == NULL) mallopt(M_MMAP_THRESHOLD, 16 << 20);
}

/* A burst of new objects (10,000 spawned greenlets: a coroutine, its
** stack and CallInfos, tables) spends half its time faulting fresh heap
** pages in, 4 KB at a time.  The first HEAP_HUGE bytes of the heap are
** offered to transparent huge pages (where the system allows them on
** request, "madvise"): one fault per 2 MB.  What glibc does with
** GLIBC_TUNABLES=glibc.malloc.hugetlb=1, which a program cannot set for
** itself; a GLIBC_TUNABLES in the environment is left alone.  The block
** is taken and freed untouched (the trim threshold above keeps the heap
** mapped), so no memory is used until the program uses it. */
#define HEAP_HUGE (14 << 20)
#define HUGE_PAGE ((uintptr_t)2 << 20)

static void heap_hugepages(void) {
  char *p;
  uintptr_t lo, hi;
  if (getenv("GLIBC_TUNABLES") != NULL || getenv("MALLOC_TRIM_THRESHOLD_") != NULL) return;
  p = malloc(HEAP_HUGE);
  if (p == NULL) return;
  lo = ((uintptr_t)p + HUGE_PAGE - 1) & ~(HUGE_PAGE - 1);
  hi = ((uintptr_t)p + HEAP_HUGE) & ~(HUGE_PAGE - 1);
  if (hi > lo) madvise((void *)lo, hi - lo, MADV_HUGEPAGE);
  free(p);
}

int main(int argc, char **argv) {
  int flags;
  tune_malloc();
  heap_hugepages();
  if (argv[0] && argv[0][0]) progname = argv[0];
  int script = collect_args(argv, &flags);
  if (flags == HAS_ERROR) {
    print_usage(argv[script]);
    return 1;
  }
  if (flags & HAS_U) {
    setvbuf(stdout, NULL, _IONBF, 0);
    setvbuf(stderr, NULL, _IONBF, 0);
  }
  lua_State *L = mtlua_newstate();
  if (L == NULL) {
    fprintf(stderr, "%s: cannot create state: not enough memory\n", progname);
    return 1;
  }
  if (flags & HAS_V) print_version();
  if (flags & HAS_BIG_E) {
    lua_pushboolean(L, 1);
    lua_setfield(L, LUA_REGISTRYINDEX, "LUA_NOENV");
  }
  create_arg_table(L, argv, argc, script < argc ? script : 0);
  lua_gc(L, LUA_GCRESTART);
  lua_gc(L, LUA_GCGEN, 0, 0);
  int ok = 1;
  if (!(flags & HAS_BIG_E)) ok = run_init(L) == LUA_OK;
  if (ok) ok = run_options(L, argv, script);
  if (ok && script < argc) ok = run_script(L, argv, script, argc) == LUA_OK;
  if (ok && (flags & HAS_I)) repl(L);
  else if (ok && script == argc && !(flags & (HAS_E | HAS_V))) {
    if (isatty(0)) { print_version(); repl(L); }
    else {
      int status = luaL_loadfile(L, NULL);
      if (status == LUA_OK) {
        int base = lua_gettop(L);
        lua_pushcfunction(L, mt_msghandler);
        lua_insert(L, base);
        status = lua_pcall(L, 0, 0, base);
        lua_remove(L, base);
        if (status != LUA_OK) { mt_report_error(L, -1); lua_pop(L, 1); }
      } else {
        mt_universe_of(L)->exit_status = 1;
        report(L, status);
      }
    }
  }
  return mtlua_close(L);
}
