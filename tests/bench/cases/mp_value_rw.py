import multiprocessing as mp, time
if __name__ == "__main__":
    v = mp.Value("d", 0)
    t0 = time.perf_counter()
    for _ in range(100000): v.value += 1
    assert v.value == 100000
    print(time.perf_counter() - t0)
