/*
** queue.c -- the `queue` module: Queue, LifoQueue, PriorityQueue and
** SimpleQueue between the threads of one process, with Python's API
** (CPython's Lib/queue.py is the model, shutdown() as in 3.13).
**
** A queue is a prelude class instance holding a userdata (the state
** below) whose user value is a Lua table of the items, so items are
** Lua values by reference.  nil items are simply absent slots: every
** position is computed from the explicit count, never from '#'.
**   FIFO:  a ring of 'cap' slots, items at head+1 .. head+count (mod cap)
**   LIFO:  a stack, items at 1 .. count
**   PRIO:  a binary heap, items at 1 .. count
** State is guarded by the GIL: a C function runs without being
** preempted, so put/get that need not wait never drop it.  The one
** exception is PriorityQueue, whose comparisons may run a user's __lt
** (Lua code, preemptible): the heap is only changed after all the
** comparisons of an operation, and only if no other thread changed
** the queue meanwhile ('version'); otherwise the operation starts over.
*/
#include <math.h>
#include <string.h>

#include "mt_core.h"

enum { Q_FIFO, Q_LIFO, Q_PRIO, Q_SIMPLE };

typedef struct q_queue {
  int kind;
  int is_shutdown;
  lua_Integer maxsize;       /* <= 0: unbounded */
  lua_Integer count;
  lua_Integer head;          /* FIFO: slot before the first item (0-based) */
  lua_Integer cap;           /* FIFO: slots in the ring */
  lua_Integer unfinished;    /* puts not yet matched by task_done */
  unsigned long version;     /* bumped by every change of the items */
  mt_waitlist not_empty, not_full, all_done;
} q_queue;

static const char QUEUE_KEY = 'Q';

#define Q_MINCAP 8

/* FIFO and SimpleQueue keep their items in a ring, the others from 1 up. */
#define q_isring(q) ((q)->kind == Q_FIFO || (q)->kind == Q_SIMPLE)

/* Checks that argument 1 is a queue; pushes its userdata and then its
** items table, whose index goes to *items (the userdata just below).
** Methods read their own arguments at fixed positions, so they set the
** top before calling this. */
static q_queue *q_check(lua_State *L, int *items) {
  q_queue *q;
  if (lua_type(L, 1) != LUA_TTABLE || lua_rawgetp(L, 1, &QUEUE_KEY) != LUA_TUSERDATA) {
    lua_pop(L, lua_type(L, 1) == LUA_TTABLE ? 1 : 0);
    mt_raise(L, "TypeError", "expected a Queue object, got %s "
             "(did you call with '.' instead of ':'?)", luaL_typename(L, 1));
  }
  q = (q_queue *)lua_touserdata(L, -1);
  lua_getiuservalue(L, -1, 1);
  *items = lua_gettop(L);
  return q;
}

/* --------------------------------------------------------- containers */

/* Doubles a full ring in place: the items that wrapped around (slots
** 1..head) move just above the old capacity, so they follow the others.
** In place, because a thread parked in put or get holds the table on
** its stack and must find the items there when it wakes. */
static void fifo_grow(lua_State *L, q_queue *q, int items) {
  for (lua_Integer i = 1; i <= q->head; i++) {
    lua_rawgeti(L, items, i);
    lua_rawseti(L, items, q->cap + i);
    lua_pushnil(L);
    lua_rawseti(L, items, i);
  }
  q->cap *= 2;
}

/* Puts the value on top of the stack (popping it) into a FIFO or LIFO. */
static void plain_put(lua_State *L, q_queue *q, int items) {
  if (q->kind == Q_LIFO) {
    lua_rawseti(L, items, q->count + 1);
  } else {
    if (q->count == q->cap) fifo_grow(L, q, items);
    lua_rawseti(L, items, (q->head + q->count) % q->cap + 1);
  }
  q->count++;
  q->version++;
}

/* Pushes the next item of a FIFO or LIFO and removes it. */
static void plain_get(lua_State *L, q_queue *q, int items) {
  lua_Integer slot;
  if (q->kind == Q_LIFO) {
    slot = q->count;
  } else {
    slot = q->head + 1;
    q->head = (q->head + 1) % q->cap;
  }
  lua_rawgeti(L, items, slot);
  lua_pushnil(L);   /* let the collector have it */
  lua_rawseti(L, items, slot);
  q->count--;
  q->version++;
}

