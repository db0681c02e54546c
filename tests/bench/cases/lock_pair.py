import threading, time
lk = threading.Lock()
N = 2000000
acq, rel = lk.acquire, lk.release
t0 = time.perf_counter()
for i in range(N):
    lk.acquire(); lk.release()
print(time.perf_counter() - t0)
