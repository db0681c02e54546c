/*
** coroutine.c -- Lua's coroutine library, extended, and greenlets.
**
** resume and wrap are replaced by versions that tell the runtime which
** coroutine runs (so Ctrl-C can stop it), give coroutines made before
** threading began the preemption hook, and pass greenlet switches
** through: a switch yields no values and leaves the current greenlet
** marked GL_SUSPENDED (a plain yield leaves it running), and these
** wrappers forward such a yield up to the greenlet's trampoline, so a
** plain coroutine.yield is never taken for a switch, nor a switch for a
** yield.  coroutine.yield refuses to yield a greenlet's own coroutine
** (there is nobody to yield to: use switch).
**
** Greenlets (module "_greenlet", wrapped by lib/greenlet.lua) are
** explained in coroutine.h.  The C context switch is a few lines of
** assembly on x86-64 and ucontext elsewhere.
*/
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "coroutine.h"

#if LUA_VERSION_RELEASE_NUM >= 50406
#define close_thread(co, L) lua_closethread(co, L)
#else
#define close_thread(co, L) lua_resetthread(co)
#endif

static const char GR_KEY = 'G';            /* instance -> userdata */
static const char GR_UDMT[] = "mtlua.greenlet";
static const char GR_CLASS[] = "mtlua.greenlet.class";
static const char GR_WEAK[] = "mtlua.greenlet.objects";

/* ---------------------------------------------------- C contexts */

#define STACK_SIZE (1024 * 1024)

struct gl_stack {
  void *mem;              /* lowest address (the guard page) */
  size_t size;
  void *sp;
  gl_stack *next;
  gl_ts *ts;
  void *fake;             /* ASan: its fake stack while switched away */
  void *fiber;            /* TSan: its fiber */
  unsigned vg_id;         /* valgrind: its registration */
  gl_stack *all_next;     /* ts->stacks */
};

static void tramp_main(gl_stack *S);

/* The functions a switch passes through (see co_swap). */
#define SWITCH_PATH static inline __attribute__((always_inline))

#if defined(__x86_64__) && !defined(GL_UCONTEXT)
/* co_swap(save, to): saves the callee-saved registers and the FPU
** control words on the current stack, stores the stack pointer in
** *save, and continues on the stack 'to'.  The control words are
** loaded only when they differ from the ones in force: ldmxcsr and
** fldcw stall the pipeline, and nearly always nothing changed them.
** It leaves by an indirect jump, not 'ret': the return-stack predictor
** holds the other stack's return addresses, so a 'ret' always missed,
** while the jump's target is predicted from its history.  For the same
** reason the functions between a switch and the code that goes on
** after it (pin, suspend, do_switch, enter_pinned) are inlined: each
** 'ret' left after a switch is a misprediction. */
void co_swap(void **save, void *to) __attribute__((visibility("hidden")));
void co_entry(void) __attribute__((visibility("hidden")));
__asm__(
  ".text\n"
  ".globl co_swap\n.hidden co_swap\n.type co_swap,@function\n"
  "co_swap:\n"
  "  pushq %rbp\n  pushq %rbx\n  pushq %r12\n  pushq %r13\n  pushq %r14\n  pushq %r15\n"
  "  subq $8, %rsp\n  stmxcsr (%rsp)\n  fnstcw 4(%rsp)\n"
  "  movq %rsp, (%rdi)\n"
  "  movq %rsp, %rax\n"
  "  movq %rsi, %rsp\n"
  "  movl (%rax), %ecx\n  cmpl (%rsp), %ecx\n  je 1f\n  ldmxcsr (%rsp)\n"
  "1:\n  movw 4(%rax), %cx\n  cmpw 4(%rsp), %cx\n  je 2f\n  fldcw 4(%rsp)\n"
  "2:\n  addq $8, %rsp\n"
  "  popq %r15\n  popq %r14\n  popq %r13\n  popq %r12\n  popq %rbx\n  popq %rbp\n"
  "  popq %r8\n  jmp *%r8\n"
  ".size co_swap, .-co_swap\n"
  ".globl co_entry\n.hidden co_entry\n.type co_entry,@function\n"
  "co_entry:\n"
  "  movq %r12, %rdi\n"
  "  callq *%r13\n"
  "  ud2\n"
  ".size co_entry, .-co_entry\n");

/* A fresh stack whose first co_swap lands in tramp_main(S). */
static void ctx_prepare(gl_stack *S) {
  char *top = (char *)S->mem + S->size;
  uint64_t *r = (uint64_t *)(top - 24);   /* return slot: 8 mod 16 */
  r[0] = (uint64_t)co_entry;
  r[-1] = 0;                              /* rbp */
  r[-2] = 0;                              /* rbx */
  r[-3] = (uint64_t)S;                    /* r12: argument */
  r[-4] = (uint64_t)tramp_main;           /* r13: function */
  r[-5] = 0;                              /* r14 */
  r[-6] = 0;                              /* r15 */
  uint32_t *ctl = (uint32_t *)&r[-7];
  ctl[0] = 0x1F80;                        /* mxcsr default */
  ctl[1] = 0x037F;                        /* x87 control word default */
  S->sp = &r[-7];
}
#else
#include <ucontext.h>
/* Portable fallback: a ucontext per saved context (slower: it saves
** the signal mask with a system call). */
typedef struct uctx { ucontext_t uc; } uctx;
static void co_swap(void **save, void *to) {
  uctx here;
  *save = &here;
  swapcontext(&here.uc, &((uctx *)to)->uc);
}
static void uc_entry(unsigned hi, unsigned lo) {
  tramp_main((gl_stack *)(((uintptr_t)hi << 32) | (uintptr_t)lo));
}
static void ctx_prepare(gl_stack *S) {
  uctx *c = (uctx *)S->mem;   /* at the bottom, above the guard page */
  uintptr_t p = (uintptr_t)S;
  getcontext(&c->uc);
  c->uc.uc_stack.ss_sp = (char *)S->mem + 4096;
  c->uc.uc_stack.ss_size = S->size - 4096;
  c->uc.uc_link = NULL;
  makecontext(&c->uc, (void (*)(void))uc_entry, 2, (unsigned)(p >> 32), (unsigned)p);
  S->sp = c;
}
#endif

/* ------------------------------------------ sanitizer annotations */

/* ASan and TSan track one C stack per thread; a context switch must be
** announced to them, or ASan takes the new stack for a wild overflow
** (and a longjmp on it for stack corruption) and TSan mixes up the two
** stacks' shadow call stacks.  Each gl_stack, and the thread's own
** stack (ts->os), is a "fiber" for them. */
#if defined(__SANITIZE_ADDRESS__)
#define GL_ASAN 1
#endif
#if defined(__SANITIZE_THREAD__)
#define GL_TSAN 1
#endif
#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define GL_ASAN 1
#endif
#if __has_feature(thread_sanitizer)
#define GL_TSAN 1
#endif
#endif