/* ----------------------------------------------- priority comparisons */

static int q_less(lua_State *L, int a, int b, int depth);

static const char *q_typename(lua_State *L, int idx) {
  const char *name = NULL;
  if (lua_type(L, idx) == LUA_TTABLE && lua_getmetatable(L, idx)) {
    if (lua_getfield(L, -1, "__name__") == LUA_TSTRING) name = lua_tostring(L, -1);
    lua_pop(L, 2);   /* the class keeps the string alive */
  }
  return name ? name : luaL_typename(L, idx);
}

static int q_notsupported(lua_State *L, int a, int b) {
  return mt_raise(L, "TypeError", "'<' not supported between instances of '%s' and '%s'",
                  q_typename(L, a), q_typename(L, b));
}

static int has_lt(lua_State *L, int idx) {
  int found = luaL_getmetafield(L, idx, "__lt") != LUA_TNIL;
  if (found) lua_pop(L, 1);
  return found;
}

/* A plain table (no metatable) is an array compared like a tuple. */
static int is_tuple(lua_State *L, int idx) {
  if (lua_type(L, idx) != LUA_TTABLE) return 0;
  if (lua_getmetatable(L, idx)) { lua_pop(L, 1); return 0; }
  return 1;
}

static lua_Integer tuple_len(lua_State *L, int idx) {
  lua_Integer n;
  if (lua_getfield(L, idx, "n") == LUA_TNUMBER && lua_isinteger(L, -1))
    n = lua_tointeger(L, -1);
  else
    n = (lua_Integer)lua_rawlen(L, idx);
  lua_pop(L, 1);
  return n;
}

/* Python's tuple order: the first elements that differ decide; if one
** array is a prefix of the other, the shorter is smaller. */
static int tuple_less(lua_State *L, int a, int b, int depth) {
  lua_Integer na = tuple_len(L, a), nb = tuple_len(L, b);
  lua_Integer n = na < nb ? na : nb;
  luaL_checkstack(L, 4, "queue item comparison");
  for (lua_Integer i = 1; i <= n; i++) {
    lua_rawgeti(L, a, i);
    lua_rawgeti(L, b, i);
    int top = lua_gettop(L);
    if (!lua_compare(L, top - 1, top, LUA_OPEQ)) {
      int r = q_less(L, top - 1, top, depth + 1);
      lua_pop(L, 2);
      return r;
    }
    lua_pop(L, 2);
  }
  return na < nb;
}

/* a < b, or TypeError where Python would raise it.  Types are checked
** before lua_compare, so a bad pair never reaches Lua's own error. */
static int q_less(lua_State *L, int a, int b, int depth) {
  int ta = lua_type(L, a), tb = lua_type(L, b);
  if (depth > 100)
    return mt_raise(L, "RecursionError", "maximum recursion depth exceeded in comparison");
  if ((ta == LUA_TNUMBER && tb == LUA_TNUMBER) || (ta == LUA_TSTRING && tb == LUA_TSTRING))
    return lua_compare(L, a, b, LUA_OPLT);
  if (has_lt(L, a) || has_lt(L, b))
    return lua_compare(L, a, b, LUA_OPLT);   /* the user's __lt: may raise */
  if (is_tuple(L, a) && is_tuple(L, b))
    return tuple_less(L, a, b, depth);
  return q_notsupported(L, a, b);
}

/* Compares heap slots i and j (or the value at 'x' when a slot is 0). */
static int slot_less(lua_State *L, int items, lua_Integer i, lua_Integer j, int x) {
  int r;
  if (i) lua_rawgeti(L, items, i); else lua_pushvalue(L, x);
  if (j) lua_rawgeti(L, items, j); else lua_pushvalue(L, x);
  r = q_less(L, lua_gettop(L) - 1, lua_gettop(L), 0);
  lua_pop(L, 2);
  return r;
}

