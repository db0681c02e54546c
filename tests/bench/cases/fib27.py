import time
def fib(n):
    if n < 2: return n
    return fib(n - 1) + fib(n - 2)
t0 = time.perf_counter()
fib(27)
print(time.perf_counter() - t0)
