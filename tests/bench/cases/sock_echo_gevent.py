# gevent echo server on 127.0.0.1: one greenlet per connection, 100
# concurrent greenlet clients x 1,000 round trips of a 64-byte message,
# all in one thread.  Prints the seconds the clients took.
import time
import gevent
from gevent import socket

N, ROUNDS = 100, 1000
MSG = b"x" * 63 + b"\n"

def handle(conn):
    with conn:
        while True:
            data = conn.recv(4096)
            if not data:
                break
            conn.sendall(data)

def serve(srv):
    for _ in range(N):
        conn, _ = srv.accept()
        gevent.spawn(handle, conn)

def client(addr):
    with socket.create_connection(addr, 10) as c:
        for _ in range(ROUNDS):
            c.sendall(MSG)
            got = 0
            while got < len(MSG):
                got += len(c.recv(4096))

srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", 0))
srv.listen(256)
addr = srv.getsockname()
server = gevent.spawn(serve, srv)
t0 = time.perf_counter()
gevent.joinall([gevent.spawn(client, addr) for _ in range(N)])
dt = time.perf_counter() - t0
server.join()
srv.close()
print(dt)
