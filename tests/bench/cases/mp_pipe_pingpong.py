import multiprocessing as mp, time
N = 20000
def child(b):
    while True:
        v = b.recv()
        if v is None:
            break
        b.send(v)
if __name__ == "__main__":
    mp.set_start_method("fork")
    a, b = mp.Pipe()
    p = mp.Process(target=child, args=(b,))
    p.start()
    a.send(0); a.recv()
    t0 = time.perf_counter()
    for i in range(1, N + 1):
        a.send(i)
        a.recv()
    t = time.perf_counter() - t0
    a.send(None)
    p.join()
    print(t / N)
