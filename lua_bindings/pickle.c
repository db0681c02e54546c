/*
** pickle.c -- serializing Lua values (SPEC §9): the `pickle` module and
** the C API of pickle.h that multiprocessing uses per queue item.
**
** Format (all integers little-endian, varints LEB128):
**   pickle  = magic value [mac]
**   magic   = 0xA1 (data only) | 0xA2 (holds code: an 8-byte SipHash-2-4
**             of everything before it follows the value)
**   value   = 0x80|n          integer 0..127
**           | 0x40|n bytes    string of length 0..31
**           | NIL | FALSE | TRUE
**           | INT zigzag-varint | FLOAT 8 bytes (the IEEE bits)
**           | STR varint bytes
**           | TABLE body | MTABLE body value(the metatable)
**           | INST name body  (a class instance, by class __name__)
**             (these three tags get the bit SHARED when a REF names
**             the table: loads keeps only those in its memo)
**           | CLASS name      | REF varint (memo index) | GLOBALS
**           | LFUNC varint bytecode varint(nups) upvalue*
**           | CFUNC name      (module "\0" field ["\0" field])
**           | REDUCE value(func) value(args)
**   body    = varint(narr) varint(nhash) value*narr (value value)*nhash
**   upvalue = 0 value | 1 varint (shares an upvalue seen before)
** Tables and Lua functions get memo indices (1, 2, ...) in the order
** they are met, when they are created, so cycles and shared references
** come back as one object.  A REDUCE result gets its index after its
** func and args.  dumps sets a table's SHARED bit when it first writes
** a REF to it (the tag is behind it in the buffer by then).
**
** Lua 5.4 has no bytecode verifier, and REDUCE and CFUNC run code on
** loads, so a pickle that holds code carries a MAC keyed by a random
** key made once per process tree (at program start: forked children
** inherit it).  loads refuses code in a pickle without a valid MAC;
** data-only pickles need none.
**
** Choices: a table with a metatable that is not a class is pickled with
** its metatable (by value, like any table); a class (the table made by
** class()) is pickled by name.  Any value that is the global table is
** pickled as "the receiver's globals".
*/
#define _GNU_SOURCE
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "mt_core.h"
#include "pickle.h"
#include "pickle_names.h"

#define PK_MAGIC_DATA 0xA1
#define PK_MAGIC_CODE 0xA2
#define PK_MACLEN 8
#define PK_MAXDEPTH 2000      /* nesting limit of dumps and loads */
#define PK_MAXARGS 10000      /* arguments of a REDUCE call */

enum {
  T_NIL, T_FALSE, T_TRUE, T_INT, T_FLOAT, T_STR, T_TABLE, T_MTABLE,
  T_INST, T_CLASS, T_REF, T_GLOBALS, T_LFUNC, T_CFUNC, T_REDUCE
};
#define T_SHARED 0x20 /* on TABLE, MTABLE, INST: a REF to it follows */
#define T_SSTR 0x40   /* 0x40..0x5f: a string of length 0..31 */
#define T_SINT 0x80   /* 0x80..0xff: an integer 0..127 */

static const char BUF_MT[] = "mtlua.pickle.buf";

int luaopen_mt_pickle(lua_State *L);

/* ---------------------------------------------------------- the MAC */

static uint64_t pk_key[2];

static inline uint64_t get64le(const unsigned char *p) {
  uint64_t v;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  memcpy(&v, p, sizeof v);
#else
  v = 0;
  for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
#endif
  return v;
}

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND do { \
    v0 += v1; v1 = ROTL(v1, 13); v1 ^= v0; v0 = ROTL(v0, 32); \
    v2 += v3; v3 = ROTL(v3, 16); v3 ^= v2; \
    v0 += v3; v3 = ROTL(v3, 21); v3 ^= v0; \
    v2 += v1; v1 = ROTL(v1, 17); v1 ^= v2; v2 = ROTL(v2, 32); \
  } while (0)

/* SipHash-2-4 (Aumasson & Bernstein), 64-bit output. */
static uint64_t siphash24(const uint64_t k[2], const unsigned char *in, size_t len) {
  uint64_t v0 = 0x736f6d6570736575ULL ^ k[0], v1 = 0x646f72616e646f6dULL ^ k[1];
  uint64_t v2 = 0x6c7967656e657261ULL ^ k[0], v3 = 0x7465646279746573ULL ^ k[1];
  const unsigned char *end = in + (len & ~(size_t)7);
  for (; in != end; in += 8) {
    uint64_t m = get64le(in);
    v3 ^= m; SIPROUND; SIPROUND; v0 ^= m;
  }
  uint64_t b = (uint64_t)len << 56;
  for (int i = (int)(len & 7) - 1; i >= 0; i--) b |= (uint64_t)in[i] << (8 * i);
  v3 ^= b; SIPROUND; SIPROUND; v0 ^= b;
  v2 ^= 0xff; SIPROUND; SIPROUND; SIPROUND; SIPROUND;
  return v0 ^ v1 ^ v2 ^ v3;
}

static void put64le(unsigned char *p, uint64_t v) {
  for (int i = 0; i < 8; i++) { p[i] = (unsigned char)v; v >>= 8; }
}

/* The key is made before main, so every process forked from this one
** (at any depth) shares it and no other process knows it.  (A fuzzing
** build uses a fixed key so that its harness can sign mutated input.) */
__attribute__((constructor)) static void pk_key_init(void) {
#ifndef PK_FUZZ
  unsigned char k[16];
  size_t got = 0;
  while (got < sizeof k) {
    ssize_t r = getrandom(k + got, sizeof k - got, 0);
    if (r <= 0) break;
    got += (size_t)r;
  }
  if (got < sizeof k) {   /* no getrandom: /dev/urandom, then clocks */
    int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
      ssize_t r = read(fd, k, sizeof k);
      if (r == (ssize_t)sizeof k) got = sizeof k;
      close(fd);
    }
  }
  if (got < sizeof k) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t a = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 30) ^ (uint64_t)getpid();
    uint64_t b = (uint64_t)(uintptr_t)&got ^ (uint64_t)clock();
    put64le(k, a); put64le(k + 8, b);
  }
  pk_key[0] = get64le(k);
  pk_key[1] = get64le(k + 8);
#endif
}

#ifdef PK_FUZZ
/* For the fuzz harness: rewrites the MAC of a signed pickle in place. */
void pk_fuzz_sign(unsigned char *s, size_t len) {
  if (len > PK_MACLEN && s[0] == PK_MAGIC_CODE)
    put64le(s + len - PK_MACLEN, siphash24(pk_key, s, len - PK_MACLEN));
}
#endif

static int mac_ok(const unsigned char *s, size_t len) {
  unsigned char want[PK_MACLEN];
  put64le(want, siphash24(pk_key, s, len));
  unsigned diff = 0;
  for (int i = 0; i < PK_MACLEN; i++) diff |= want[i] ^ s[len + i];
  return diff == 0;
}

/* ------------------------------------------------ the output buffer */

#define PK_UNLIKELY(x) __builtin_expect(!!(x), 0)
#define PK_LIKELY(x) __builtin_expect(!!(x), 1)
#define PK_NOPOS SIZE_MAX     /* tag position of a memo entry never patched */
#define PK_KEEP_BYTES ((size_t)1 << 18)   /* a cached box keeps this much */
#define PK_KEEP_SLOTS ((size_t)1 << 14)   /* ... and this many memo slots */

