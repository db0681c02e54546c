import threading, time
def f(): pass
N = 2000
t0 = time.perf_counter()
for i in range(N):
    t = threading.Thread(target=f)
    t.start(); t.join()
print(time.perf_counter() - t0)
