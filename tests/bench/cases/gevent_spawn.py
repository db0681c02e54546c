import gevent, time
def f():
    gevent.sleep(0)
t0 = time.perf_counter()
gs = [gevent.spawn(f) for _ in range(10000)]
gevent.joinall(gs)
print(time.perf_counter() - t0)