/* Inserts the value at 'x' into the heap.  Returns 0 (nothing changed)
** if a comparison let another thread change the queue: checked after
** each one, as the next would read slots of a heap no longer there. */
static int heap_put(lua_State *L, q_queue *q, int items, int x) {
  unsigned long v = q->version;
  lua_Integer n = q->count + 1, pos = n;
  while (pos > 1) {
    int less = slot_less(L, items, 0, pos / 2, x);
    if (q->version != v) return 0;
    if (!less) break;
    pos /= 2;
  }
  for (lua_Integer cur = n; cur > pos; cur /= 2) {   /* shift the path down */
    lua_rawgeti(L, items, cur / 2);
    lua_rawseti(L, items, cur);
  }
  lua_pushvalue(L, x);
  lua_rawseti(L, items, pos);
  q->count = n;
  q->version++;
  return 1;
}

/* Pushes the smallest item and removes it; returns 0 (nothing pushed or
** changed) if a comparison let another thread change the queue.  The
** last item takes the root's place and sinks: the path is found first,
** then moved, so an error in a comparison leaves the heap as it was. */
static int heap_get(lua_State *L, q_queue *q, int items) {
  unsigned long v = q->version;
  lua_Integer n = q->count - 1, path[64], depth = 0, pos = 1;
  lua_rawgeti(L, items, 1);                 /* the result */
  lua_rawgeti(L, items, q->count);          /* the item that sinks */
  int x = lua_gettop(L), less;
  for (;;) {   /* the version is checked after each comparison, as in heap_put */
    lua_Integer c = 2 * pos;
    if (c > n) break;
    if (c + 1 <= n) {
      less = slot_less(L, items, c + 1, c, x);
      if (q->version != v) break;
      if (less) c++;
    }
    less = slot_less(L, items, c, 0, x);
    if (q->version != v || !less) break;
    path[depth++] = pos = c;
  }
  if (q->version != v) { lua_pop(L, 2); return 0; }
  pos = 1;
  for (lua_Integer k = 0; k < depth; k++) {   /* move the path up */
    lua_rawgeti(L, items, path[k]);
    lua_rawseti(L, items, pos);
    pos = path[k];
  }
  if (n > 0) lua_rawseti(L, items, pos);    /* pops x */
  else lua_pop(L, 1);
  lua_pushnil(L);
  lua_rawseti(L, items, q->count);
  q->count = n;
  q->version++;
  return 1;
}

/* ------------------------------------------------------------ waiting */

/* Waits on wl until woken or the deadline; raises KeyboardInterrupt on
** Ctrl-C.  A wake-up this waiter got but will not use (it timed out or
** was interrupted meanwhile) is passed on, so no put or get is lost. */
static int q_wait(lua_State *L, mt_waitlist *wl, double deadline) {
  mt_waiter w;
  int r;
  if (deadline >= 0 && mt_monotonic() >= deadline) return MT_TIMEDOUT;
  mt_waiter_init(L, &w);
  mt_waitlist_push(wl, &w);
  r = mt_wait(L, &w, deadline);
  mt_waitlist_remove(wl, &w);
  if (r == MT_INTERRUPTED) {
    if (w.woken) mt_wake_one(wl);
    mt_check_interrupt(L);
  }
  if (r == MT_TIMEDOUT && w.woken) r = MT_WOKEN;
  return r;
}

/* Pushes field 'name' of the options table at 'opt', or, when absent,
** its element 'pos' (the Python-call form: get{false, 0.5}). */
static void q_option(lua_State *L, int opt, const char *name, int pos) {
  if (lua_getfield(L, opt, name) == LUA_TNIL) {
    lua_pop(L, 1);
    lua_rawgeti(L, opt, pos);
  }
}

/* The options of put(item, block, timeout) / get(block, timeout), either
** positional from 'idx' or as a table there.  Returns the deadline: -1
** forever, -2 do not block. */
static double q_block_args(lua_State *L, int idx, const char *fname) {
  int block;
  double timeout;
  if (lua_type(L, idx) == LUA_TTABLE) {
    q_option(L, idx, "block", 1);
    q_option(L, idx, "timeout", 2);
    idx = lua_gettop(L) - 1;
  }
  block = lua_isnoneornil(L, idx) || lua_toboolean(L, idx);
  timeout = mt_opt_timeout(L, idx + 1, 0, "timeout", fname);
  if (!block) return -2;
  if (isnan(timeout)) return -1;
  if (timeout < 0) return mt_raise(L, "ValueError", "'timeout' must be a non-negative number");
  return mt_deadline_after(timeout);
}