/* The C memory of a dumps: the output buffer, two maps from addresses
** (tables and functions; upvalue ids) to indices, and the offset of
** each memo entry's tag (patched to T_SHARED when a REF to it is
** written), in a userdata box so that an error anywhere leaves them to
** the collector.  A box is cached in the registry between calls, so
** that a dumps mostly finds its memory already there.
** The maps are open-addressing hash tables with a log of the slots in
** use, so that emptying one costs what was put in it. */
typedef struct pk_slot { const void *key; lua_Integer val; } pk_slot;
typedef struct pk_map { pk_slot *slots; size_t *used; size_t cap, n; } pk_map;
typedef struct pk_buf {
  unsigned char *p;
  size_t n, cap;
  pk_map memo, upv;
  size_t *tagpos;      /* memo index -> offset of its tag, or PK_NOPOS */
  size_t poscap;
} pk_buf;

static char buf_cache;   /* registry key (its address) of the cached box */

static void map_free(pk_map *m) {
  free(m->slots);
  free(m->used);
  memset(m, 0, sizeof *m);
}

static void map_clear(pk_map *m) {
  if (m->cap > PK_KEEP_SLOTS) { map_free(m); return; }
  for (size_t i = 0; i < m->n; i++) m->slots[m->used[i]].key = NULL;
  m->n = 0;
}

static int buf_gc(lua_State *L) {
  pk_buf *b = (pk_buf *)luaL_checkudata(L, 1, BUF_MT);
  free(b->p);
  free(b->tagpos);
  map_free(&b->memo);
  map_free(&b->upv);
  memset(b, 0, sizeof *b);
  return 0;
}

/* Empties a box for the next dumps, freeing what is too big to keep. */
static void buf_reset(pk_buf *b) {
  b->n = 0;
  if (b->cap > PK_KEEP_BYTES) { free(b->p); b->p = NULL; b->cap = 0; }
  if (b->poscap > PK_KEEP_SLOTS) { free(b->tagpos); b->tagpos = NULL; b->poscap = 0; }
  map_clear(&b->memo);
  map_clear(&b->upv);
}

/* Pushes a box: the cached one, taken out of the registry while it is
** in use (a dumps inside a __reduce__ makes its own; an error drops it,
** so a half-used box is never reused), or a new one. */
static pk_buf *buf_take(lua_State *L) {
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &buf_cache) == LUA_TUSERDATA) {
    lua_pushnil(L);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &buf_cache);
    return (pk_buf *)lua_touserdata(L, -1);
  }
  lua_pop(L, 1);
  pk_buf *b = (pk_buf *)lua_newuserdatauv(L, sizeof(pk_buf), 0);
  memset(b, 0, sizeof *b);
  if (luaL_newmetatable(L, BUF_MT)) {
    lua_pushcfunction(L, buf_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, -2);
  return b;
}

/* Empties the box at idx and caches it for the next dumps. */
static void buf_give_back(lua_State *L, int idx) {
  buf_reset((pk_buf *)lua_touserdata(L, idx));
  lua_pushvalue(L, idx);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &buf_cache);
}

/* Makes room for 'extra' more bytes; returns 0 when out of memory. */
static int buf_grow(pk_buf *b, size_t extra) {
  if (extra > SIZE_MAX / 2 - b->n) return 0;
  size_t need = b->n + extra, cap = b->cap ? b->cap : 1024;
  while (cap < need) cap *= 2;
  unsigned char *p = (unsigned char *)realloc(b->p, cap);
  if (p == NULL) return 0;
  b->p = p;
  b->cap = cap;
  return 1;
}

static size_t map_slot(const pk_map *m, const void *k) {
  uint64_t h = (uint64_t)(uintptr_t)k * 0x9E3779B97F4A7C15ULL;
  size_t i = (size_t)(h >> 32) & (m->cap - 1);
  while (m->slots[i].key != NULL && m->slots[i].key != k) i = (i + 1) & (m->cap - 1);
  return i;
}

/* The value of key k, -1 if absent; *slot gets where k is or would go
** (valid for map_put until the map changes). */
static lua_Integer map_find(const pk_map *m, const void *k, size_t *slot) {
  if (m->cap == 0) { *slot = 0; return -1; }
  size_t i = map_slot(m, k);
  *slot = i;
  return m->slots[i].key ? m->slots[i].val : -1;
}

/* Doubles the capacity; returns 0 when out of memory. */
static int map_grow(pk_map *m) {
  pk_map big;
  big.cap = m->cap ? 2 * m->cap : 64;
  big.n = m->n;
  big.slots = (pk_slot *)calloc(big.cap, sizeof *big.slots);
  big.used = (size_t *)malloc(big.cap / 2 * sizeof *big.used);
  if (big.slots == NULL || big.used == NULL) { map_free(&big); return 0; }
  for (size_t i = 0; i < m->n; i++) {
    const pk_slot *s = &m->slots[m->used[i]];
    size_t j = map_slot(&big, s->key);
    big.slots[j] = *s;
    big.used[i] = j;
  }
  map_free(m);
  *m = big;
  return 1;
}

/* Sets k to v, k being absent with 'slot' from map_find; returns 0
** when out of memory. */
static int map_put(pk_map *m, size_t slot, const void *k, lua_Integer v) {
  if (2 * (m->n + 1) > m->cap) {   /* keep the load under 1/2 */
    if (!map_grow(m)) return 0;
    slot = map_slot(m, k);
  }
  m->slots[slot].key = k;
  m->slots[slot].val = v;
  m->used[m->n++] = slot;
  return 1;
}

/* Sets k to v, whether k is there or not. */
static int map_set(pk_map *m, const void *k, lua_Integer v) {
  size_t slot;
  if (map_find(m, k, &slot) < 0) return map_put(m, slot, k, v);
  m->slots[slot].val = v;
  return 1;
}

/* ------------------------------------------------------------ dumps */

/* A dumps first runs in fast mode, where no Lua code runs and nothing
** is allocated from Lua, so no object can die and give its address to
** another: the memo needs no anchor.  Meeting what would run code (a
** __reduce__, a C function not named yet, an __index function on a
** class chain) it stops and starts over in safe mode, which anchors
** every memo entry in a Lua array. */
typedef struct pk_enc {
  lua_State *L;
  pk_buf *b;           /* memo: object -> index (0: being reduced) */
  int anchor;          /* slot: array of the objects in b->memo (safe mode) */
  int is_class;        /* slot: the prelude's is_class (or false) */
  int consts;          /* slot: the key strings below (or nil) */
  const void *globals; /* the global table */
  lua_Integer nmemo, nupv;
  int depth;
  int code;            /* holds code: the pickle gets a MAC */
  int safe;            /* safe mode */
  int restart;         /* fast mode met code: start over in safe mode */
  const char *inst;    /* class name of the innermost instance */
} pk_enc;

/* Keys looked up on classes, made once (a string pushed from C may
** start a collection step, which fast mode must not) */
enum { K_NAME = 1, K_INDEX, K_REDUCE, K_N = K_REDUCE };
static const char *const pk_consts[] = {NULL, "__name__", "__index", "__reduce__"};
static char consts_key;

static void enc_value(pk_enc *e, int idx, int direct);

/* Stops fast mode (returns 1 then); in safe mode, returns 0. */
static int need_safe(pk_enc *e) {
  if (e->safe) return 0;
  e->restart = 1;
  return 1;
}

static void w_grow(pk_enc *e, size_t n) {
  if (!buf_grow(e->b, n)) mt_raise(e->L, "MemoryError", "pickle.dumps: out of memory");
}

