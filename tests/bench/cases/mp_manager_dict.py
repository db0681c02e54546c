import multiprocessing as mp, time
if __name__ == "__main__":
    mp.set_start_method("fork")
    with mp.Manager() as m:
        d = m.dict()
        t0 = time.perf_counter()
        for i in range(2000): d[i % 100] = i
        s = 0
        for i in range(2000): s += d[i % 100]
        print(time.perf_counter() - t0)
