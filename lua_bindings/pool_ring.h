/*
** pool_ring.h -- what the parent's side of a pool (pool.c) and a
** worker's (pool_worker.c) share: the frames' sizes and the result
** ring.  Private to the pool's C files.
*/
#ifndef MT_POOL_RING_H
#define MT_POOL_RING_H

#include <stdatomic.h>
#include <stdint.h>

#include <lua.h>

#define PL_HDR_TASK 16
#define PL_HDR_RESULT 13
#define PL_MAXFRAME 0x7fffff00u
#define PL_RING (256u * 1024u)   /* bytes of results in flight per worker */

/* Results come back through shared memory, one ring per worker slot
** (a byte stream of result frames), not through the socket: a worker
** that finishes many short tasks makes no system call per result, and
** what it finished stays readable after it dies.  The socket carries,
** worker to parent, only a wake-up byte, sent when the I/O thread said
** it is going to sleep (parent_idle), and the end of file that says the
** worker is gone.  A frame larger than the ring streams through it. */
typedef struct pl_ring {
  _Atomic uint64_t head;          /* bytes the parent consumed */
  _Atomic uint64_t tail;          /* bytes the worker produced */
  _Atomic uint64_t took;          /* the job the worker is running */
  _Atomic uint32_t parent_idle;   /* the I/O thread sleeps: wake it */
  _Atomic uint32_t space_seq;     /* futex word: the parent consumed */
  _Atomic uint32_t worker_waits;  /* the worker sleeps on space_seq */
  char data[PL_RING];
} pl_ring;

/* In a new worker, once it is the only thread: the ring it writes its
** results to, and the process set up for its tasks. */
void pw_enter(pl_ring *ring);

/* Adds recv, send and exit (the worker's functions) to the module
** table on top of the stack. */
void pw_setfuncs(lua_State *L);

#endif
