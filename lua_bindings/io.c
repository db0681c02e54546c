/*
** io.c -- reads that release the GIL.  Reading a pipe (io.popen), a
** terminal or a socket may wait for long: file:read, io.read and the
** lines iterators on such files do their waiting and their reading
** with the GIL released, so the other threads go on.  Regular files
** (which never wait long) keep Lua's own functions.
*/
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <lualib.h>

#include "mt_core.h"

/* Has the FILE data buffered already?  (glibc's FILE fields) */
static int has_buffered_input(FILE *f) {
  return f->_IO_read_ptr < f->_IO_read_end;
}

static int may_block(FILE *f) {
  struct stat st;
  int fd = fileno(f);
  if (fd < 0 || fstat(fd, &st) != 0) return 0;
  return !S_ISREG(st.st_mode) && !S_ISDIR(st.st_mode);
}

/* Waits, GIL released, until f has input (or EOF/error).  The main
** thread waits in slices so that Ctrl-C is noticed. */
static void wait_readable(lua_State *L, FILE *f) {
  struct pollfd pfd = { fileno(f), POLLIN, 0 };
  mt_thread *self = mt_self(L);
  int slice = (self != NULL && self->is_main) ? 50 : -1;
  while (!has_buffered_input(f)) {
    mt_blocking_begin(L);
    int r = poll(&pfd, 1, slice);
    mt_blocking_end(L);
    mt_check_interrupt(L);
    if (r != 0 && !(r < 0 && errno == EINTR)) return;
  }
}

/* ------------------------------------------------- reading, GIL released */

typedef struct chunk { char *data; size_t len; int eof, err; } chunk;

static void read_line(FILE *f, chunk *c, int keep_newline) {
  size_t cap = 0;
  ssize_t n = getline(&c->data, &cap, f);
  if (n < 0) { c->len = 0; c->eof = feof(f); c->err = ferror(f); return; }
  c->len = (size_t)n;
  if (!keep_newline && c->len > 0 && c->data[c->len - 1] == '\n') c->len--;
}

static void read_count(FILE *f, chunk *c, size_t want) {
  c->data = malloc(want ? want : 1);
  if (c->data == NULL) { c->err = ENOMEM; return; }
  c->len = fread(c->data, 1, want, f);
  c->eof = c->len < want && feof(f);
  c->err = ferror(f);
}

static void read_all(FILE *f, chunk *c) {
  size_t cap = 0;
  for (;;) {
    if (cap - c->len < 4096) {
      size_t ncap = cap ? cap * 2 : 8192;
      char *p = realloc(c->data, ncap);
      if (p == NULL) { c->err = ENOMEM; return; }
      c->data = p;
      cap = ncap;
    }
    size_t n = fread(c->data + c->len, 1, cap - c->len, f);
    c->len += n;
    if (n == 0) { c->err = ferror(f); return; }
  }
}

/* One format of read on f; pushes its result (nil on failure); returns
** 0 when reading must stop.  -1: a format we hand to Lua's own read. */
static int read_format(lua_State *L, FILE *f, int arg) {
  chunk c = { NULL, 0, 0, 0 };
  size_t count = 0;
  int fmt;
  if (lua_type(L, arg) == LUA_TNUMBER) {
    lua_Integer n = luaL_checkinteger(L, arg);
    if (n < 0) n = 0;
    count = (size_t)n;
    fmt = 'c';
  } else {
    const char *p = luaL_checkstring(L, arg);
    if (*p == '*') p++;
    fmt = *p;
    if (fmt != 'l' && fmt != 'L' && fmt != 'a') return -1;
  }
  wait_readable(L, f);
  mt_blocking_begin(L);
  clearerr(f);
  if (fmt == 'a') read_all(f, &c);
  else if (fmt == 'c') { if (count > 0) read_count(f, &c, count); }
  else read_line(f, &c, fmt == 'L');
  mt_blocking_end(L);
  if (c.err) {
    free(c.data);
    errno = c.err;
    return luaL_fileresult(L, 0, NULL), 0;
  }
  int ok;
  if (fmt == 'a') ok = 1;
  else if (fmt == 'c' && count == 0) {   /* read(0): test for end of file */
    int ch = getc(f);
    ok = ch != EOF;
    if (ok) ungetc(ch, f);
  } else ok = c.len > 0 || (fmt != 'c' && !c.eof && c.data != NULL);
  if (ok) lua_pushlstring(L, c.data ? c.data : "", c.len);
  else lua_pushnil(L);
  free(c.data);
  return ok;
}

