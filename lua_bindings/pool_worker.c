/*
** pool_worker.c -- a pool worker's side of its link with the parent
** (functions of module "_pool": recv, send, exit): tasks come down the
** socket, results go into the shared ring (see pool_ring.h and the top
** comment of pool.c).  One worker per process: its state is global.
*/
#define _GNU_SOURCE
#include <errno.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mt_core.h"
#include "pool_ring.h"
#include "shm.h"

/* Its ring (results out, and the job it took: see io_worker_gone). */
static pl_ring *wk_ring;

/* A worker allocates and frees the same large buffers for every task
** (a map chunk's strings: lib/pool.lua frees them after each chunk).
** glibc would give a freed top of the heap back to the kernel at once
** and map and unmap the larger ones: every chunk would fault its pages
** in again, which costs as much as the calls of a cheap function.  The
** worker keeps its memory. */
static void keep_memory(void) {
  mallopt(M_TRIM_THRESHOLD, 64 << 20);
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
}

/* The rings are populated when made (MAP_POPULATE), but a child's
** mapping starts empty: a worker maps its ring's pages now, before a
** task waits for them. */
static void touch_ring(pl_ring *r) {
  volatile const char *p = r->data;
  for (size_t at = 0; at < PL_RING; at += 4096) (void)p[at];
}

void pw_enter(pl_ring *ring) {
  wk_ring = ring;
  keep_memory();
  touch_ring(ring);
}

/* The worker reads its socket in large pieces: tasks sent together
** cost one read.  One worker per process, so one buffer. */
static struct { char *buf; size_t len, off, cap; } wk_in;

static int wk_fill(lua_State *L, int fd) {
  if (wk_in.off > 0) {
    memmove(wk_in.buf, wk_in.buf + wk_in.off, wk_in.len - wk_in.off);
    wk_in.len -= wk_in.off;
    wk_in.off = 0;
  }
  size_t need = wk_in.len + 65536;
  if (wk_in.len >= 4) {
    uint32_t len;
    memcpy(&len, wk_in.buf, 4);
    if (4 + (size_t)len > need) need = 4 + (size_t)len;
  }
  if (need > wk_in.cap) {
    size_t cap = wk_in.cap ? wk_in.cap : 65536;
    while (cap < need) cap *= 2;
    char *p = realloc(wk_in.buf, cap);
    if (p == NULL) return luaL_error(L, "not enough memory");
    wk_in.buf = p;
    wk_in.cap = cap;
  }
  ssize_t r;
  mt_blocking_begin(L);
  do r = read(fd, wk_in.buf + wk_in.len, wk_in.cap - wk_in.len); while (r < 0 && errno == EINTR);
  mt_blocking_end(L);
  if (r <= 0) return 0;
  wk_in.len += (size_t)r;
  return 1;
}

/* _pool.recv(fd) -> job, payload, extra | nil at end of file (no more
** tasks).  extra is nil when the task has none. */
static int wk_recv(lua_State *L) {
  int fd = (int)luaL_checkinteger(L, 1);
  for (;;) {
    size_t avail = wk_in.len - wk_in.off;
    if (avail >= 4) {
      uint32_t len;
      memcpy(&len, wk_in.buf + wk_in.off, 4);
      if (len < 12 || len > PL_MAXFRAME) return luaL_error(L, "pool: damaged task frame");
      if (avail >= 4 + (size_t)len) {
        const char *fr = wk_in.buf + wk_in.off;
        uint64_t job;
        uint32_t plen;
        memcpy(&job, fr + 4, 8);
        memcpy(&plen, fr + 12, 4);
        if (plen > len - 12) return luaL_error(L, "pool: damaged task frame");
        if (wk_ring && (int64_t)job > 0) atomic_store(&wk_ring->took, job);
        lua_pushinteger(L, (lua_Integer)job);
        lua_pushlstring(L, fr + PL_HDR_TASK, plen);
        if (len - 12 > plen) lua_pushlstring(L, fr + PL_HDR_TASK + plen, len - 12 - plen);
        else lua_pushnil(L);
        wk_in.off += 4 + (size_t)len;
        return 3;
      }
    }
    if (!wk_fill(L, fd)) { lua_pushnil(L); return 1; }
  }
}

/* Tells the parent's I/O thread that its ring has data, if it asked
** (it is about to sleep, or sleeps, in poll). */
static void wk_wake_parent(int fd) {
  if (atomic_exchange(&wk_ring->parent_idle, 0)) {
    ssize_t r;
    do r = write(fd, "", 1); while (r < 0 && errno == EINTR);
  }
}

/* Appends n bytes to the ring; while it is full, waits (GIL released)
** for the parent to take some.  Returns 0, or -1 when the parent is
** gone. */
static int wk_put(lua_State *L, int fd, const char *p, size_t n) {
  pl_ring *r = wk_ring;
  while (n > 0) {
    uint64_t tail = atomic_load_explicit(&r->tail, memory_order_relaxed);
    size_t room = PL_RING - (size_t)(tail - atomic_load(&r->head));
    if (room == 0) {
      uint32_t seq = atomic_load(&r->space_seq);
      atomic_store(&r->worker_waits, 1);
      wk_wake_parent(fd);
      if (PL_RING - (size_t)(tail - atomic_load(&r->head)) == 0) {
        mt_blocking_begin(L);
        shm_futex_wait(&r->space_seq, seq, 0.1);
        mt_blocking_end(L);
      }
      atomic_store(&r->worker_waits, 0);
      if (getppid() == 1) return -1;   /* orphaned: nobody will read */
      continue;
    }
    size_t k = n < room ? n : room;
    size_t at = (size_t)(tail % PL_RING), first = PL_RING - at;
    if (first > k) first = k;
    memcpy(r->data + at, p, first);
    memcpy(r->data, p + first, k - first);
    atomic_store(&r->tail, tail + k);
    p += k;
    n -= k;
  }
  return 0;
}

/* _pool.send(fd, job, ok, payload) -> true | false (the parent is
** gone): one result, in the ring at once, so a worker that dies later
** loses nothing it finished. */
static int wk_send(lua_State *L) {
  int fd = (int)luaL_checkinteger(L, 1);
  uint64_t job = (uint64_t)luaL_checkinteger(L, 2);
  char ok = (char)lua_toboolean(L, 3);
  size_t len;
  const char *payload = luaL_checklstring(L, 4, &len);
  if (wk_ring == NULL) return luaL_error(L, "_pool.send: not in a pool worker");
  if (len > PL_MAXFRAME - 16) return mt_raise(L, "ValueError", "pool: result of %d bytes is too large", (int)len);
  char hdr[PL_HDR_RESULT];
  uint32_t flen = (uint32_t)(9 + len);
  memcpy(hdr, &flen, 4);
  memcpy(hdr + 4, &job, 8);
  hdr[12] = ok;
  int gone = wk_put(L, fd, hdr, sizeof hdr) < 0 || wk_put(L, fd, payload, len) < 0;
  if (!gone) wk_wake_parent(fd);
  lua_pushboolean(L, !gone);
  return 1;
}

/* _pool.exit(code): a worker leaves without running the parent's code. */
static int wk_exit(lua_State *L) {
  int code = (int)luaL_optinteger(L, 1, 0);
  fflush(NULL);
  _exit(code);
  return 0;
}

static const luaL_Reg pw_funcs[] = {
  {"recv", wk_recv},
  {"send", wk_send},
  {"exit", wk_exit},
  {NULL, NULL}
};

void pw_setfuncs(lua_State *L) {
  luaL_setfuncs(L, pw_funcs, 0);
}
