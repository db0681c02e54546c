import multiprocessing as mp, time
N = 100000
def child(q, done):
    s = 0
    for _ in range(N):
        s += q.get()
    done.put(s)
if __name__ == "__main__":
    mp.set_start_method("fork")
    q, done = mp.Queue(), mp.Queue()
    p = mp.Process(target=child, args=(q, done))
    p.start()
    t0 = time.perf_counter()
    for i in range(1, N + 1):
        q.put(i)
    assert done.get() == N * (N + 1) // 2
    t = time.perf_counter() - t0
    p.join()
    print(t)