static inline unsigned char *w_room(pk_enc *e, size_t n) {
  pk_buf *b = e->b;
  if (PK_UNLIKELY(b->cap - b->n < n)) w_grow(e, n);
  return b->p + b->n;
}

static inline void w_byte(pk_enc *e, int c) {
  *w_room(e, 1) = (unsigned char)c;
  e->b->n++;
}

static void w_bytes(pk_enc *e, const void *s, size_t len) {
  memcpy(w_room(e, len), s, len);
  e->b->n += len;
}

static inline int varint_put(unsigned char *p, uint64_t v) {
  int n = 0;
  while (v >= 0x80) { p[n++] = (unsigned char)(v | 0x80); v >>= 7; }
  p[n++] = (unsigned char)v;
  return n;
}

static void w_varint(pk_enc *e, uint64_t v) {
  e->b->n += varint_put(w_room(e, 10), v);
}

/* Memo entries after 'from' whose tags lie after 'at' moved by delta. */
static void shift_tags(pk_enc *e, lua_Integer from, size_t at, size_t delta) {
  size_t *tp = e->b->tagpos;
  for (lua_Integer k = from + 1; k <= e->nmemo; k++)
    if (tp[k] != PK_NOPOS && tp[k] > at) tp[k] += delta;
}

/* Writes a varint at 'pos', shifting what follows it (whose tags, memo
** entries after 'from', move along). */
static void w_varint_at(pk_enc *e, size_t pos, uint64_t v, lua_Integer from) {
  unsigned char tmp[10];
  int n = varint_put(tmp, v);
  w_room(e, (size_t)n);
  pk_buf *b = e->b;
  memmove(b->p + pos + n, b->p + pos, b->n - pos);
  memcpy(b->p + pos, tmp, (size_t)n);
  b->n += (size_t)n;
  shift_tags(e, from, pos, (size_t)n);
}

/* The scalar encodings write into p (room for 10 + 8 bytes) and return
** the length, so that dumps of a scalar needs no buffer at all. */
static inline int put_int(unsigned char *p, lua_Integer i) {
  if (i >= 0 && i < 128) { p[0] = (unsigned char)(T_SINT | i); return 1; }
  uint64_t u = (uint64_t)i;
  uint64_t zz = (u << 1) ^ (i < 0 ? ~(uint64_t)0 : 0);
  p[0] = T_INT;
  return 1 + varint_put(p + 1, zz);
}

static inline int put_float(unsigned char *p, lua_Number d) {
  uint64_t bits;
  double x = (double)d;
  memcpy(&bits, &x, sizeof bits);
  p[0] = T_FLOAT;
  put64le(p + 1, bits);
  return 9;
}

static inline int put_strhead(unsigned char *p, size_t len) {
  if (len < 32) { p[0] = (unsigned char)(T_SSTR | len); return 1; }
  p[0] = T_STR;
  return 1 + varint_put(p + 1, len);
}

/* A string: head and bytes with one room check. */
static inline void w_str(pk_enc *e, const char *s, size_t len) {
  if (PK_UNLIKELY(len > SIZE_MAX / 2)) w_grow(e, SIZE_MAX);
  unsigned char *p = w_room(e, len + 11);
  int h = put_strhead(p, len);
  memcpy(p + h, s, len);
  e->b->n += (size_t)h + len;
}

/* A raw name: varint length + bytes. */
static void w_name(pk_enc *e, const char *s, size_t len) {
  w_varint(e, len);
  w_bytes(e, s, len);
}

static const char *typename_of(lua_State *L, int idx) {
  if (lua_type(L, idx) == LUA_TUSERDATA && luaL_getmetafield(L, idx, "__name")) {
    const char *n = lua_tostring(L, -1);   /* kept alive by the metatable */
    lua_pop(L, 1);
    if (n) return n;
  }
  return luaL_typename(L, idx);
}

/* TypeError for a value pickle does not carry.  A C object inside a
** class instance (the userdata of a Lock, or its bound methods) names
** the class, as Python names the type it cannot pickle. */
static int enc_refuse(pk_enc *e, int idx, int direct, const char *why) {
  lua_State *L = e->L;
  int t = lua_type(L, idx);
  if (direct && e->inst && (t == LUA_TUSERDATA || t == LUA_TLIGHTUSERDATA ||
                            lua_iscfunction(L, idx)))
    return mt_raise(L, "TypeError", "cannot pickle '%s' object", e->inst);
  if (e->inst)
    return mt_raise(L, "TypeError", "cannot pickle '%s' object%s (in a '%s' instance)",
                    typename_of(L, idx), why, e->inst);
  return mt_raise(L, "TypeError", "cannot pickle '%s' object%s", typename_of(L, idx), why);
}

/* A level uses at most 8 stack slots: room is made for 8 levels at a
** time, so that most levels need no check. */
static void enc_enter(pk_enc *e) {
  if (++e->depth > PK_MAXDEPTH)
    mt_raise(e->L, "ValueError", "pickle.dumps: nesting deeper than %d levels", PK_MAXDEPTH);
  if ((e->depth & 7) == 1) luaL_checkstack(e->L, 64, "pickle.dumps");
}

static void enc_nomem(pk_enc *e) {
  mt_raise(e->L, "MemoryError", "pickle.dumps: out of memory");
}

/* Records the tag offset of memo entry m. */
static void tagpos_set(pk_enc *e, lua_Integer m, size_t tagpos) {
  pk_buf *b = e->b;
  if (PK_UNLIKELY((size_t)m >= b->poscap)) {
    size_t cap = b->poscap ? 2 * b->poscap : 64;
    size_t *tp = (size_t *)realloc(b->tagpos, cap * sizeof *tp);
    if (tp == NULL) enc_nomem(e);
    b->tagpos = tp;
    b->poscap = cap;
  }
  b->tagpos[m] = tagpos;
}

/* Anchors the object at idx as memo entry m (safe mode). */
static void anchor(pk_enc *e, int idx, lua_Integer m) {
  lua_State *L = e->L;
  if (lua_isnil(L, e->anchor)) {
    lua_createtable(L, 16, 0);
    lua_replace(L, e->anchor);
  }
  lua_pushvalue(L, idx);
  lua_rawseti(L, e->anchor, m);
}

/* Gives the object at idx (address ptr, absent from the memo, 'slot'
** from map_find) the next memo index, its tag being at tagpos
** (PK_NOPOS: not a table, never marked shared); returns the index. */
static lua_Integer memo_put(pk_enc *e, int idx, const void *ptr, size_t slot, size_t tagpos) {
  lua_Integer m = ++e->nmemo;
  if (!map_put(&e->b->memo, slot, ptr, m)) enc_nomem(e);
  tagpos_set(e, m, tagpos);
  if (e->safe) anchor(e, idx, m);
  return m;
}

/* The memo index of the object at idx, -1 if not seen yet. */
static inline lua_Integer memo_get(pk_enc *e, int idx) {
  size_t slot;
  return map_find(&e->b->memo, lua_topointer(e->L, idx), &slot);
}

/* Gives the object at idx the next memo index: entered with index 0
** while its __reduce__ ran (safe mode), or new. */
static lua_Integer memo_add(pk_enc *e, int idx, size_t tagpos) {
  const void *ptr = lua_topointer(e->L, idx);
  size_t slot;
  if (map_find(&e->b->memo, ptr, &slot) < 0) return memo_put(e, idx, ptr, slot, tagpos);
  lua_Integer m = ++e->nmemo;
  e->b->memo.slots[slot].val = m;
  tagpos_set(e, m, tagpos);
  anchor(e, idx, m);
  return m;
}