#ifdef GL_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif
#ifdef GL_TSAN
#include <sanitizer/tsan_interface.h>
#endif
/* valgrind takes a jump of the stack pointer into a stack it does not
** know for a huge frame (and reports reads of it); registering each
** stack tells it.  The requests cost nothing outside valgrind. */
#if defined(__has_include)
#if __has_include(<valgrind/valgrind.h>)
#include <valgrind/valgrind.h>
#define GL_VALGRIND 1
#endif
#endif

/* Before leaving stack 'from' for 'to'. */
static void san_leave(gl_stack *from, gl_stack *to) {
#ifdef GL_ASAN
  __sanitizer_start_switch_fiber(&from->fake, to->mem, to->size);
#endif
#ifdef GL_TSAN
  __tsan_switch_to_fiber(to->fiber, 0);
#endif
  (void)from; (void)to;
}

/* Just arrived on stack 'here' from 'from'.  The thread's own stack
** learns its bounds from ASan the first time it is left. */
static void san_arrive(gl_stack *here, gl_stack *from) {
#ifdef GL_ASAN
  const void *bottom;
  size_t size;
  __sanitizer_finish_switch_fiber(here->fake, &bottom, &size);
  if (from != NULL && from->mem == NULL) {
    from->mem = (void *)bottom;
    from->size = size;
  }
#endif
  (void)here; (void)from;
}

static void san_stack_new(gl_stack *S) {
#ifdef GL_TSAN
  S->fiber = __tsan_create_fiber(0);
#endif
#ifdef GL_VALGRIND
  S->vg_id = VALGRIND_STACK_REGISTER(S->mem, (char *)S->mem + S->size);
#endif
  (void)S;
}

static void san_stack_free(gl_stack *S) {
#ifdef GL_ASAN
  __asan_unpoison_memory_region(S->mem, S->size);   /* stale redzones */
#endif
#ifdef GL_TSAN
  __tsan_destroy_fiber(S->fiber);
#endif
#ifdef GL_VALGRIND
  VALGRIND_STACK_DEREGISTER(S->vg_id);
#endif
  (void)S;
}

/* In a forked child TSan keeps only the forking fiber: the others are
** made anew (their shadow stacks are lost, nothing else). */
void gl_san_after_fork(gl_ts *ts) {
#ifdef GL_TSAN
  void *cur = __tsan_get_current_fiber();
  if (ts->os != NULL) ts->os->fiber = ts->stack == ts->os ? cur : __tsan_create_fiber(0);
  for (gl_stack *S = ts->stacks; S != NULL; S = S->all_next)
    S->fiber = S == ts->stack ? cur : __tsan_create_fiber(0);
#endif
  (void)ts;
}

/* The record of the calling thread's own stack. */
static gl_stack *san_thread_stack(gl_ts *ts) {
  gl_stack *S = calloc(1, sizeof *S);
  if (S == NULL) return NULL;
  S->ts = ts;
#ifdef GL_TSAN
  S->fiber = __tsan_get_current_fiber();
#endif
  return S;
}

/* Switches from the running stack to 'to' (resuming at 'to_sp'),
** saving the running context in *save.  Returns when something
** switches back. */
SWITCH_PATH void ctx_switch(gl_ts *ts, gl_stack *to, void **save, void *to_sp) {
  gl_stack *from = ts->stack;
  ts->stack = to;
  ts->from = from;
  san_leave(from, to);
  co_swap(save, to_sp);
  san_arrive(from, ts->from);
}

