# put+get pair in one thread (never waits)
import queue, time
q = queue.Queue()
N = 1000000
t0 = time.perf_counter()
for i in range(N):
    q.put(i); q.get()
print(time.perf_counter() - t0)