/* Writes a REF to memo entry m, marking its tag shared. */
static void enc_ref(pk_enc *e, lua_Integer m) {
  if (m == 0)
    mt_raise(e->L, "ValueError", "pickle.dumps: an object refers to itself through __reduce__");
  size_t pos = e->b->tagpos[m];
  if (pos != PK_NOPOS) e->b->p[pos] |= T_SHARED;
  unsigned char *p = w_room(e, 11);
  p[0] = T_REF;
  e->b->n += 1 + (size_t)varint_put(p + 1, (uint64_t)m);
}

/* Is the table at idx a class made by class()? */
static int is_class(pk_enc *e, int idx) {
  lua_State *L = e->L;
  if (lua_isnil(L, e->is_class)) {   /* fetched at first need */
    if (lua_getfield(L, LUA_REGISTRYINDEX, "mtlua.prelude") != LUA_TTABLE ||
        lua_getfield(L, -1, "is_class") != LUA_TTABLE) {
      lua_settop(L, lua_gettop(L) - (lua_istable(L, -1) ? 2 : 1));
      lua_pushboolean(L, 0);
    } else {
      lua_remove(L, -2);
    }
    lua_replace(L, e->is_class);
  }
  if (!lua_istable(L, e->is_class)) return 0;
  lua_pushvalue(L, idx);
  int r = lua_rawget(L, e->is_class) != LUA_TNIL;
  lua_pop(L, 1);
  return r;
}

/* Fetches the key strings into their slot; returns 0 (fast mode
** stopped) when they must be made first. */
static int get_consts(pk_enc *e) {
  lua_State *L = e->L;
  if (!lua_isnil(L, e->consts)) return 1;
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &consts_key) != LUA_TTABLE) {
    lua_pop(L, 1);
    if (need_safe(e)) return 0;
    lua_createtable(L, K_N, 0);
    for (int i = 1; i <= K_N; i++) {
      lua_pushstring(L, pk_consts[i]);
      lua_rawseti(L, -2, i);
    }
    lua_pushvalue(L, -1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &consts_key);
  }
  lua_replace(L, e->consts);
  return 1;
}

/* Pushes the class __name__ of class table idx; raises if it has none.
** (get_consts done) */
static const char *class_name(pk_enc *e, int idx, size_t *len) {
  lua_State *L = e->L;
  lua_rawgeti(L, e->consts, K_NAME);
  if (lua_rawget(L, idx) != LUA_TSTRING)
    mt_raise(L, "TypeError", "cannot pickle a class without a string __name__");
  return lua_tolstring(L, -1, len);
}

/* Pushes cls.__reduce__ as indexing finds it, reading rawly along the
** __index chain of tables that classes have; returns 0, pushing
** nothing, when the chain runs through a function (fast mode stopped;
** safe mode calls it).  (get_consts done) */
static int class_reduce(pk_enc *e, int cls) {
  lua_State *L = e->L;
  lua_pushvalue(L, cls);
  for (int hops = 0; hops < 100; hops++) {   /* 100: as Lua's loop limit, smaller */
    int t = lua_gettop(L);
    lua_rawgeti(L, e->consts, K_REDUCE);
    if (lua_rawget(L, t) != LUA_TNIL || !lua_getmetatable(L, t)) {
      lua_remove(L, t);
      return 1;   /* found, or nil at the end of the chain */
    }
    lua_rawgeti(L, e->consts, K_INDEX);
    int kind = lua_rawget(L, -2);
    lua_replace(L, t);
    lua_settop(L, t);
    if (kind == LUA_TNIL) return 1;
    if (kind != LUA_TTABLE) break;
  }
  lua_pop(L, 1);
  if (need_safe(e)) return 0;
  lua_getfield(L, cls, "__reduce__");
  return 1;
}

/* Writes the varint v over the byte reserved at pos, making room when
** it needs more than that byte (the tags of memo entries after 'from'
** move along). */
static void w_patch(pk_enc *e, size_t pos, uint64_t v, lua_Integer from) {
  if (v < 0x80) { e->b->p[pos] = (unsigned char)v; return; }
  unsigned char tmp[10];
  int n = varint_put(tmp, v);
  w_room(e, (size_t)n);
  pk_buf *b = e->b;
  memmove(b->p + pos + n, b->p + pos + 1, b->n - pos - 1);
  memcpy(b->p + pos, tmp, (size_t)n);
  b->n += (size_t)n - 1;
  shift_tags(e, from, pos, (size_t)n - 1);
}

/* One traversal: Lua's next() gives the array part first, in order, so
** the keys 1, 2, ... it starts with are the array; the rest are pairs.
** (A hole, or integer keys living in the hash part, just make pairs.)
** m is the table's memo index. */
static void enc_body(pk_enc *e, int t, lua_Integer m) {
  lua_State *L = e->L;
  uint64_t narr = 0, nhash = 0;
  size_t pos = e->b->n;
  unsigned char *p = w_room(e, 2);   /* narr, nhash: patched at the end */
  p[0] = p[1] = 0;
  e->b->n += 2;
  lua_pushnil(L);
  int top = lua_gettop(L) + 1;   /* the value; the key is below it */
  while (lua_next(L, t)) {
    if (nhash == 0 && lua_isinteger(L, top - 1) &&
        (uint64_t)lua_tointeger(L, top - 1) == narr + 1) {
      enc_value(e, top, 1);
      narr++;
    } else {
      enc_value(e, top - 1, 1);
      if (PK_UNLIKELY(e->restart)) return;
      enc_value(e, top, 1);
      nhash++;
    }
    if (PK_UNLIKELY(e->restart)) return;
    lua_settop(L, top - 1);
  }
  w_patch(e, pos + 1, nhash, m);   /* the later one first: pos stays valid */
  w_patch(e, pos, narr, m);
}

/* A class instance whose class has __reduce__: func, args = obj:__reduce__()
** (safe mode) */
static void enc_reduce(pk_enc *e, int obj, int fn) {
  lua_State *L = e->L;
  if (!map_set(&e->b->memo, lua_topointer(L, obj), 0))   /* a cycle back to obj is an error, not a loop */
    enc_nomem(e);
  lua_pushvalue(L, fn);
  lua_pushvalue(L, obj);
  lua_call(L, 1, 2);
  int args = lua_gettop(L);
  if (!lua_istable(L, args))
    mt_raise(L, "TypeError", "__reduce__ of '%s' must return a function and a table of arguments",
             e->inst ? e->inst : "?");
  w_byte(e, T_REDUCE);
  e->code = 1;
  enc_value(e, args - 1, 0);
  enc_value(e, args, 0);
  lua_pop(L, 2);
  memo_add(e, obj, PK_NOPOS);
}

/* The instance at t has the class mt (at t + 1). */
static void enc_instance(pk_enc *e, int t, int mt) {
  lua_State *L = e->L;
  if (!get_consts(e) || !class_reduce(e, mt)) return;
  const char *saved = e->inst;
  size_t len;
  const char *name = class_name(e, mt, &len);   /* stays on the stack */
  e->inst = name;
  if (!lua_isnil(L, -2)) {
    if (need_safe(e)) return;
    enc_reduce(e, t, lua_gettop(L) - 1);
  } else {
    size_t pos = e->b->n;
    w_byte(e, T_INST);
    w_name(e, name, len);
    enc_body(e, t, memo_add(e, t, pos));
  }
  lua_pop(L, 2);
  e->inst = saved;
}

