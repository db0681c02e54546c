import gevent, time
N = 100000
def f():
    for _ in range(N):
        gevent.sleep(0)
t0 = time.perf_counter()
gevent.joinall([gevent.spawn(f), gevent.spawn(f)])
print((time.perf_counter() - t0) / (2 * N) * N)
