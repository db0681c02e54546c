import multiprocessing as mp, time
N = 10000
def child(q, done):
    s = 0
    for _ in range(N):
        s += len(q.get())
    done.put(s)
if __name__ == "__main__":
    mp.set_start_method("fork")
    q, done = mp.Queue(), mp.Queue()
    p = mp.Process(target=child, args=(q, done))
    p.start()
    items = [chr(65 + i % 26) * 1024 for i in range(1, N + 1)]
    t0 = time.perf_counter()
    for s in items:
        q.put(s)
    assert done.get() == N * 1024
    t = time.perf_counter() - t0
    p.join()
    print(t)