static void enc_table(pk_enc *e, int t) {
  lua_State *L = e->L;
  const void *ptr = lua_topointer(L, t);
  if (ptr == e->globals) {
    w_byte(e, T_GLOBALS);
    return;
  }
  size_t slot;
  lua_Integer m = map_find(&e->b->memo, ptr, &slot);
  if (m >= 0) {
    enc_ref(e, m);
    return;
  }
  enc_enter(e);
  if (!lua_getmetatable(L, t)) {   /* classes have one: no lookup here */
    size_t pos = e->b->n;
    w_byte(e, T_TABLE);
    enc_body(e, t, memo_put(e, t, ptr, slot, pos));
  } else if (is_class(e, t)) {
    size_t len;
    if (!get_consts(e)) return;
    const char *name = class_name(e, t, &len);
    w_byte(e, T_CLASS);
    w_name(e, name, len);
    lua_pop(L, 2);
  } else if (is_class(e, lua_gettop(L))) {
    enc_instance(e, t, lua_gettop(L));
    if (e->restart) return;
    lua_pop(L, 1);
  } else {   /* a plain metatable travels with the table */
    size_t pos = e->b->n;
    w_byte(e, T_MTABLE);
    enc_body(e, t, memo_add(e, t, pos));
    if (e->restart) return;
    enc_value(e, lua_gettop(L), 0);
    lua_pop(L, 1);
  }
  e->depth--;
}

static int dump_writer(lua_State *L, const void *p, size_t sz, void *ud) {
  pk_buf *b = (pk_buf *)ud;
  if (b->cap - b->n < sz && !buf_grow(b, sz)) return 1;
  memcpy(b->p + b->n, p, sz);
  b->n += sz;
  return 0;
}

static void enc_cfunction(pk_enc *e, int f, int direct) {
  lua_State *L = e->L;
  if (!pk_cname_lookup(L, f, e->safe)) {
    lua_pop(L, 1);
    if (need_safe(e)) return;
    enc_refuse(e, f, direct, lua_getupvalue(L, f, 1) ? " (a C closure with upvalues)"
                                                      : " (a C function not found in any loaded module)");
  }
  size_t len;
  const char *name = lua_tolstring(L, -1, &len);
  w_byte(e, T_CFUNC);
  e->code = 1;
  w_name(e, name, len);
  lua_pop(L, 1);
}

static void enc_upvalues(pk_enc *e, int f) {
  lua_State *L = e->L;
  lua_Debug ar;
  lua_pushvalue(L, f);
  lua_getinfo(L, ">u", &ar);
  w_varint(e, ar.nups);
  for (int i = 1; i <= ar.nups; i++) {
    /* an upvalue lives as long as a closure of the memo has it */
    const void *id = lua_upvalueid(L, f, i);
    size_t slot;
    lua_Integer k = map_find(&e->b->upv, id, &slot);
    if (k > 0) {   /* shared with an earlier closure */
      w_byte(e, 1);
      w_varint(e, (uint64_t)k);
      continue;
    }
    if (!map_put(&e->b->upv, slot, id, ++e->nupv)) enc_nomem(e);
    w_byte(e, 0);
    lua_getupvalue(L, f, i);
    enc_value(e, lua_gettop(L), 0);
    if (e->restart) return;
    lua_pop(L, 1);
  }
}

static void enc_function(pk_enc *e, int f, int direct) {
  lua_State *L = e->L;
  if (lua_iscfunction(L, f)) { enc_cfunction(e, f, direct); return; }
  lua_Integer m = memo_get(e, f);
  if (m >= 0) { enc_ref(e, m); return; }
  enc_enter(e);
  w_byte(e, T_LFUNC);
  e->code = 1;
  m = memo_add(e, f, PK_NOPOS);
  size_t pos = e->b->n;
  lua_pushvalue(L, f);
  int st = lua_dump(L, dump_writer, e->b, 0);   /* keep debug info: tracebacks */
  lua_pop(L, 1);
  if (st != 0) enc_nomem(e);
  w_varint_at(e, pos, (uint64_t)(e->b->n - pos), m);
  enc_upvalues(e, f);
  e->depth--;
}

static void enc_value(pk_enc *e, int idx, int direct) {
  lua_State *L = e->L;
  switch (lua_type(L, idx)) {
    case LUA_TSTRING: {
      size_t len;
      const char *s = lua_tolstring(L, idx, &len);
      w_str(e, s, len);
      break;
    }
    case LUA_TNUMBER: {
      unsigned char *p = w_room(e, 10);
      e->b->n += lua_isinteger(L, idx) ? put_int(p, lua_tointeger(L, idx))
                                       : put_float(p, lua_tonumber(L, idx));
      break;
    }
    case LUA_TTABLE: enc_table(e, idx); break;
    case LUA_TBOOLEAN: w_byte(e, lua_toboolean(L, idx) ? T_TRUE : T_FALSE); break;
    case LUA_TNIL: w_byte(e, T_NIL); break;
    case LUA_TFUNCTION: enc_function(e, idx, direct); break;
    default: enc_refuse(e, idx, direct, "");
  }
}

int pk_scalar_parts(lua_State *L, int idx, unsigned char head[PK_SCALAR_HEAD],
                    const char **tail, size_t *taillen) {
  int n = 1;
  head[0] = PK_MAGIC_DATA;
  *tail = NULL;
  *taillen = 0;
  switch (lua_type(L, idx)) {
    case LUA_TNIL: head[n++] = T_NIL; break;
    case LUA_TBOOLEAN: head[n++] = lua_toboolean(L, idx) ? T_TRUE : T_FALSE; break;
    case LUA_TNUMBER:
      n += lua_isinteger(L, idx) ? put_int(head + 1, lua_tointeger(L, idx))
                                 : put_float(head + 1, lua_tonumber(L, idx));
      break;
    case LUA_TSTRING:
      *tail = lua_tolstring(L, idx, taillen);
      n += put_strhead(head + 1, *taillen);
      break;
    default: return 0;
  }
  return n;
}

/* A scalar needs neither buffer nor memo.  A string is its head and
** bytes joined by lua_concat, which copies both once into the new
** string. */
static int dumps_scalar(lua_State *L, int idx) {
  unsigned char head[PK_SCALAR_HEAD];
  const char *tail;
  size_t taillen;
  int n = pk_scalar_parts(L, idx, head, &tail, &taillen);
  if (n == 0) return 0;
  lua_pushlstring(L, (const char *)head, (size_t)n);
  if (tail != NULL) {
    lua_pushvalue(L, idx);
    lua_concat(L, 2);
  }
  return 1;
}

/* Encodes the value at idx after the version byte; returns 0 when fast
** mode stopped. */
static int enc_run(pk_enc *e, int idx) {
  e->nmemo = e->nupv = 0;
  e->depth = 0;
  e->code = 0;
  e->restart = 0;
  e->inst = NULL;
  e->b->n = 0;
  w_byte(e, PK_MAGIC_DATA);
  enc_value(e, idx, 0);
  return !e->restart;
}

