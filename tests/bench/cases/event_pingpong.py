import threading, time
N = 5000
a, b = threading.Event(), threading.Event()
def peer():
    for i in range(N):
        a.wait(); a.clear(); b.set()
th = threading.Thread(target=peer)
th.start()
t0 = time.perf_counter()
for i in range(N):
    a.set(); b.wait(); b.clear()
print(time.perf_counter() - t0)
th.join()