static gl_stack *stack_new(gl_ts *ts) {
  gl_stack *S = calloc(1, sizeof *S);
  if (S == NULL) return NULL;
  S->size = STACK_SIZE;
  S->mem = mmap(NULL, S->size, PROT_READ | PROT_WRITE,
                MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
  if (S->mem == MAP_FAILED) { free(S); return NULL; }
  mprotect(S->mem, 4096, PROT_NONE);   /* a guard page: overflow faults */
  S->ts = ts;
  ctx_prepare(S);
  san_stack_new(S);
  S->all_next = ts->stacks;
  ts->stacks = S;
  return S;
}

static void stack_free(gl_stack *S) {
  san_stack_free(S);
  munmap(S->mem, S->size);
  free(S);
}

/* ------------------------------------------------ thread states */

static __thread gl_ts *tls_ts;   /* this OS thread's states, one per universe */

gl_ts *gl_ts_find(mt_universe *U) {
  for (gl_ts *ts = tls_ts; ts != NULL; ts = ts->link)
    if (ts->U == U) return ts;
  return NULL;
}

static gl_gr *new_gr(lua_State *L, gl_ts *ts, int kind, gl_gr *parent, int parentidx, int selfidx);
static int gr_switch(lua_State *L);

/* The class made by lib/greenlet.lua; registered before any greenlet. */
static void push_class(lua_State *L) {
  if (lua_getfield(L, LUA_REGISTRYINDEX, GR_CLASS) != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_getglobal(L, "require");
    lua_pushliteral(L, "greenlet");
    lua_call(L, 1, 0);
    lua_getfield(L, LUA_REGISTRYINDEX, GR_CLASS);
  }
}

gl_ts *gl_ts_get(lua_State *L) {
  mt_universe *U = mt_universe_of(L);
  gl_ts *ts = tls_ts;
  if (ts != NULL && ts->U == U) return ts;
  ts = gl_ts_find(U);
  if (ts != NULL) return ts;
  ts = calloc(1, sizeof *ts);
  if (ts == NULL) luaL_error(L, "not enough memory");
  ts->U = U;
  ts->thread = mt_self(L);
  ts->os = ts->stack = san_thread_stack(ts);
  if (ts->os == NULL) { free(ts); luaL_error(L, "not enough memory"); }
  ts->Ltr = lua_newthread(L);
  ts->Ltr_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_pushnil(ts->Ltr);                   /* slot 1: the running coroutine */
  ts->main_ref = ts->hub_ref = LUA_NOREF;
  lua_newtable(L);
  ts->pool_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_createtable(L, 16, 0);
  ts->pins_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  ts->link = tls_ts;
  tls_ts = ts;
  ts->main = new_gr(L, ts, GL_MAIN, NULL, 0, 0);
  ts->main->state = GL_RUNNING;
  ts->main_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  ts->current = ts->main;
  return ts;
}

/* The running-state bookkeeping of mt_set_running/mt_prepare_resume,
** with the thread record the greenlet state already holds (a switch
** pays it twice; the generic versions look the thread up each time). */
static void set_running(gl_ts *ts, lua_State *co) {
  if (ts->thread != NULL) ts->thread->running = co;
}

static void prepare_resume(gl_ts *ts, lua_State *co) {
  if (ts->U->threaded && lua_gethook(co) == NULL) mt_prepare_resume(co, co);
  set_running(ts, co);
}

/* ---------------------------------------------------- objects */

/* A switch checks two instances (the target's, then on the way back
** the other's): the last two found are remembered by address.  An
** entry is dropped when its greenlet is collected, which happens
** before its instance table's memory can be reused. */
gl_gr *gl_test(lua_State *L, int idx) {
  if (lua_type(L, idx) != LUA_TTABLE) return NULL;
  const void *p = lua_topointer(L, idx);
  gl_ts *ts = tls_ts;
  if (ts != NULL) {
    if (ts->ck[0] == p) return ts->cg[0];
    if (ts->ck[1] == p) return ts->cg[1];
  }
  lua_rawgetp(L, idx, &GR_KEY);
  gl_gr *g = lua_touserdata(L, -1);
  lua_pop(L, 1);
  if (g != NULL && g->ts == ts && ts->cg[0] != g) {
    ts->ck[1] = ts->ck[0];
    ts->cg[1] = ts->cg[0];
    ts->ck[0] = p;
    ts->cg[0] = g;
  }
  return g;
}

gl_gr *gl_check(lua_State *L, int idx) {
  gl_gr *g = gl_test(L, idx);
  if (g == NULL)
    mt_raise(L, "TypeError", "expected a greenlet, got %s (did you call with '.' instead of ':'?)",
             luaL_typename(L, idx));
  return g;
}

/* The main greenlet and the hub are anchored by registry refs: reading
** those is cheaper than the weak table (every spawn pushes the hub). */
void gl_push(lua_State *L, gl_gr *g) {
  gl_ts *ts = g->ts;
  if (!ts->dead) {
    if (g == ts->hubgr && ts->hub_ref != LUA_NOREF) { lua_rawgeti(L, LUA_REGISTRYINDEX, ts->hub_ref); return; }
    if (g == ts->main && ts->main_ref != LUA_NOREF) { lua_rawgeti(L, LUA_REGISTRYINDEX, ts->main_ref); return; }
  }
  lua_getfield(L, LUA_REGISTRYINDEX, GR_WEAK);
  lua_rawgetp(L, -1, g);
  lua_remove(L, -2);
}

/* The userdata of instance 'idx' (pushed). */
static void push_ud(lua_State *L, int idx) {
  lua_rawgetp(L, idx, &GR_KEY);
}

/* Finished coroutines are reused: a coroutine that returned (or was
** reset after an error) starts afresh when given a new function, and
** making one (a lua_State, its stack, then collecting it) is most of
** what a short-lived greenlet costs. */
#define POOL_MAX 256

/* Pushes a fresh or recycled coroutine of ts. */
static lua_State *pool_take(lua_State *L, gl_ts *ts) {
  if (ts->npool == 0) return lua_newthread(L);
  lua_rawgeti(L, LUA_REGISTRYINDEX, ts->pool_ref);
  lua_rawgeti(L, -1, ts->npool);
  lua_pushnil(L);
  lua_rawseti(L, -3, ts->npool--);
  lua_remove(L, -2);
  return lua_tothread(L, -1);
}

/* A finished coroutine (anchored by the caller) goes to the pool. */
static void pool_give(gl_ts *ts, lua_State *co) {
  lua_State *T = ts->Ltr;
  if (ts->npool >= POOL_MAX || lua_status(co) != LUA_OK || !lua_checkstack(T, 3)) return;
  lua_settop(co, 0);
  lua_rawgeti(T, LUA_REGISTRYINDEX, ts->pool_ref);
  lua_pushthread(co);
  lua_xmove(co, T, 1);
  lua_rawseti(T, -2, ++ts->npool);
  lua_pop(T, 1);
}

/* A greenlet whose run returned lets its coroutine go: the coroutine
** may serve another greenlet.  Its userdata is co[1] (the stack is
** back at its base only after a return: not after an error). */
static int detach_co(gl_gr *x) {
  lua_State *co = x->co;
  if (lua_gettop(co) < 1 || lua_touserdata(co, 1) != x) return 0;
  lua_pushnil(co);
  lua_setiuservalue(co, 1, 3);
  x->co = NULL;
  return 1;
}

/* An instance of greenlet itself (not of a subclass) holds 'switch':
** the class's __index is a C function (for the computed fields dead,
** parent, run) and calling it for every g:switch() costs as much as a
** third of a switch round trip. */
static void own_switch(lua_State *L, int self) {
  lua_pushcfunction(L, gr_switch);
  lua_setfield(L, self, "switch");
}

static int is_plain_instance(lua_State *L, int self) {
  if (!lua_getmetatable(L, self)) return 0;
  lua_getfield(L, LUA_REGISTRYINDEX, GR_CLASS);
  int plain = lua_rawequal(L, -1, -2);
  lua_pop(L, 2);
  return plain;
}

/* Makes a new greenlet whose instance is at selfidx (0: a new one,
** pushed).  For a plain one the run function is on L's top (popped). */
static gl_gr *new_gr(lua_State *L, gl_ts *ts, int kind, gl_gr *parent, int parentidx, int selfidx) {
  int runidx = kind == GL_PLAIN ? lua_absindex(L, -1) : 0;
  int self;
  if (parentidx) parentidx = lua_absindex(L, parentidx);
  if (selfidx) self = lua_absindex(L, selfidx);
  else {
    lua_newtable(L);                                /* the instance */
    self = lua_gettop(L);
    push_class(L);
    lua_setmetatable(L, self);
  }
  gl_gr *g = lua_newuserdatauv(L, sizeof *g, 3);
  memset(g, 0, sizeof *g);
  g->ts = ts;
  g->kind = kind;
  g->state = GL_NEW;
  g->parent = parent;
  g->pin_ref = g->throw_ref = LUA_NOREF;
  ts->nobjects++;
  luaL_setmetatable(L, GR_UDMT);
  lua_pushvalue(L, self);
  lua_setiuservalue(L, -2, 1);
  if (parentidx) {
    push_ud(L, parentidx);
    lua_setiuservalue(L, -2, 2);
  }
  if (kind == GL_PLAIN) {
    g->co = pool_take(L, ts);
    lua_pushvalue(L, -2);                           /* co[1]: the userdata */
    lua_xmove(L, g->co, 1);
    lua_pushvalue(L, runidx);                       /* co[2]: run */
    lua_xmove(L, g->co, 1);
    lua_setiuservalue(L, -2, 3);
  }
  lua_rawsetp(L, self, &GR_KEY);
  for (int i = 0; i < 2; i++)          /* a re-__init__: forget the old */
    if (ts->ck[i] == lua_topointer(L, self)) { ts->ck[i] = NULL; ts->cg[i] = NULL; }
  if (kind == GL_MAIN) own_switch(L, self);
  lua_getfield(L, LUA_REGISTRYINDEX, GR_WEAK);
  lua_pushvalue(L, self);
  lua_rawsetp(L, -2, g);
  lua_pop(L, 1);
  if (runidx) lua_remove(L, runidx);
  return g;
}

gl_gr *gl_new_hub(lua_State *L, gl_ts *ts) {
  gl_gr *g = new_gr(L, ts, GL_HUB, ts->main, 0, 0);
  g->state = GL_RUNNING;
  ts->hub_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  ts->hubgr = g;
  return g;
}

/* ------------------------------------------------ the trampoline */

static lua_State *recv_state(gl_ts *ts, gl_gr *g) {
  switch (g->state) {
    case GL_NEW: case GL_SUSPENDED: return g->co;
    case GL_PINNED: return g->sl;
    default: return ts->Ltr;   /* the hub: values are dropped */
  }
}

static gl_gr *live(gl_gr *g) {
  while (g->state == GL_DEAD && g->parent != NULL) g = g->parent;
  return g;
}

int gl_has_pending(gl_gr *g) { return g->throw_ref != LUA_NOREF; }

void gl_deliver(lua_State *L, gl_gr *g, int n, int throwing) {
  gl_ts *ts = g->ts;
  if (n == 0 && !throwing && g->throw_ref == LUA_NOREF) {  /* a bare switch */
    ts->nnext = 0;
    return;
  }
  if (g->throw_ref != LUA_NOREF) {   /* an older throw wins; drop this */
    lua_pop(L, throwing ? 1 : n);
    ts->nnext = 0;
    return;
  }
  if (throwing) {
    g->throw_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    ts->nnext = 0;
    return;
  }
  lua_State *to = recv_state(ts, g);
  if (g->kind == GL_HUB || to == L || !lua_checkstack(to, n + LUA_MINSTACK)) {
    lua_pop(L, n);
    n = 0;
  } else {
    lua_xmove(L, to, n);
  }
  ts->nnext = n;
}

void gl_raise_pending(lua_State *L) {
  gl_ts *ts = gl_ts_find(mt_universe_of(L));
  if (ts == NULL) return;
  gl_gr *g = ts->current;
  if (g->throw_ref == LUA_NOREF) return;
  lua_rawgeti(L, LUA_REGISTRYINDEX, g->throw_ref);
  luaL_unref(L, LUA_REGISTRYINDEX, g->throw_ref);
  g->throw_ref = LUA_NOREF;
  lua_error(L);
}

static void unwind(gl_ts *ts, lua_State *co);

/* Runs 'run' to its end or error: the values or the error go to the
** first live parent. */
static void finished(gl_ts *ts, gl_gr *x, int status, int nres) {
  lua_State *co = x->co, *T = ts->Ltr;
  gl_gr *to;
  x->state = GL_DEAD;
  to = live(x->parent);
  if (status == LUA_OK) {
    nres--;    /* the count includes co[1], the userdata below run */
    lua_checkstack(T, nres + 1);
    lua_xmove(co, T, nres);
    lua_settop(co, 1);
    gl_deliver(T, to, nres, 0);
    if (detach_co(x)) pool_give(ts, co);   /* co: anchored by Ltr[1] */
  } else {
    int exit;
    lua_pushvalue(co, -1);
    lua_xmove(co, T, 1);
    exit = mt_isinstance(T, -1, "greenlet.GreenletExit");
    ts->closing++;
    lua_resetthread(co);     /* runs its pending <close> variables */
    ts->closing--;
    lua_settop(co, 0);
    gl_deliver(T, to, exit ? 1 : 0, !exit);
  }
  ts->next = to;
}

static void foreign_yield(gl_ts *ts, gl_gr *x, int nres) {
  lua_State *co = x->co;
  lua_pop(co, nres);
  lua_pushliteral(co, "attempt to yield across a greenlet (use switch)");
  finished(ts, x, LUA_ERRRUN, 0);
}

/* A pinned coroutine must stay anchored while nothing else may hold
** it.  A registry ref per pin (luaL_ref/luaL_unref) cost a tenth of a
** greenlet echo loop's user time: the anchors go to an array of the
** thread's own instead, its free slots kept in C.  The free list has
** room for every slot ever made, so giving one back cannot fail. */
static int pins_take(lua_State *L, gl_ts *ts) {
  if (ts->npinfree > 0) return ts->pinfree[--ts->npinfree];
  if (ts->npins == ts->cpinfree) {
    int c = ts->cpinfree ? ts->cpinfree * 2 : 16;
    int *f = realloc(ts->pinfree, c * sizeof *f);
    if (f == NULL) mt_raise(L, "MemoryError", "cannot pin a greenlet");
    ts->pinfree = f;
    ts->cpinfree = c;
  }
  return ++ts->npins;
}

/* Anchors cur's coroutine (running, so on no other stack) in a slot. */
static void anchor_pinned(lua_State *L, gl_ts *ts, gl_gr *cur) {
  int slot = pins_take(L, ts);
  lua_State *co = cur->co;
  lua_rawgeti(co, LUA_REGISTRYINDEX, ts->pins_ref);
  lua_pushthread(co);
  lua_rawseti(co, -2, slot);
  lua_pop(co, 1);
  cur->pin_ref = slot;
}

/* Gives cur's slot back, its coroutine not pinned after all. */
static void pins_drop(lua_State *L, gl_ts *ts, gl_gr *cur) {
  lua_rawgeti(L, LUA_REGISTRYINDEX, ts->pins_ref);
  lua_pushnil(L);
  lua_rawseti(L, -2, cur->pin_ref);
  lua_pop(L, 1);
  ts->pinfree[ts->npinfree++] = cur->pin_ref;
  cur->pin_ref = LUA_NOREF;
}

/* Moves x's coroutine from its slot to Ltr[1] (anchored while it runs)
** and frees the slot. */
static void unanchor_pinned(gl_ts *ts, gl_gr *x) {
  lua_State *T = ts->Ltr;
  lua_rawgeti(T, LUA_REGISTRYINDEX, ts->pins_ref);
  lua_rawgeti(T, -1, x->pin_ref);
  lua_replace(T, 1);
  ts->ltr_busy = 1;
  lua_pushnil(T);
  lua_rawseti(T, -2, x->pin_ref);
  lua_pop(T, 1);
  ts->pinfree[ts->npinfree++] = x->pin_ref;
  x->pin_ref = LUA_NOREF;
}

/* Switches the trampoline to a pinned greenlet (or main): this
** trampoline parks itself as a spare, reused by the next pin. */
SWITCH_PATH void enter_pinned(gl_ts *ts, gl_stack *S, gl_gr *x) {
  ts->held = NULL;   /* whoever anchored it is running again */
  ts->current = x;
  x->state = GL_RUNNING;
  x->seq++;
  if (x->pin_ref != LUA_NOREF) {
    unanchor_pinned(ts, x);
  } else if (ts->ltr_busy) {   /* main: let the last coroutine go */
    lua_pushnil(ts->Ltr);
    lua_replace(ts->Ltr, 1);
    ts->ltr_busy = 0;
  }
  set_running(ts, x->sl);
  S->next = ts->spare;
  ts->spare = S;
  ctx_switch(ts, x->stk, &S->sp, x->sp);
}

static void resume_gr(gl_ts *ts, gl_gr *x) {
  lua_State *co = x->co;
  int nres, status;
  ts->current = x;
  x->state = GL_RUNNING;
  x->seq++;
  if (co != ts->held && lua_tothread(ts->Ltr, 1) != co) {   /* anchor it while it runs */
    lua_pushthread(co);
    lua_xmove(co, ts->Ltr, 1);
    lua_replace(ts->Ltr, 1);
    ts->ltr_busy = 1;
  }
  prepare_resume(ts, co);
  status = lua_resume(co, NULL, ts->nnext, &nres);
  if (status == LUA_YIELD) {
    if (nres != 0 || x->state != GL_SUSPENDED) foreign_yield(ts, x, nres);
  } else {
    finished(ts, x, status, nres);
  }
}

static void run_deferred(gl_ts *ts) {
  while (ts->ndeferred > 0) {
    int ref = ts->deferred[--ts->ndeferred];
    lua_rawgeti(ts->Ltr, LUA_REGISTRYINDEX, ref);
    luaL_unref(ts->Ltr, LUA_REGISTRYINDEX, ref);
    unwind(ts, lua_tothread(ts->Ltr, -1));
    lua_pop(ts->Ltr, 1);
  }
}

/* The trampoline: runs on a stack of its own, forever. */
static void tramp_main(gl_stack *S) {
  gl_ts *ts = S->ts;
  san_arrive(S, ts->from);
  for (;;) {
    gl_gr *x = ts->next;
    if (ts->ndeferred) run_deferred(ts);
    if (x->kind == GL_HUB) {
      ts->current = x;
      x = hub_next(ts);   /* picks, delivers, sets ts->next */
      ts->next = x;
    }
    if (x->state == GL_PINNED) enter_pinned(ts, S, x);
    else resume_gr(ts, x);
  }
}

/* Pins the current greenlet: the trampoline goes on elsewhere.  Returns
** when something switches back. */
SWITCH_PATH void pin(lua_State *L, gl_ts *ts) {
  gl_gr *cur = ts->current;
  gl_stack *S;
  lua_State *held = ts->held;   /* valid only once the pin cannot fail */
  ts->held = NULL;
  if (cur->kind == GL_PLAIN) anchor_pinned(L, ts, cur);   /* may raise: first */
  S = ts->spare;
  if (S != NULL) ts->spare = S->next;
  else if ((S = stack_new(ts)) == NULL) {
    if (cur->pin_ref != LUA_NOREF) pins_drop(L, ts, cur);
    mt_raise(L, "MemoryError", "cannot allocate a greenlet stack");
  }
  cur->state = GL_PINNED;
  cur->sl = L;
  cur->stk = ts->stack;
  ts->held = held;
  ctx_switch(ts, S, &cur->sp, S->sp);
  /* back: ts->current == cur, state RUNNING (enter_pinned) */
}

SWITCH_PATH int suspend(lua_State *L, gl_ts *ts, int must_pin, lua_KContext ctx, lua_KFunction k) {
  if (!must_pin && lua_isyieldable(L)) {
    ts->current->state = GL_SUSPENDED;   /* marks the yield as a switch */
    return lua_yieldk(L, 0, ctx, k);
  }
  pin(L, ts);
  return 0;
}

int gl_suspend(lua_State *L, gl_ts *ts, int must_pin, lua_KContext ctx, lua_KFunction k) {
  return suspend(L, ts, must_pin, ctx, k);
}

/* ----------------------------------------------------- switching */

/* Back in a switched-away greenlet: Ctrl-C (main only) and throws are
** checked inline, the common case being neither. */
static int switch_done(lua_State *L, int status, lua_KContext base) {
  (void)status;
  gl_ts *ts = tls_ts;
  mt_universe *U = mt_universe_of(L);
  if (ts == NULL || ts->U != U) ts = gl_ts_find(U);
  gl_gr *cur = ts->current;
  set_running(ts, L);
  if (cur->kind == GL_MAIN && ts->thread != NULL
      && atomic_load_explicit(&ts->thread->interrupt, memory_order_relaxed))
    mt_check_interrupt(L);
  if (cur->throw_ref != LUA_NOREF) gl_raise_pending(L);
  return lua_gettop(L) - (int)base;
}

static void check_switchable(lua_State *L, gl_ts *ts, gl_gr *x) {
  if (x->ts != ts)
    mt_raise(L, "greenlet.error", "cannot switch to a different thread");
  if (ts->closing)
    mt_raise(L, "greenlet.error", "cannot switch while a collected greenlet is unwound");
}

/* Moves n values (or, throwing, the exception) from L's top to x and
** switches to it.  Its callers have self at index 1, the values above. */
SWITCH_PATH int do_switch(lua_State *L, gl_gr *x, int n, int throwing) {
  gl_ts *ts = tls_ts;             /* x is of this thread: L's universe */
  if (x->ts != ts) {
    ts = gl_ts_get(L);
    check_switchable(L, ts, x);
  } else if (ts->closing) {
    check_switchable(L, ts, x);
  }
  x = live(x);
  while (x->state == GL_NEW && throwing) {   /* killed before it started */
    int exit = mt_isinstance(L, -1, "greenlet.GreenletExit");
    x->state = GL_DEAD;
    x = live(x->parent);
    if (exit) { throwing = 0; n = 1; }
  }
  if (x == ts->current) {
    if (throwing) return lua_error(L);
    return n;
  }
  int base = 1;   /* self: the values (or the exception) are all above */
  if (n == 0 && !throwing && x->throw_ref == LUA_NOREF) ts->nnext = 0;   /* a bare switch */
  else gl_deliver(L, x, n, throwing);
  ts->next = x;
  if (x->co != NULL && (x->state == GL_NEW || x->state == GL_SUSPENDED)
      && !lua_isyieldable(L) && lua_checkstack(x->co, 1)) {
    /* L pins (main does): it stays reachable while it waits, so x's
    ** coroutine pushed on it needs no anchor of the trampoline's while
    ** x runs -- a main<->greenlet round trip then sets none and clears
    ** none.  'held' lasts until something pinned runs again. */
    lua_pushthread(x->co);
    lua_xmove(x->co, L, 1);
    ts->held = x->co;
    suspend(L, ts, 1, base + 1, switch_done);
    return switch_done(L, LUA_OK, base + 1);
  }
  ts->held = NULL;
  suspend(L, ts, 0, base, switch_done);
  return switch_done(L, LUA_OK, base);
}

static int gr_switch(lua_State *L) {
  gl_ts *ts = tls_ts;   /* the cache of gl_test, inline: the hot path */
  const void *p = lua_topointer(L, 1);
  gl_gr *x;
  if (ts != NULL && p != NULL && (p == ts->ck[0] || p == ts->ck[1])
      && lua_type(L, 1) == LUA_TTABLE)
    x = p == ts->ck[0] ? ts->cg[0] : ts->cg[1];
  else
    x = gl_check(L, 1);
  return do_switch(L, x, lua_gettop(L) - 1, 0);
}

/* throw(exc?): raises exc (default GreenletExit) in the greenlet. */
static int gr_throw(lua_State *L) {
  gl_gr *x = gl_check(L, 1);
  lua_settop(L, 2);
  if (lua_isnil(L, 2)) {
    mt_push_class(L, "greenlet.GreenletExit");
    lua_replace(L, 2);
  }
  lua_getfield(L, LUA_REGISTRYINDEX, "mtlua.prelude");   /* a class: make one */
  lua_getfield(L, -1, "is_class");
  lua_pushvalue(L, 2);
  int is_cls = lua_gettable(L, -2) != LUA_TNIL;
  lua_pop(L, 3);
  if (is_cls) {
    lua_pushvalue(L, 2);
    lua_call(L, 0, 1);
    lua_replace(L, 2);
  }
  return do_switch(L, x, 0, 1);
}

/* -------------------------------------------------- attributes */

static int gr_getcurrent(lua_State *L) {
  gl_ts *ts = gl_ts_get(L);
  gl_push(L, ts->current);
  return 1;
}

static void push_parent(lua_State *L, gl_gr *g) {
  if (g->parent == NULL) { lua_pushnil(L); return; }
  gl_push(L, g->parent);
}

/* the computed fields: dead, parent, run, gr_frame... */
static int gr_getattr(lua_State *L) {
  gl_gr *g = gl_test(L, 1);
  const char *k = lua_tostring(L, 2);
  if (g == NULL || k == NULL) return 0;
  if (strcmp(k, "dead") == 0) {
    lua_pushboolean(L, g->state == GL_DEAD || (g->kind == GL_MAIN && (g->ts->dead || g->ts->thread->dead)));
  } else if (strcmp(k, "parent") == 0) {
    push_parent(L, g);
  } else if (strcmp(k, "run") == 0 && g->state == GL_NEW && g->co != NULL) {
    lua_pushvalue(g->co, 2);
    lua_xmove(g->co, L, 1);
  } else {
    return 0;
  }
  return 1;
}

/* __index of the greenlet class itself: the class first (methods stay
** fast), then the computed fields.  Subclasses use the prelude's
** __getattr__ route. */
static int gr_index(lua_State *L) {
  lua_pushvalue(L, 2);
  if (lua_rawget(L, lua_upvalueindex(1)) != LUA_TNIL) return 1;
  lua_pop(L, 1);
  return gr_getattr(L);
}

static void set_parent(lua_State *L, gl_gr *g) {
  gl_gr *p = gl_test(L, 3);
  if (p == NULL)
    mt_raise(L, "TypeError", "parent must be a greenlet");
  if (g->kind != GL_PLAIN)
    mt_raise(L, "ValueError", "cannot set the parent of a main greenlet");
  if (p->ts != g->ts)
    mt_raise(L, "ValueError", "parent cannot be on a different thread");
  for (gl_gr *q = p; q != NULL; q = q->parent)
    if (q == g) mt_raise(L, "ValueError", "cyclic parent chain");
  g->parent = p;
  push_ud(L, 1);
  push_ud(L, 3);
  lua_setiuservalue(L, -2, 2);
  lua_pop(L, 1);
}

static int gr_newindex(lua_State *L) {
  gl_gr *g = gl_test(L, 1);
  const char *k = lua_tostring(L, 2);
  if (g != NULL && k != NULL && strcmp(k, "parent") == 0) {
    set_parent(L, g);
    return 0;
  }
  if (g != NULL && k != NULL && strcmp(k, "run") == 0 && g->state == GL_NEW && g->co) {
    lua_pushvalue(L, 3);
    lua_xmove(L, g->co, 1);
    lua_replace(g->co, 2);
    return 0;
  }
  if (g != NULL && k != NULL && strcmp(k, "dead") == 0)
    return mt_raise(L, "AttributeError", "attribute 'dead' of greenlet is not writable");
  lua_settop(L, 3);
  lua_rawset(L, 1);
  return 0;
}

static int gr_is_active(lua_State *L) {
  gl_gr *g = gl_check(L, 1);
  lua_pushboolean(L, g->state != GL_NEW && g->state != GL_DEAD);
  return 1;
}

static int gr_started(lua_State *L) {
  gl_gr *g = gl_check(L, 1);
  lua_pushboolean(L, g->state != GL_NEW);
  return 1;
}

static int is_callable(lua_State *L, int idx) {
  if (lua_type(L, idx) == LUA_TFUNCTION) return 1;
  if (luaL_getmetafield(L, idx, "__call") != LUA_TNIL) { lua_pop(L, 1); return 1; }
  return 0;
}

/* _init(self, run, parent) from greenlet.__init__ */
static int gr_init(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 3);
  if (!is_callable(L, 2))
    return mt_argtype_error(L, 2, "greenlet", "run", "callable");
  gl_ts *ts = gl_ts_get(L);
  gl_gr *parent = ts->current;
  if (!lua_isnil(L, 3)) {
    parent = gl_test(L, 3);
    if (parent == NULL) return mt_argtype_error(L, 3, "greenlet", "parent", "a greenlet");
    if (parent->ts != ts) return mt_raise(L, "ValueError", "parent cannot be on a different thread");
  } else {
    gl_push(L, parent);
    lua_replace(L, 3);
  }
  lua_pushvalue(L, 2);
  new_gr(L, ts, GL_PLAIN, parent, 3, 1);
  if (is_plain_instance(L, 1)) own_switch(L, 1);
  return 0;
}