void pk_dumps(lua_State *L, int idx) {
  idx = lua_absindex(L, idx);
  if (dumps_scalar(L, idx)) return;
  luaL_checkstack(L, 16, "pickle.dumps");
  int base = lua_gettop(L) + 1;
  pk_enc e;
  e.L = L;
  e.b = buf_take(L);           /* base */
  lua_pushnil(L); e.anchor = base + 1;
  lua_pushnil(L); e.is_class = base + 2;
  lua_pushnil(L); e.consts = base + 3;
  lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_GLOBALS);
  e.globals = lua_topointer(L, -1);
  lua_pop(L, 1);
  e.safe = 0;
  if (!enc_run(&e, idx)) {
    lua_settop(L, base + 3);
    buf_reset(e.b);
    e.safe = 1;
    enc_run(&e, idx);
  }
  if (e.code) {   /* code inside: sign the whole pickle */
    e.b->p[0] = PK_MAGIC_CODE;
    put64le(w_room(&e, PK_MACLEN), siphash24(pk_key, e.b->p, e.b->n));
    e.b->n += PK_MACLEN;
  }
  lua_settop(L, base);
  lua_pushlstring(L, (const char *)e.b->p, e.b->n);
  buf_give_back(L, base);
  lua_replace(L, base);
}

/* ------------------------------------------------------------ loads */

typedef struct pk_dec {
  lua_State *L;
  const unsigned char *p, *end;
  int memo;            /* slot: memo index -> object */
  int upmemo;          /* slot: upvalue index k -> [2k-1] func memo index, [2k] n */
  int by_name;         /* slot: the prelude's by_name (or false) */
  lua_Integer nmemo, nupv;
  int depth;
  int code;            /* the MAC verified: code may be loaded */
  int gcstop;          /* the collector is stopped by this loads */
} pk_dec;

static void gc_restart(pk_dec *d) {
  if (d->gcstop) lua_gc(d->L, LUA_GCRESTART);
  d->gcstop = 0;
}

static void ensure_classes(lua_State *L) {
  if (!mt_push_class(L, "pickle.UnpicklingError")) {
    lua_pop(L, 1);
    luaL_requiref(L, "pickle", luaopen_mt_pickle, 0);
  }
  lua_pop(L, 1);
}

static int dec_error(pk_dec *d, const char *fmt, ...) {
  lua_State *L = d->L;
  gc_restart(d);   /* ensure_classes may run Lua code */
  va_list ap;
  va_start(ap, fmt);
  const char *msg = lua_pushvfstring(L, fmt, ap);
  va_end(ap);
  ensure_classes(L);
  return mt_raise(L, "pickle.UnpicklingError", "pickle.loads: %s", msg);
}

static inline int r_byte(pk_dec *d) {
  if (PK_UNLIKELY(d->p >= d->end)) dec_error(d, "truncated data");
  return *d->p++;
}

static uint64_t r_varint_long(pk_dec *d) {
  uint64_t v = 0;
  for (int shift = 0; shift < 64; shift += 7) {
    int c = r_byte(d);
    if (shift == 63 && c > 1) break;
    v |= (uint64_t)(c & 0x7f) << shift;
    if (!(c & 0x80)) return v;
  }
  dec_error(d, "integer field too long");
  return 0;
}

static inline uint64_t r_varint(pk_dec *d) {   /* most fit in a byte */
  if (PK_LIKELY(d->p < d->end && *d->p < 0x80)) return *d->p++;
  return r_varint_long(d);
}

static inline const unsigned char *r_bytes(pk_dec *d, uint64_t n) {
  if (PK_UNLIKELY(n > (uint64_t)(d->end - d->p))) dec_error(d, "truncated data");
  const unsigned char *s = d->p;
  d->p += n;
  return s;
}

static size_t remaining(pk_dec *d) { return (size_t)(d->end - d->p); }

static void dec_value(pk_dec *d);

static void dec_enter(pk_dec *d) {   /* as enc_enter */
  if (++d->depth > PK_MAXDEPTH) dec_error(d, "nesting deeper than %d levels", PK_MAXDEPTH);
  if ((d->depth & 7) == 1) luaL_checkstack(d->L, 64, "pickle.loads");
}

/* Gives the object at idx the next memo index; only an object that a
** REF may name (shared tables, functions, REDUCE results) is stored. */
static void dec_memo_add(pk_dec *d, int idx, int store) {
  lua_State *L = d->L;
  d->nmemo++;
  if (!store) return;
  if (lua_isnil(L, d->memo)) {
    lua_newtable(L);
    lua_replace(L, d->memo);
  }
  lua_pushvalue(L, idx);
  lua_rawseti(L, d->memo, d->nmemo);
}

static void need_code(pk_dec *d, const char *what) {
  if (!d->code) dec_error(d, "%s in a pickle without a MAC", what);
}

/* Pushes the receiver's class named by the next name field. */
static void dec_class(pk_dec *d) {
  lua_State *L = d->L;
  uint64_t len = r_varint(d);
  const char *name = (const char *)r_bytes(d, len);
  if (lua_isnil(L, d->by_name)) {
    if (lua_getfield(L, LUA_REGISTRYINDEX, "mtlua.prelude") != LUA_TTABLE ||
        lua_getfield(L, -1, "by_name") != LUA_TTABLE) {
      lua_settop(L, lua_gettop(L) - (lua_istable(L, -1) ? 2 : 1));
      lua_pushboolean(L, 0);
    } else {
      lua_remove(L, -2);
    }
    lua_replace(L, d->by_name);
  }
  lua_pushlstring(L, name, (size_t)len);
  if (!lua_istable(L, d->by_name) || lua_rawget(L, d->by_name) != LUA_TTABLE) {
    lua_pushlstring(L, name, (size_t)len);
    dec_error(d, "unknown class '%s' (not defined in this process)", lua_tostring(L, -1));
  }
}

/* The table body; 'cls' is the slot of an instance's class (0: none).
** Leaves the table on the stack. */
static void dec_body(pk_dec *d, int cls, int shared) {
  lua_State *L = d->L;
  uint64_t narr = r_varint(d), nhash = r_varint(d);
  /* every element takes at least one byte of input: no huge allocation */
  if (narr > remaining(d) || nhash > remaining(d) / 2 || narr > INT_MAX || nhash > INT_MAX)
    dec_error(d, "table size larger than the data");
  lua_createtable(L, (int)narr, (int)nhash);
  int t = lua_gettop(L);
  dec_memo_add(d, t, shared);
  if (cls) {
    lua_pushvalue(L, cls);
    lua_setmetatable(L, t);
  }
  for (uint64_t i = 1; i <= narr; i++) {
    dec_value(d);
    lua_rawseti(L, t, (lua_Integer)i);
  }
  for (uint64_t i = 0; i < nhash; i++) {
    dec_value(d);
    int kt = lua_type(L, -1);
    if (kt == LUA_TNIL || (kt == LUA_TNUMBER && !lua_isinteger(L, -1) && isnan(lua_tonumber(L, -1))))
      dec_error(d, "invalid table key (%s)", kt == LUA_TNIL ? "nil" : "NaN");
    dec_value(d);
    lua_rawset(L, t);
  }
}

static void dec_table(pk_dec *d, int tag) {
  lua_State *L = d->L;
  int shared = tag & T_SHARED;
  tag &= ~T_SHARED;
  dec_enter(d);
  if (tag == T_INST) {
    dec_class(d);
    int cls = lua_gettop(L);
    dec_body(d, cls, shared);
    lua_remove(L, cls);
  } else {
    dec_body(d, 0, shared);
    if (tag == T_MTABLE) {
      dec_value(d);
      if (!lua_istable(L, -1)) dec_error(d, "metatable is not a table");
#ifdef PK_FUZZ   /* the harness must never run fuzzed bytecode */
      if (lua_getfield(L, -1, "__gc") == LUA_TFUNCTION) dec_error(d, "fuzzing: no __gc");
      lua_pop(L, 1);
#endif
      lua_setmetatable(L, -2);
    }
  }
  d->depth--;
}

