import threading, time
lk = threading.Lock()
N = 2000000
t0 = time.perf_counter()
for i in range(N):
    with lk:
        pass
print(time.perf_counter() - t0)