static int gr_tostring(lua_State *L) {
  gl_gr *g = gl_check(L, 1);
  const char *st = g->state == GL_DEAD ? " dead" : (g->state == GL_NEW ? "" : " active");
  if (g->kind == GL_MAIN) st = " current active started main";
  lua_getfield(L, 1, "__name__");
  lua_pushfstring(L, "<%s object at %p (otid=%p)%s>",
                  lua_isstring(L, -1) ? lua_tostring(L, -1) : "greenlet",
                  lua_topointer(L, 1), (void *)g->ts, st);
  return 1;
}

/* ----------------------------------------------- collection */

/* Closes a suspended greenlet's coroutine: its <close> variables run. */
static void unwind(gl_ts *ts, lua_State *co) {
  if (co == NULL || lua_status(co) != LUA_YIELD) return;
  ts->closing++;
  if (lua_resetthread(co) != LUA_OK) lua_settop(co, 0);
  ts->closing--;
}

static void ts_release(gl_ts *ts) {
  if (--ts->nobjects == 0 && ts->dead) free(ts);
}

static int gr_gc(lua_State *L) {
  gl_gr *g = lua_touserdata(L, 1);
  gl_ts *ts = g->ts;
  hub_forget_gr(g);
  for (int i = 0; i < 2; i++)
    if (ts->cg[i] == g) { ts->cg[i] = NULL; ts->ck[i] = NULL; }
  if (g->throw_ref != LUA_NOREF) {
    luaL_unref(L, LUA_REGISTRYINDEX, g->throw_ref);
    g->throw_ref = LUA_NOREF;
  }
  if (g->state != GL_SUSPENDED || g->co == NULL || ts->dead) {
    if (g->state == GL_SUSPENDED) g->state = GL_DEAD;
    ts_release(ts);
    return 0;
  }
  g->state = GL_DEAD;
  gl_ts *here = gl_ts_find(mt_universe_of(L));
  if (here == ts) {
    unwind(ts, g->co);
    ts_release(ts);
    return 0;
  }
  /* another thread's greenlet: its own thread unwinds it */
  if (ts->thread != NULL && !ts->thread->dead) {
    if (ts->ndeferred == ts->cdeferred) {
      int c = ts->cdeferred ? ts->cdeferred * 2 : 8;
      int *d = realloc(ts->deferred, c * sizeof *d);
      if (d != NULL) { ts->deferred = d; ts->cdeferred = c; }
    }
    if (ts->ndeferred < ts->cdeferred) {
      lua_getiuservalue(L, 1, 3);
      ts->deferred[ts->ndeferred++] = luaL_ref(L, LUA_REGISTRYINDEX);
    }
  }
  ts_release(ts);
  return 0;
}

