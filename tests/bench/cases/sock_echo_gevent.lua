-- gevent echo server on 127.0.0.1: one greenlet per connection, 100
-- concurrent greenlet clients x 1,000 round trips of a 64-byte message,
-- all in one thread.  Prints the seconds the clients took.
local gevent = require "gevent"
local socket = require "gevent.socket"
local perf_counter = require("time").perf_counter

local N, ROUNDS = 100, 1000
local MSG = string.rep("x", 63) .. "\n"

local function handle(conn)
  local c <close> = conn
  while true do
    local data = c:recv(4096)
    if data == "" then break end
    c:sendall(data)
  end
end

local function serve(srv)
  for _ = 1, N do
    local conn = srv:accept()
    gevent.spawn(handle, conn)
  end
end

local function client(addr)
  local c <close> = socket.create_connection(addr, 10)
  for _ = 1, ROUNDS do
    c:sendall(MSG)
    local got = 0
    while got < #MSG do got = got + #c:recv(4096) end
  end
end

local srv = socket.socket()
srv:setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv:bind({"127.0.0.1", 0})
srv:listen(256)
local addr = srv:getsockname()
local server = gevent.spawn(serve, srv)
local t0 = perf_counter()
local clients = {}
for i = 1, N do clients[i] = gevent.spawn(client, addr) end
gevent.joinall(clients)
local dt = perf_counter() - t0
server:join()
srv:close()
print(dt)