typedef struct pk_blob { const char *s; size_t n; } pk_blob;

static const char *blob_reader(lua_State *L, void *ud, size_t *size) {
  pk_blob *b = (pk_blob *)ud;
  *size = b->n;
  b->n = 0;
  return *size ? b->s : NULL;
}

static void dec_upvalues(pk_dec *d, int f, lua_Integer fmemo, uint64_t nups) {
  lua_State *L = d->L;
  lua_Debug ar;
  lua_pushvalue(L, f);
  lua_getinfo(L, ">u", &ar);
  if (nups != ar.nups) dec_error(d, "upvalue count does not match the bytecode");
  for (int i = 1; i <= ar.nups; i++) {
    int kind = r_byte(d);
    if (lua_isnil(L, d->upmemo)) {
      lua_newtable(L);
      lua_replace(L, d->upmemo);
    }
    if (kind == 0) {   /* a new upvalue: remember where it lives */
      d->nupv++;
      lua_pushinteger(L, fmemo);
      lua_rawseti(L, d->upmemo, 2 * d->nupv - 1);
      lua_pushinteger(L, i);
      lua_rawseti(L, d->upmemo, 2 * d->nupv);
      dec_value(d);
      lua_setupvalue(L, f, i);
    } else if (kind == 1) {   /* shared with an earlier closure */
      uint64_t k = r_varint(d);
      if (k < 1 || k > (uint64_t)d->nupv) dec_error(d, "bad upvalue reference");
      lua_rawgeti(L, d->upmemo, 2 * (lua_Integer)k - 1);
      lua_rawgeti(L, d->memo, lua_tointeger(L, -1));
      lua_rawgeti(L, d->upmemo, 2 * (lua_Integer)k);
      int n = (int)lua_tointeger(L, -1);
      lua_pop(L, 1);
      lua_upvaluejoin(L, f, i, -1, n);
      lua_pop(L, 2);
    } else {
      dec_error(d, "bad upvalue kind %d", kind);
    }
  }
}

#ifdef PK_FUZZ
/* Lua cannot load hostile bytecode safely (that is what the MAC is
** for), and the harness signs anything: a fuzzing build makes instead
** a closure with the encoded number of upvalues, never called. */
static void fuzz_closure(pk_dec *d, uint64_t nups) {
  lua_State *L = d->L;
  if (nups > 255) dec_error(d, "upvalue count does not match the bytecode");
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  luaL_addstring(&b, "local _");
  for (uint64_t i = 1; i < nups; i++) lua_pushfstring(L, ", u%d", (int)i), luaL_addvalue(&b);
  luaL_addstring(&b, "\nreturn function() return _");
  for (uint64_t i = 1; i < nups; i++) lua_pushfstring(L, ", u%d", (int)i), luaL_addvalue(&b);
  luaL_addstring(&b, nups ? " end" : " end");
  luaL_pushresult(&b);
  if (nups == 0) { lua_pop(L, 1); lua_pushstring(L, "return function() return 0 end"); }
  if (luaL_loadstring(L, lua_tostring(L, -1)) != LUA_OK) lua_error(L);
  lua_call(L, 0, 1);
  lua_remove(L, -2);
}
#endif

static void dec_lfunction(pk_dec *d) {
  lua_State *L = d->L;
  need_code(d, "a function");
  dec_enter(d);
  uint64_t len = r_varint(d);
  pk_blob blob;
  blob.s = (const char *)r_bytes(d, len);
  blob.n = (size_t)len;
  uint64_t nups = r_varint(d);
#ifndef PK_FUZZ
  if (lua_load(L, blob_reader, &blob, "=pickle", "b") != LUA_OK)
    dec_error(d, "bad bytecode: %s", lua_tostring(L, -1));
#else
  (void)blob; (void)blob_reader;
  fuzz_closure(d, nups);
#endif
  int f = lua_gettop(L);
  dec_memo_add(d, f, 1);
  dec_upvalues(d, f, d->nmemo, nups);
  d->depth--;
}

/* Pushes the C function named "module\0field[\0field]" (the receiver
** requires the module when it is not loaded yet). */
static void dec_cfunction(pk_dec *d) {
  lua_State *L = d->L;
  need_code(d, "a C function");
  uint64_t len = r_varint(d);
  const char *name = (const char *)r_bytes(d, len);
  const char *part[3];
  size_t plen[3];
  int n = 0;
  const char *s = name, *end = name + len;
  while (n < 3) {
    const char *z = memchr(s, '\0', (size_t)(end - s));
    part[n] = s;
    plen[n] = (size_t)((z ? z : end) - s);
    if (plen[n] == 0) break;
    n++;
    if (!z) break;
    s = z + 1;
  }
  if (n == 0 || (size_t)(part[n - 1] + plen[n - 1] - name) != len)
    dec_error(d, "bad C function name");
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  lua_pushlstring(L, part[0], plen[0]);
  if (lua_rawget(L, -2) == LUA_TNIL) {
    lua_pop(L, 1);
    if (lua_getglobal(L, "require") != LUA_TFUNCTION)
      dec_error(d, "module of a C function is not loaded");
    lua_pushlstring(L, part[0], plen[0]);
    lua_call(L, 1, 1);
  }
  lua_remove(L, -2);
  for (int i = 1; i < n; i++) {
    if (!lua_istable(L, -1)) dec_error(d, "C function not found");
    lua_pushlstring(L, part[i], plen[i]);
    lua_rawget(L, -2);
    lua_remove(L, -2);
  }
  if (!lua_iscfunction(L, -1)) {
    luaL_Buffer b;   /* the name, dotted: module.field */
    luaL_buffinit(L, &b);
    for (uint64_t i = 0; i < len && i < 200; i++) luaL_addchar(&b, name[i] ? name[i] : '.');
    luaL_pushresult(&b);
    dec_error(d, "no C function named '%s' here", lua_tostring(L, -1));
  }
}

#ifdef PK_FUZZ
static int fuzz_reduce_sink(lua_State *L) {
  lua_pushinteger(L, lua_gettop(L));
  return 1;
}
#endif

/* func(table.unpack(args, 1, args.n or #args)) */
static void dec_reduce(pk_dec *d) {
  lua_State *L = d->L;
  need_code(d, "a __reduce__ call");
  dec_enter(d);
  dec_value(d);
  dec_value(d);
  int args = lua_gettop(L);
  if (!lua_istable(L, args)) dec_error(d, "__reduce__ arguments are not a table");
  lua_Integer n;
  if (lua_getfield(L, args, "n") == LUA_TNUMBER && lua_isinteger(L, -1)) n = lua_tointeger(L, -1);
  else n = (lua_Integer)lua_rawlen(L, args);
  lua_pop(L, 1);
  if (n < 0 || n > PK_MAXARGS) dec_error(d, "bad __reduce__ argument count");
  luaL_checkstack(L, (int)n + 4, "pickle.loads");
#ifdef PK_FUZZ
  lua_pushcfunction(L, fuzz_reduce_sink);
  lua_replace(L, args - 1);
#endif
  lua_pushvalue(L, args - 1);
  for (lua_Integer i = 1; i <= n; i++) lua_rawgeti(L, args, i);
  lua_call(L, (int)n, 1);
  lua_replace(L, args - 1);
  lua_settop(L, args - 1);
  dec_memo_add(d, args - 1, 1);
  d->depth--;
}