/* The OS thread of a threading.Thread ends (GIL held, on its own stack,
** its main greenlet running): its hub, C stacks and registry anchors
** go.  The record itself lives on, marked dead, until the last greenlet
** object pointing to it is collected. */
static void thread_exit(lua_State *L) {
  mt_universe *U = mt_universe_of(L);
  gl_ts *ts = gl_ts_find(U), **pp;
  if (ts == NULL || ts->current != ts->main || ts->stack != ts->os) return;
  if (ts->hub != NULL) hub_free(L, ts);
  for (gl_stack *S = ts->stacks, *nx; S != NULL; S = nx) {
    nx = S->all_next;
    stack_free(S);
  }
  ts->stacks = ts->spare = NULL;
  for (int i = 0; i < ts->ndeferred; i++) luaL_unref(L, LUA_REGISTRYINDEX, ts->deferred[i]);
  free(ts->deferred);
  ts->deferred = NULL;
  ts->ndeferred = ts->cdeferred = 0;
  luaL_unref(L, LUA_REGISTRYINDEX, ts->Ltr_ref);
  luaL_unref(L, LUA_REGISTRYINDEX, ts->main_ref);
  luaL_unref(L, LUA_REGISTRYINDEX, ts->hub_ref);
  luaL_unref(L, LUA_REGISTRYINDEX, ts->pool_ref);
  luaL_unref(L, LUA_REGISTRYINDEX, ts->pins_ref);
  free(ts->pinfree);
  ts->pinfree = NULL;
  ts->npinfree = ts->cpinfree = ts->npins = 0;
  free(ts->os);
  ts->os = ts->stack = NULL;
  for (pp = &tls_ts; *pp != NULL; pp = &(*pp)->link)
    if (*pp == ts) { *pp = ts->link; break; }
  ts->thread = NULL;
  ts->dead = 1;
  ts->nobjects++;     /* so that ts_release may free it now */
  ts_release(ts);
}

