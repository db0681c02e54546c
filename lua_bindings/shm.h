/*
** shm.h -- shared memory across processes (lua_bindings/shm.c; the Lua
** module is `_shm`, re-exported by lib/multiprocessing.lua).
**
** For C bindings that need cross-process objects (pool.c, the later
** process-shared locks and Value/Array):
**  - Segments are memfd_create(MFD_CLOEXEC) + mmap(MAP_SHARED): they
**    have no name, so nothing ever appears in /dev/shm, and the memory
**    goes away with the last process that maps it, however it dies.
**    A forked child inherits the mapping.  A process that did not
**    inherit it opens /proc/<pid>/fd/<fd> of a process that holds the
**    fd (shm_segment_attach): that process must still be alive then.
**  - Locks are robust, process-shared pthread mutexes: a process that
**    dies holding one does not wedge the others (EOWNERDEAD is made
**    consistent and reported to the caller, which repairs its data).
**  - Waits are futexes on 32-bit sequence words in the segment (not
**    pthread condvars, whose pshared state is left inconsistent by a
**    waiter killed inside pthread_cond_wait).
*/
#ifndef MT_SHM_H
#define MT_SHM_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <lua.h>

typedef struct shm_segment {
  void *base;      /* the mapping */
  size_t size;     /* its length */
  int fd;          /* the memfd, kept open for shm_segment_attach */
} shm_segment;

/* A new zero-filled segment of 'size' bytes; 0 or an errno. */
int shm_segment_create(shm_segment *seg, size_t size, const char *tag);
/* Maps the segment that process 'pid' holds as its fd 'fd'; 0 or an errno. */
int shm_segment_attach(shm_segment *seg, pid_t pid, int fd);
/* Moves seg's mapping into an address range reserved for 'reserve'
** bytes, the file mapped at its start for 'mapped' bytes (a multiple
** of the page size); seg->size becomes 'reserve'.  The mapping then
** never moves while the file grows (ftruncate on seg->fd, by any
** process): shm_segment_cover maps the file up to 'need' bytes in
** place, '*mapped' saying how far it is mapped in this process.
** Both return 0 or an errno. */
int shm_segment_reserve(shm_segment *seg, size_t reserve, size_t mapped);
int shm_segment_cover(shm_segment *seg, size_t *mapped, size_t need);
void shm_segment_close(shm_segment *seg);

/* A robust process-shared mutex at 'm' (in a segment). */
int shm_mutex_init(pthread_mutex_t *m);
/* Locks m; when the lock is taken by another process, waits with the
** GIL released.  Returns 1 when the previous owner died holding it
** (the caller must repair the guarded data), else 0.  Raises OSError
** on an unrecoverable mutex. */
int shm_mutex_lock(lua_State *L, pthread_mutex_t *m);
void shm_mutex_unlock(pthread_mutex_t *m);

/* Futex waits on a shared word: blocks while *word == expected, at
** most 'seconds' (the GIL is not touched: call between
** mt_blocking_begin/end).  shm_futex_wake wakes up to n waiters. */
void shm_futex_wait(_Atomic uint32_t *word, uint32_t expected, double seconds);
void shm_futex_wake(_Atomic uint32_t *word, int n);

/* Pushes the reference that names a segment to another process, for a
** __reduce__: a table {getpid(), fd, token, kind} with room for 'narr'
** array items in all (the caller may add more after these four). */
void shm_push_ref(lua_State *L, int narr, int fd, uint64_t token, int kind);

/* Is process pid still there (a dead owner of a stream is recovered)? */
int shm_pid_alive(pid_t pid);

#endif
