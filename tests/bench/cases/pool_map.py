# map of a trivial function over 100,000 integers on Pool(2).
from multiprocessing import Pool
from time import perf_counter as clock
def f(x): return x * 2
if __name__ == "__main__":
    p = Pool(2)
    p.apply(f, (0,))
    xs = list(range(1, 100001))
    t0 = clock()
    r = p.map(f, xs)
    t1 = clock()
    assert len(r) == 100000 and r[-1] == 200000
    p.close(); p.join()
    print(t1 - t0)