/* ---------------------------------------------------------- put / get */

static void q_after_put(q_queue *q) {
  if (q->kind != Q_SIMPLE) q->unfinished++;
  if (q->not_empty.head) mt_wake_one(&q->not_empty);
}

/* Stores the value at 'x'; 0 when a priority comparison raced. */
static int q_store(lua_State *L, q_queue *q, int items, int x) {
  if (q->kind == Q_PRIO) return heap_put(L, q, items, x);
  lua_pushvalue(L, x);
  plain_put(L, q, items);
  return 1;
}

static int q_isfull(q_queue *q) {
  return q->maxsize > 0 && q->count >= q->maxsize;
}

static int q_put(lua_State *L) {
  int items, nargs = lua_gettop(L);
  double deadline = -1;
  q_queue *q;
  if (nargs > 2) lua_settop(L, 4);   /* block, timeout (or options) at 3, 4 */
  q = q_check(L, &items);
  if (nargs < 2)
    return mt_raise(L, "TypeError", "put() missing 1 required positional argument: 'item'");
  if (nargs > 2) deadline = q_block_args(L, 3, "put");   /* put(x): no options */
  for (;;) {
    if (q->is_shutdown) return mt_raise(L, "queue.ShutDown", NULL);
    if (q->kind != Q_SIMPLE && q_isfull(q)) {
      if (deadline == -2) return mt_raise(L, "queue.Full", NULL);
      if (q_wait(L, &q->not_full, deadline) == MT_TIMEDOUT && q_isfull(q))
        return mt_raise(L, "queue.Full", NULL);
      continue;   /* re-check shut down and full */
    }
    if (q_store(L, q, items, 2)) break;
  }
  q_after_put(q);
  return 0;
}

static int q_put_nowait(lua_State *L) {
  int items, nargs = lua_gettop(L);
  q_queue *q = q_check(L, &items);
  if (nargs < 2)
    return mt_raise(L, "TypeError", "put_nowait() missing 1 required positional argument: 'item'");
  for (;;) {
    if (q->is_shutdown) return mt_raise(L, "queue.ShutDown", NULL);
    if (q->kind != Q_SIMPLE && q_isfull(q)) return mt_raise(L, "queue.Full", NULL);
    if (q_store(L, q, items, 2)) break;
  }
  q_after_put(q);
  return 0;
}

/* Pushes the next item; 0 when a priority comparison raced. */
static int q_take(lua_State *L, q_queue *q, int items) {
  if (q->kind == Q_PRIO) {
    if (!heap_get(L, q, items)) return 0;
  } else {
    plain_get(L, q, items);
  }
  if (q->not_full.head) mt_wake_one(&q->not_full);
  return 1;
}

static int q_get_with(lua_State *L, q_queue *q, int items, double deadline) {
  for (;;) {
    if (q->count > 0) {
      if (q_take(L, q, items)) return 1;
      continue;
    }
    if (q->is_shutdown) return mt_raise(L, "queue.ShutDown", NULL);
    if (deadline == -2) return mt_raise(L, "queue.Empty", NULL);
    if (q_wait(L, &q->not_empty, deadline) == MT_TIMEDOUT && q->count == 0)
      return mt_raise(L, "queue.Empty", NULL);
  }
}

static int q_get(lua_State *L) {
  int items, nargs = lua_gettop(L);
  q_queue *q;
  if (nargs > 1) lua_settop(L, 3);   /* block, timeout (or options) at 2, 3 */
  q = q_check(L, &items);
  if (nargs <= 1) {   /* get(): the fast path, no options to read */
    if (q->count > 0 && q->kind != Q_PRIO) {
      plain_get(L, q, items);
      if (q->not_full.head) mt_wake_one(&q->not_full);
      return 1;
    }
    return q_get_with(L, q, items, -1);
  }
  return q_get_with(L, q, items, q_block_args(L, 2, "get"));
}

static int q_get_nowait(lua_State *L) {
  int items;
  q_queue *q = q_check(L, &items);
  return q_get_with(L, q, items, -2);
}

