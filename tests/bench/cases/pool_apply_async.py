# 20,000 trivial apply_async tasks on Pool(2), every result collected.
from multiprocessing import Pool
from time import perf_counter as clock
def f(x): return x + 1
if __name__ == "__main__":
    p = Pool(2)
    p.apply(f, (0,))
    t0 = clock()
    rs = [p.apply_async(f, (i,)) for i in range(1, 20001)]
    s = sum(r.get() for r in rs)
    t1 = clock()
    assert s == 20000 * 20001 // 2 + 20000
    p.close(); p.join()
    print(t1 - t0)