static void dec_value(pk_dec *d) {
  lua_State *L = d->L;
  int tag = r_byte(d);
  if (tag >= T_SINT) { lua_pushinteger(L, tag & 0x7f); return; }
  if (tag >= T_SSTR && tag < T_SSTR + 32) {
    size_t len = (size_t)(tag - T_SSTR);
    lua_pushlstring(L, (const char *)r_bytes(d, len), len);
    return;
  }
  switch (tag) {
    case T_NIL: lua_pushnil(L); return;
    case T_FALSE: lua_pushboolean(L, 0); return;
    case T_TRUE: lua_pushboolean(L, 1); return;
    case T_INT: {
      uint64_t zz = r_varint(d);
      uint64_t u = (zz >> 1) ^ (~(zz & 1) + 1);
      lua_pushinteger(L, (lua_Integer)u);
      return;
    }
    case T_FLOAT: {
      uint64_t bits = get64le(r_bytes(d, 8));
      double x;
      memcpy(&x, &bits, sizeof x);
      lua_pushnumber(L, (lua_Number)x);
      return;
    }
    case T_STR: {
      uint64_t len = r_varint(d);
      const char *s = (const char *)r_bytes(d, len);
      lua_pushlstring(L, s, (size_t)len);
      return;
    }
    case T_TABLE: case T_MTABLE: case T_INST:
    case T_SHARED | T_TABLE: case T_SHARED | T_MTABLE: case T_SHARED | T_INST:
      dec_table(d, tag);
      return;
    case T_CLASS: dec_class(d); return;
    case T_REF: {
      uint64_t k = r_varint(d);
      if (k < 1 || k > (uint64_t)d->nmemo || !lua_istable(L, d->memo) ||
          lua_rawgeti(L, d->memo, (lua_Integer)k) == LUA_TNIL)
        dec_error(d, "bad reference %d", (int)(k > INT_MAX ? -1 : (int)k));
      return;
    }
    case T_GLOBALS: lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_GLOBALS); return;
    case T_LFUNC: dec_lfunction(d); return;
    case T_CFUNC: dec_cfunction(d); return;
    case T_REDUCE: dec_reduce(d); return;
    default: dec_error(d, "invalid tag %d", tag);
  }
}

/* Decodes s[0..len) and pushes the value; d->L and d->gcstop are set. */
static void decode(pk_dec *d, const unsigned char *u, size_t len) {
  lua_State *L = d->L;
  luaL_checkstack(L, 16, "pickle.loads");
  int base = lua_gettop(L) + 1;
  lua_pushnil(L); d->memo = base;
  lua_pushnil(L); d->upmemo = base + 1;
  lua_pushnil(L); d->by_name = base + 2;
  d->nmemo = d->nupv = 0;
  d->depth = 0;
  d->p = u + 1;
  d->end = u + len;
  if (len == 0) dec_error(d, "empty data");
  if (u[0] == PK_MAGIC_CODE) {
    if (len < 2 + PK_MACLEN) dec_error(d, "truncated data");
    d->end -= PK_MACLEN;
    if (!mac_ok(u, len - PK_MACLEN))
      dec_error(d, "MAC check failed (code pickled by another process tree, or damaged)");
    d->code = 1;
  } else if (u[0] == PK_MAGIC_DATA) {
    d->code = 0;
  } else {
    dec_error(d, "not a pickle (unknown version byte %d)", (int)u[0]);
  }
  dec_value(d);
  if (d->p != d->end) dec_error(d, "%d trailing bytes after the pickle", (int)(d->end - d->p));
  lua_replace(L, base);
  lua_settop(L, base);
}

typedef struct pk_job { pk_dec d; const unsigned char *s; size_t len; } pk_job;

static int decode_protected(lua_State *L) {
  pk_job *job = (pk_job *)lua_touserdata(L, 1);
  job->d.L = L;
  decode(&job->d, job->s, job->len);
  return 1;
}

/* A loads makes objects that all live (the result, nothing else), so
** the collector's steps during one only trace them in vain, and in
** generational mode they turn them old: freeing them then takes a
** major collection.  A big data-only pickle (no code: no Lua code
** runs) is therefore decoded with the collector stopped, under a pcall
** so that every error restarts it.  Stopping forgives the debt of what
** is allocated meanwhile, so it is paid before, as a step sized by the
** input: a young collection in generational mode (it frees the result
** of the previous loads while that is still young), the matching work
** in incremental mode.  Memory stays bounded in a loop of loads.
** Small pickles are not worth the pcall.  (A collector the program
** stopped is left alone.) */
#define PK_GCSTOP_MIN 4096
#define PK_ALLOC_PER_BYTE 10   /* bytes a loads allocates per input byte, about */

void pk_loads(lua_State *L, const char *s, size_t len) {
  const unsigned char *u = (const unsigned char *)s;
  pk_job job;
  job.d.L = L;
  job.d.gcstop = 0;
  if (len < PK_GCSTOP_MIN || u[0] != PK_MAGIC_DATA || lua_gc(L, LUA_GCISRUNNING) != 1) {
    decode(&job.d, u, len);
    return;
  }
  job.s = u;
  job.len = len;
  luaL_checkstack(L, 2, "pickle.loads");
  lua_pushcfunction(L, decode_protected);
  lua_pushlightuserdata(L, &job);
  size_t kb = len / 1024 * PK_ALLOC_PER_BYTE;
  lua_gc(L, LUA_GCSTEP, (int)(kb < INT_MAX ? kb : INT_MAX));
  lua_gc(L, LUA_GCSTOP);
  job.d.gcstop = 1;
  int st = lua_pcall(L, 1, 1, 0);
  gc_restart(&job.d);
  if (st != LUA_OK) lua_error(L);
}

/* ------------------------------------------------------- the module */

static int l_dumps(lua_State *L) {
  if (lua_gettop(L) < 1)
    return mt_raise(L, "TypeError", "pickle.dumps() missing required argument 'obj'");
  pk_dumps(L, 1);
  return 1;
}

static int l_loads(lua_State *L) {
  size_t len;
  if (lua_type(L, 1) != LUA_TSTRING)
    return mt_argtype_error(L, 1, "pickle.loads", "data", "a string");
  const char *s = lua_tolstring(L, 1, &len);
  pk_loads(L, s, len);
  return 1;
}

/* Makes class 'name', a subclass of the class at base, registered as
** pickle.<name>, and stores it in the module at m. */
static void new_error_class(lua_State *L, int m, const char *name, int base) {
  lua_getfield(L, LUA_REGISTRYINDEX, "mtlua.class");
  lua_pushstring(L, name);
  lua_pushvalue(L, base);
  lua_call(L, 2, 1);
  lua_pushfstring(L, "pickle.%s", name);
  mt_register_class(L, lua_tostring(L, -1), -2);
  lua_pop(L, 1);
  lua_setfield(L, m, name);
}

int luaopen_mt_pickle(lua_State *L) {
  static const luaL_Reg funcs[] = {
    {"dumps", l_dumps},
    {"loads", l_loads},
    {NULL, NULL}
  };
  luaL_newlib(L, funcs);
  int m = lua_gettop(L);
  mt_push_class(L, "Exception");
  new_error_class(L, m, "PickleError", m + 1);
  lua_getfield(L, m, "PickleError");
  new_error_class(L, m, "PicklingError", m + 2);
  new_error_class(L, m, "UnpicklingError", m + 2);
  lua_settop(L, m);
  lua_pushinteger(L, PK_MAXDEPTH);
  lua_setfield(L, m, "MAX_DEPTH");
  return 1;
}
