import multiprocessing as mp, time
def work(lock, v):
    for _ in range(10000):
        lock.acquire()
        v.value += 1
        lock.release()
if __name__ == "__main__":
    mp.set_start_method("fork")
    lock, v = mp.Lock(), mp.RawValue("i", 0)
    t0 = time.perf_counter()
    ps = [mp.Process(target=work, args=(lock, v)) for _ in range(4)]
    for p in ps: p.start()
    for p in ps: p.join()
    assert v.value == 40000
    print(time.perf_counter() - t0)