/* -------------------------------------------------------- the others */

static int q_qsize(lua_State *L) {
  int items;
  lua_pushinteger(L, q_check(L, &items)->count);
  return 1;
}

static int q_empty(lua_State *L) {
  int items;
  lua_pushboolean(L, q_check(L, &items)->count == 0);
  return 1;
}

static int q_full(lua_State *L) {
  int items;
  lua_pushboolean(L, q_isfull(q_check(L, &items)));
  return 1;
}

static int q_task_done(lua_State *L) {
  int items;
  q_queue *q = q_check(L, &items);
  if (q->unfinished <= 0) return mt_raise(L, "ValueError", "task_done() called too many times");
  if (--q->unfinished == 0) mt_wake_all(&q->all_done);
  return 0;
}

static int q_join(lua_State *L) {
  int items;
  q_queue *q = q_check(L, &items);
  while (q->unfinished > 0) q_wait(L, &q->all_done, -1);
  return 0;
}

/* shutdown(immediate=false), also shutdown{immediate=}: Python 3.13. */
static int q_shutdown(lua_State *L) {
  int items;
  q_queue *q;
  lua_settop(L, 2);   /* 'immediate' at 2, before q_check pushes */
  q = q_check(L, &items);
  if (lua_type(L, 2) == LUA_TTABLE) {   /* shutdown{immediate=} or shutdown{true} */
    q_option(L, 2, "immediate", 1);
    lua_replace(L, 2);
  }
  int immediate = lua_toboolean(L, 2);
  q->is_shutdown = 1;
  if (immediate) {
    while (q->count > 0) {
      lua_Integer slot = q_isring(q) ? q->head + 1 : q->count;
      lua_pushnil(L);   /* dropping needs no order: no comparisons */
      lua_rawseti(L, items, slot);
      if (q_isring(q)) q->head = (q->head + 1) % q->cap;
      q->count--;
      if (q->unfinished > 0) q->unfinished--;
    }
    q->version++;
    mt_wake_all(&q->all_done);
  }
  mt_wake_all(&q->not_empty);
  mt_wake_all(&q->not_full);
  return 0;
}

static int q_tostring(lua_State *L) {
  const char *module = "__main__.";
  luaL_checktype(L, 1, LUA_TTABLE);
  if (!lua_getmetatable(L, 1)) lua_newtable(L);
  if (lua_getfield(L, -1, "__name__") != LUA_TSTRING) {
    lua_pop(L, 1);
    lua_pushliteral(L, "Queue");
  }
  lua_pushliteral(L, "__module__");
  if (lua_rawget(L, -3) == LUA_TSTRING) module = "queue.";
  lua_pushfstring(L, "<%s%s object at %p>", module, lua_tostring(L, -2), lua_topointer(L, 1));
  return 1;
}

/* ------------------------------------------------------ construction */

/* The maxsize argument: nil -> 0; a number; or Queue{maxsize=} / Queue{n}. */
static lua_Integer q_maxsize_arg(lua_State *L, const char *cname) {
  int idx = 2;
  if (lua_type(L, 2) == LUA_TTABLE) {
    if (lua_getfield(L, 2, "maxsize") == LUA_TNIL) {
      lua_pop(L, 1);
      lua_rawgeti(L, 2, 1);
    }
    idx = lua_gettop(L);
  }
  if (lua_isnoneornil(L, idx)) return 0;
  if (lua_type(L, idx) != LUA_TNUMBER)
    return mt_argtype_error(L, idx, cname, "maxsize", "a number");
  if (lua_isinteger(L, idx)) return lua_tointeger(L, idx);
  double d = lua_tonumber(L, idx);
  if (isnan(d)) return mt_raise(L, "ValueError", "%s() argument 'maxsize' must not be NaN", cname);
  if (d >= 9.2e18) return 0;   /* no bound anyone reaches */
  if (d <= 0) return 0;
  return (lua_Integer)ceil(d);   /* count >= 2.5 means count >= 3 */
}

