import multiprocessing as mp, time
def f(): pass
if __name__ == "__main__":
    mp.set_start_method("fork")
    N = 200
    t0 = time.perf_counter()
    for _ in range(N):
        p = mp.Process(target=f)
        p.start()
        p.join()
    print((time.perf_counter() - t0) / N)
