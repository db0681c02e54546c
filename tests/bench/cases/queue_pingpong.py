# ping-pong: a round trip between two threads over two queues
import queue, threading, time
N = 10000
ping, pong = queue.Queue(), queue.Queue()
def peer():
    for _ in range(N):
        pong.put(ping.get())
th = threading.Thread(target=peer)
th.start()
t0 = time.perf_counter()
for i in range(N):
    ping.put(i); pong.get()
print(time.perf_counter() - t0)
th.join()
