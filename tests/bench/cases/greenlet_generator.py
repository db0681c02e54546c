import time
N = 200000
def g():
    while True:
        yield 1
gen = g()
t0 = time.perf_counter()
for _ in range(N):
    next(gen)
print(time.perf_counter() - t0)
