import gevent, time
t0 = time.perf_counter()
gs = [gevent.spawn(gevent.sleep, 0.01) for _ in range(1000)]
gevent.joinall(gs)
print(time.perf_counter() - t0)
