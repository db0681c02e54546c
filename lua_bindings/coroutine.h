/*
** coroutine.h -- what coroutine.c (greenlets) and hub.c (the gevent
** hub) share.  Private to those two files.
**
** A greenlet is a Lua coroutine.  Switches between greenlets go through
** a trampoline: the switching greenlet yields (nothing, its state set to
** GL_SUSPENDED: a plain yield leaves it GL_RUNNING), and the
** trampoline resumes the target.  Where a greenlet cannot yield (it is
** the thread's main greenlet, or it waits inside a C function such as
** a Lock's acquire under monkey patching, or it switches from a C call
** that calls Lua without a continuation) its C stack is *pinned*: the
** trampoline goes on on another C stack and comes back to it by a
** context switch.  So the trampoline always runs on a stack of its own,
** never below the main greenlet's frames.
*/
#ifndef MT_COROUTINE_H
#define MT_COROUTINE_H

#include "mt_core.h"

typedef struct gl_gr gl_gr;
typedef struct gl_ts gl_ts;
typedef struct gl_stack gl_stack;
struct gl_hub;

enum { GL_NEW, GL_SUSPENDED, GL_PINNED, GL_RUNNING, GL_DEAD };
enum { GL_PLAIN, GL_MAIN, GL_HUB };

struct gl_gr {
  gl_ts *ts;              /* the OS thread it belongs to */
  lua_State *co;          /* its coroutine (NULL for main and hub) */
  lua_State *sl;          /* pinned: the state whose C call waits */
  void *sp;               /* pinned: the saved C context */
  gl_stack *stk;          /* pinned: the C stack it waits on */
  int state, kind;
  unsigned seq;           /* times resumed (hub.c drops stale wake-ups) */
  gl_gr *parent;          /* anchored by the userdata's uservalue 2 */
  int pin_ref;            /* co's slot in ts's pins table while pinned */
  int throw_ref;          /* pending exception to raise when resumed */
  /* waiting through mt_wait (hub.c) */
  mt_waiter *waiter;
  int wait_result;
  void *wait_timer;
  gl_gr *wake_next;
  int wake_queued;
};

struct gl_ts {
  mt_universe *U;
  mt_thread *thread;
  lua_State *Ltr;          /* the trampoline's Lua thread; slot 1 anchors
                              the running greenlet's coroutine */
  int ltr_busy;            /* slot 1 holds a coroutine (not nil) */
  lua_State *held;         /* a coroutine anchored on the stack of the
                              pinned greenlet that switched to it */
  int Ltr_ref;
  gl_gr *main, *current, *next, *hubgr;
  int main_ref, hub_ref;   /* registry refs of their userdata */
  int nnext;               /* values waiting for 'next' */
  int pool_ref, npool;     /* finished coroutines, reused by new greenlets */
  int pins_ref, npins;     /* pinned coroutines, anchored in an array ... */
  int *pinfree, npinfree, cpinfree;   /* ... whose free slots are kept here */
  gl_stack *spare;         /* parked trampolines, ready for reuse */
  gl_stack *os;            /* the OS thread's own stack (main's) */
  gl_stack *stacks;        /* every stack made, to free at thread exit */
  int nobjects;            /* greenlet userdata pointing here */
  int dead;                /* its thread ended: only 'nobjects' matters */
  gl_stack *stack, *from;  /* the running C stack; the one left last */
  int closing;             /* unwinding a collected greenlet */
  int *deferred, ndeferred, cdeferred;   /* coroutines to unwind here */
  struct gl_hub *hub;      /* hub.c's part, NULL until first used */
  const void *ck[2];       /* instance tables last checked ... */
  gl_gr *cg[2];            /* ... and their greenlets (gl_test) */
  gl_ts *link;
};

/* The calling OS thread's greenlet state in L's universe (made on
** first use). */
gl_ts *gl_ts_get(lua_State *L);
gl_ts *gl_ts_find(mt_universe *U);
/* Pushes the instance table of g. */
void gl_push(lua_State *L, gl_gr *g);
gl_gr *gl_check(lua_State *L, int idx);
gl_gr *gl_test(lua_State *L, int idx);
/* Hands the n values on L's top to g (the values its pending switch
** returns), or, if throwing, the exception on L's top. */
void gl_deliver(lua_State *L, gl_gr *g, int n, int throwing);
/* Switches the current greenlet away to ts->next (already given its
** values).  Returns the number of values received, on L's top, or
** longjmps (a yield) and continues in k.  'must_pin': never yield (a C
** caller needs its frame back). */
int gl_suspend(lua_State *L, gl_ts *ts, int must_pin, lua_KContext ctx, lua_KFunction k);
/* Raises the pending exception of the current greenlet, if any. */
void gl_raise_pending(lua_State *L);
int gl_has_pending(gl_gr *g);

gl_gr *gl_new_hub(lua_State *L, gl_ts *ts);   /* pushes nothing */
void gl_san_after_fork(gl_ts *ts);           /* forked child: TSan fibers */

/* hub.c */
int luaopen_mt_hub(lua_State *L);
gl_gr *hub_next(gl_ts *ts);      /* the trampoline asks: who runs now */
void hub_install(mt_universe *U);
void hub_free(lua_State *L, gl_ts *ts);   /* at thread exit */
void hub_forget_gr(gl_gr *g);              /* g is collected */

#endif