/* -------------------------------------------- module _greenlet */

static int gl_register(lua_State *L) {   /* _register(qualname, cls) */
  luaL_checkstring(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  mt_register_class(L, lua_tostring(L, 1), 2);
  return 0;
}

/* _setclass(cls): the greenlet class; installs its fast __index. */
static int gl_setclass(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_pushvalue(L, 1);
  lua_setfield(L, LUA_REGISTRYINDEX, GR_CLASS);
  lua_pushvalue(L, 1);
  lua_pushcclosure(L, gr_index, 1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &GR_CLASS);   /* keep it */
  lua_rawgetp(L, LUA_REGISTRYINDEX, &GR_CLASS);
  lua_setfield(L, 1, "__index");
  return 0;
}

static int gl_getmain(lua_State *L) {
  gl_ts *ts = gl_ts_get(L);
  gl_push(L, ts->main);
  return 1;
}

static const luaL_Reg gl_funcs[] = {
  {"init", gr_init},
  {"switch", gr_switch},
  {"throw", gr_throw},
  {"is_active", gr_is_active},
  {"started", gr_started},
  {"getattr", gr_getattr},
  {"newindex", gr_newindex},
  {"tostring", gr_tostring},
  {"getcurrent", gr_getcurrent},
  {"getmain", gl_getmain},
  {"_register", gl_register},
  {"_setclass", gl_setclass},
  {NULL, NULL}
};

static void raise_pending_hook(lua_State *L) {
  gl_ts *ts = gl_ts_find(mt_universe_of(L));
  if (ts != NULL && ts->current->throw_ref != LUA_NOREF) gl_raise_pending(L);
}

int luaopen_mt_greenlet(lua_State *L) {
  if (luaL_newmetatable(L, GR_UDMT)) {
    lua_pushcfunction(L, gr_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_pop(L, 1);
  if (lua_getfield(L, LUA_REGISTRYINDEX, GR_WEAK) != LUA_TTABLE) {
    lua_newtable(L);
    lua_newtable(L);
    lua_pushliteral(L, "v");
    lua_setfield(L, -2, "__mode");
    lua_setmetatable(L, -2);
    lua_setfield(L, LUA_REGISTRYINDEX, GR_WEAK);
  }
  lua_pop(L, 1);
  mt_universe_of(L)->raise_pending = raise_pending_hook;
  hub_install(mt_universe_of(L));
  mt_universe_of(L)->on_thread_exit = thread_exit;
  luaL_newlib(L, gl_funcs);
  lua_pushlightuserdata(L, (void *)&GR_KEY);   /* to pre-size instances */
  lua_setfield(L, -2, "KEY");
  return 1;
}

/* ------------------------------------- coroutine.resume and wrap */

/* Resumes co with narg values from L's top.  A greenlet switch made
** inside co arrives as a yield of nothing with the current greenlet
** marked GL_SUSPENDED: the current greenlet is switched
** away (yielding L in turn, continuing in k, or pinning), and when it
** is switched back the values go on into co.  Returns the number of
** results moved to L, or -1 with the error on L's top. */
static int resume_values(lua_State *L, lua_State *co, int narg, lua_KFunction k) {
  int status, nres;
  for (;;) {
    if (!lua_checkstack(co, narg)) {
      lua_pushliteral(L, "too many arguments to resume");
      return -1;
    }
    if (lua_status(co) == LUA_OK && lua_gettop(co) == 0) {
      lua_pushliteral(L, "cannot resume dead coroutine");
      return -1;
    }
    lua_xmove(L, co, narg);
    mt_prepare_resume(L, co);
    status = lua_resume(co, L, narg, &nres);
    mt_set_running(L);
    gl_ts *ts;
    if (status == LUA_YIELD && nres == 0 && (ts = gl_ts_find(mt_universe_of(L))) != NULL
        && ts->current->state == GL_SUSPENDED) {   /* a switch from inside co */
      int base = lua_gettop(L);
      gl_suspend(L, ts, 0, base, k);
      narg = lua_gettop(L) - base;
      continue;
    }
    break;
  }
  if (status == LUA_OK || status == LUA_YIELD) {
    if (!lua_checkstack(L, nres + 1)) {
      lua_pop(co, nres);
      lua_pushliteral(L, "too many results to resume");
      return -1;
    }
    lua_xmove(co, L, nres);
    return nres;
  }
  lua_xmove(co, L, 1);
  return -1;
}

static lua_State *checkco(lua_State *L, int idx) {
  lua_State *co = lua_tothread(L, idx);
  luaL_argexpected(L, co != NULL, idx, "coroutine");
  return co;
}

static int resume_finish(lua_State *L, int r) {
  mt_check_interrupt(L);
  if (r < 0) {
    lua_pushboolean(L, 0);
    lua_insert(L, -2);
    return 2;
  }
  lua_pushboolean(L, 1);
  lua_insert(L, -(r + 1));
  return r + 1;
}

static int co_resume_k(lua_State *L, int status, lua_KContext base) {
  (void)status;
  return resume_finish(L, resume_values(L, checkco(L, 1), lua_gettop(L) - (int)base, co_resume_k));
}

static int co_resume(lua_State *L) {
  lua_State *co = checkco(L, 1);
  if (co == L) {
    lua_pushboolean(L, 0);
    lua_pushliteral(L, "cannot resume non-suspended coroutine");
    return 2;
  }
  return resume_finish(L, resume_values(L, co, lua_gettop(L) - 1, co_resume_k));
}

static int wrap_finish(lua_State *L, lua_State *co, int r) {
  mt_check_interrupt(L);
  if (r < 0) {
    int stat = lua_status(co);
    if (stat != LUA_OK && stat != LUA_YIELD) {   /* error inside co */
      stat = close_thread(co, L);                /* run its <close>s */
      lua_xmove(co, L, 1);
    }
    if (stat != LUA_ERRMEM && lua_type(L, -1) == LUA_TSTRING) {
      luaL_where(L, 1);
      lua_insert(L, -2);
      lua_concat(L, 2);
    }
    return lua_error(L);
  }
  return r;
}

static int wrapped_k(lua_State *L, int status, lua_KContext base) {
  (void)status;
  lua_State *co = lua_tothread(L, lua_upvalueindex(1));
  return wrap_finish(L, co, resume_values(L, co, lua_gettop(L) - (int)base, wrapped_k));
}

static int wrapped(lua_State *L) {
  lua_State *co = lua_tothread(L, lua_upvalueindex(1));
  return wrap_finish(L, co, resume_values(L, co, lua_gettop(L), wrapped_k));
}

static int co_wrap(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  lua_State *co = lua_newthread(L);
  lua_pushvalue(L, 1);
  lua_xmove(L, co, 1);
  lua_pushcclosure(L, wrapped, 1);
  return 1;
}

/* coroutine.yield: a greenlet's own coroutine has nobody to yield to */
static int co_yield(lua_State *L) {
  gl_ts *ts = tls_ts;
  if (ts != NULL && ts->current->co == L && ts->U == mt_universe_of(L))
    return luaL_error(L, "attempt to yield across a greenlet (use switch)");
  return lua_yield(L, lua_gettop(L));
}

/* coroutine.greenlet, coroutine.spawn...: loaded on first use */
static int co_index(lua_State *L) {
  const char *k = luaL_checkstring(L, 2);
  const char *mod = (strcmp(k, "greenlet") == 0 || strcmp(k, "getcurrent") == 0
                     || strcmp(k, "GreenletExit") == 0) ? "greenlet" : "gevent";
  lua_getglobal(L, "require");
  lua_pushstring(L, mod);
  lua_call(L, 1, 1);
  lua_getfield(L, -1, k);
  return 1;
}

static const luaL_Reg co_funcs[] = {
  {"resume", co_resume},
  {"wrap", co_wrap},
  {"yield", co_yield},
  {NULL, NULL}
};

int luaopen_mt_coroutine(lua_State *L) {
  lua_getglobal(L, "coroutine");
  luaL_setfuncs(L, co_funcs, 0);
  lua_newtable(L);
  lua_pushcfunction(L, co_index);
  lua_setfield(L, -2, "__index");
  lua_setmetatable(L, -2);
  return 1;
}
