# Threaded echo server on 127.0.0.1, one thread per client; 50 client
# threads each do 200 round trips of a 64-byte message.  Prints the
# seconds from the first client's start to the last one's end.
import socket, threading, time

N, ROUNDS = 50, 200
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
        threading.Thread(target=handle, args=(conn,)).start()

def client(addr, start):
    start.wait()
    with socket.create_connection(addr, 10) as c:
        for _ in range(ROUNDS):
            c.sendall(MSG)
            got = 0
            while got < len(MSG):
                got += len(c.recv(4096))

srv = socket.create_server(("127.0.0.1", 0), backlog=128)
addr = srv.getsockname()
server = threading.Thread(target=serve, args=(srv,))
server.start()
start = threading.Barrier(N + 1)
clients = [threading.Thread(target=client, args=(addr, start)) for _ in range(N)]
for c in clients:
    c.start()
start.wait()
t0 = time.perf_counter()
for c in clients:
    c.join()
dt = time.perf_counter() - t0
server.join()
srv.close()
print(dt)