/* read(f, formats starting at 'first'): Lua's semantics, own reading. */
static int read_formats(lua_State *L, FILE *f, int first, lua_CFunction lua_read) {
  int nargs = lua_gettop(L) - first + 1;
  if (nargs == 0) {   /* default format: a line */
    lua_pushliteral(L, "l");
    nargs = 1;
  }
  int last = first + nargs - 1;
  luaL_checkstack(L, nargs + LUA_MINSTACK, "too many arguments");
  for (int arg = first; arg <= last; arg++) {
    int r = read_format(L, f, arg);
    if (r < 0) {   /* e.g. "n": Lua's own read, once input is there */
      wait_readable(L, f);
      lua_pushcfunction(L, lua_read);
      lua_pushvalue(L, first - 1);
      lua_pushvalue(L, arg);
      lua_call(L, 2, 1);
      r = !lua_isnil(L, -1);
    }
    if (!r) return lua_gettop(L) - last;
  }
  return nargs;
}

static luaL_Stream *tostream(lua_State *L, int idx) {
  return (luaL_Stream *)luaL_testudata(L, idx, LUA_FILEHANDLE);
}

static int usable(luaL_Stream *p) {
  return p != NULL && p->closef != NULL && p->f != NULL && may_block(p->f);
}

/* file:read(...) -- upvalue 1: Lua's own */
static int f_read(lua_State *L) {
  luaL_Stream *p = tostream(L, 1);
  lua_CFunction orig = lua_tocfunction(L, lua_upvalueindex(1));
  if (!usable(p) || has_buffered_input(p->f)) return orig(L);
  return read_formats(L, p->f, 2, orig);
}

/* io.read(...) -- on the default input file; upvalue 1: Lua's file:read */
static int io_read(lua_State *L) {
  lua_getfield(L, LUA_REGISTRYINDEX, "_IO_input");
  lua_insert(L, 1);
  return f_read(L);
}

/* the iterator of lines(): upvalues 1 = Lua's read, 2 = the file, 3.. formats */
static int lines_next(lua_State *L) {
  int n = 0;
  lua_settop(L, 0);
  while (lua_type(L, lua_upvalueindex(n + 2)) != LUA_TNONE) {
    lua_pushvalue(L, lua_upvalueindex(n + 2));
    n++;
  }
  luaL_Stream *p = tostream(L, 1);
  if (p == NULL || p->closef == NULL) return luaL_error(L, "file is already closed");
  int r = f_read(L);
  if (lua_toboolean(L, -r)) return r;
  if (r > 1 && !lua_isnil(L, -r + 1)) return luaL_error(L, "%s", lua_tostring(L, -r + 1));
  return 0;
}

/* file:lines(...) -- upvalue 1: Lua's file:lines, 2: Lua's read */
static int f_lines(lua_State *L) {
  luaL_Stream *p = tostream(L, 1);
  if (!usable(p)) {
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
    return lua_gettop(L);
  }
  int n = lua_gettop(L);
  luaL_argcheck(L, n <= 250, 250, "too many arguments");
  lua_pushvalue(L, lua_upvalueindex(2));
  lua_insert(L, 1);
  lua_pushcclosure(L, lines_next, n + 1);
  return 1;
}

/* io.lines() on the default input: our iterator; with a file name,
** Lua's own (upvalue 1). */
static int io_lines(lua_State *L) {
  if (!lua_isnoneornil(L, 1)) {
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
    return lua_gettop(L);
  }
  if (lua_gettop(L) == 0) lua_pushnil(L);
  lua_getfield(L, LUA_REGISTRYINDEX, "_IO_input");
  lua_replace(L, 1);
  lua_pushvalue(L, lua_upvalueindex(2));   /* our file:lines */
  lua_insert(L, 1);
  lua_call(L, lua_gettop(L) - 1, 1);
  return 1;
}

int luaopen_mt_io(lua_State *L) {
  luaL_getmetatable(L, LUA_FILEHANDLE);
  if (lua_getfield(L, -1, "__index") != LUA_TTABLE) {
    lua_pop(L, 2);
    lua_getglobal(L, "io");
    return 1;
  }
  int methods = lua_gettop(L);
  lua_getglobal(L, "io");
  int io = lua_gettop(L);
  lua_getfield(L, methods, "read");           /* Lua's file:read */
  lua_CFunction lua_read = lua_tocfunction(L, -1);
  lua_pushcclosure(L, f_read, 1);
  lua_setfield(L, methods, "read");
  lua_pushcfunction(L, lua_read);
  lua_pushcclosure(L, io_read, 1);
  lua_setfield(L, io, "read");
  lua_getfield(L, methods, "lines");          /* Lua's file:lines */
  lua_pushcfunction(L, lua_read);
  lua_pushcclosure(L, f_lines, 2);
  lua_pushvalue(L, -1);
  lua_setfield(L, methods, "lines");
  lua_getfield(L, io, "lines");               /* Lua's io.lines */
  lua_insert(L, -2);
  lua_pushcclosure(L, io_lines, 2);
  lua_setfield(L, io, "lines");
  lua_pushvalue(L, io);
  return 1;
}
