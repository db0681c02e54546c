# pickle.dumps + pickle.loads of a 10,000-element mixed list, 20 times.
import pickle, time

items = []
for i in range(1, 10001):
    m = i % 5
    if m == 0: items.append(i * 1000)
    elif m == 1: items.append(i * 0.5)
    elif m == 2: items.append("item-%d" % i)
    elif m == 3: items.append([i, "x", False])
    else: items.append({"id": i, "name": "n%d" % i, "ok": True})

dumps, loads = pickle.dumps, pickle.loads
t0 = time.perf_counter()
for _ in range(20):
    r = loads(dumps(items))
    assert len(r) == 10000
print(time.perf_counter() - t0)
