# one producer thread and one consumer thread move 200,000 integers
import queue, threading, time
N = 200000
q = queue.Queue()
t0 = time.perf_counter()
def consume():
    s = 0
    for _ in range(N):
        s += q.get()
    assert s == N * (N + 1) // 2
def produce():
    for i in range(1, N + 1):
        q.put(i)
consumer = threading.Thread(target=consume)
producer = threading.Thread(target=produce)
consumer.start(); producer.start()
producer.join(); consumer.join()
print(time.perf_counter() - t0)