static int q_make(lua_State *L, int kind, lua_Integer maxsize) {
  q_queue *q;
  luaL_checktype(L, 1, LUA_TTABLE);
  q = (q_queue *)lua_newuserdatauv(L, sizeof *q, 1);
  memset(q, 0, sizeof *q);
  q->kind = kind;
  q->maxsize = maxsize;
  q->cap = Q_MINCAP;
  lua_createtable(L, Q_MINCAP, 0);
  lua_setiuservalue(L, -2, 1);
  lua_rawsetp(L, 1, &QUEUE_KEY);
  lua_pushinteger(L, maxsize);
  lua_setfield(L, 1, "maxsize");
  return 0;
}

static int q_init_fifo(lua_State *L) {
  return q_make(L, Q_FIFO, q_maxsize_arg(L, "Queue"));
}

static int q_init_lifo(lua_State *L) {
  return q_make(L, Q_LIFO, q_maxsize_arg(L, "LifoQueue"));
}

static int q_init_prio(lua_State *L) {
  return q_make(L, Q_PRIO, q_maxsize_arg(L, "PriorityQueue"));
}

static int q_init_simple(lua_State *L) {
  if (!lua_isnoneornil(L, 2) && !(lua_type(L, 2) == LUA_TTABLE && lua_rawlen(L, 2) == 0))
    return mt_raise(L, "TypeError", "SimpleQueue() takes no arguments");
  return q_make(L, Q_SIMPLE, 0);
}

static const luaL_Reg queue_methods[] = {
  {"__init__", q_init_fifo},
  {"put", q_put},
  {"put_nowait", q_put_nowait},
  {"get", q_get},
  {"get_nowait", q_get_nowait},
  {"qsize", q_qsize},
  {"empty", q_empty},
  {"full", q_full},
  {"task_done", q_task_done},
  {"join", q_join},
  {"shutdown", q_shutdown},
  {"__tostring", q_tostring},
  {NULL, NULL}
};

static const luaL_Reg simple_methods[] = {
  {"__init__", q_init_simple},
  {"put", q_put},
  {"put_nowait", q_put_nowait},
  {"get", q_get},
  {"get_nowait", q_get_nowait},
  {"qsize", q_qsize},
  {"empty", q_empty},
  {"__tostring", q_tostring},
  {NULL, NULL}
};

/* class(name, base) of the prelude, base at 'baseidx'; then __init__ and
** the module marker that q_tostring reads. */
static void q_newclass(lua_State *L, const char *name, int baseidx, lua_CFunction init) {
  baseidx = lua_absindex(L, baseidx);
  lua_getfield(L, LUA_REGISTRYINDEX, "mtlua.class");
  lua_pushstring(L, name);
  lua_pushvalue(L, baseidx);
  lua_call(L, 2, 1);
  lua_pushcfunction(L, init);
  lua_setfield(L, -2, "__init__");
  lua_pushliteral(L, "queue");
  lua_setfield(L, -2, "__module__");
}

/* An exception class registered by qualified name ("queue.Empty"), so
** that any C code (multiprocessing) can raise it with mt_raise. */
static void q_exception(lua_State *L, const char *field, const char *qualname) {
  mt_push_class(L, "Exception");
  lua_getfield(L, LUA_REGISTRYINDEX, "mtlua.class");
  lua_pushstring(L, qualname);
  lua_pushvalue(L, -3);
  lua_call(L, 2, 1);
  mt_register_class(L, qualname, -1);
  lua_setfield(L, -3, field);
  lua_pop(L, 1);
}

int luaopen_mt_queue(lua_State *L) {
  lua_newtable(L);
  q_exception(L, "Empty", "queue.Empty");
  q_exception(L, "Full", "queue.Full");
  q_exception(L, "ShutDown", "queue.ShutDown");
  mt_newclass(L, "Queue", queue_methods);
  lua_pushliteral(L, "queue");
  lua_setfield(L, -2, "__module__");
  q_newclass(L, "LifoQueue", -1, q_init_lifo);
  lua_setfield(L, -3, "LifoQueue");
  q_newclass(L, "PriorityQueue", -1, q_init_prio);
  lua_setfield(L, -3, "PriorityQueue");
  lua_setfield(L, -2, "Queue");
  mt_newclass(L, "SimpleQueue", simple_methods);
  lua_pushliteral(L, "queue");
  lua_setfield(L, -2, "__module__");
  lua_setfield(L, -2, "SimpleQueue");
  return 1;
}
