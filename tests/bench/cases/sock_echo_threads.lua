-- Threaded echo server on 127.0.0.1, one thread per client; 50 client
-- threads each do 200 round trips of a 64-byte message.  Prints the
-- seconds from the first client's start to the last one's end.
local socket = require "socket"
local threading = require "threading"
local perf_counter = require("time").perf_counter

local N, ROUNDS = 50, 200
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
    threading.Thread{target=handle, args={conn}}:start()
  end
end

local function client(addr, start)
  start:wait()
  local c <close> = socket.create_connection(addr, 10)
  for _ = 1, ROUNDS do
    c:sendall(MSG)
    local got = 0
    while got < #MSG do got = got + #c:recv(4096) end
  end
end

local srv = socket.create_server({"127.0.0.1", 0}, {backlog=128})
local addr = srv:getsockname()
local server = threading.Thread{target=serve, args={srv}}
server:start()
local start = threading.Barrier(N + 1)
local clients = {}
for i = 1, N do
  clients[i] = threading.Thread{target=client, args={addr, start}}
  clients[i]:start()
end
start:wait()
local t0 = perf_counter()
for _, c in ipairs(clients) do c:join() end
local dt = perf_counter() - t0
server:join()
srv:close()
print(dt)
