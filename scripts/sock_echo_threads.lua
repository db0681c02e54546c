-- A threaded echo server: one thread per client, as Python's
-- socketserver.ThreadingTCPServer does it.  Blocking socket calls release
-- the GIL, so while one thread waits in recv() the others run.
--   mtlua scripts/sock_echo_threads.lua [clients] [round_trips]
local socket = require "socket"
local threading = require "threading"

local N = tonumber(arg and arg[1]) or 20
local ROUNDS = tonumber(arg and arg[2]) or 10

-- the server side: one thread per accepted connection
local function handle(conn)
  local c <close> = conn   -- sockets close themselves when leaving scope
  while true do
    local data = c:recv(4096)
    if data == "" then break end   -- the client closed
    c:sendall(data)
  end
end

local function serve(srv, stop, handlers)
  while true do
    local conn = srv:accept()
    if stop:is_set() then conn:close(); break end
    local th = threading.Thread{target=handle, args={conn}}
    th:start()
    handlers[#handlers + 1] = th
  end
end

-- the client side: connect, then send lines and read each echo back
local function recv_exactly(c, n)
  local parts, got = {}, 0
  while got < n do
    local d = c:recv(n - got)
    if d == "" then error("the server closed the connection") end
    parts[#parts + 1] = d
    got = got + #d
  end
  return table.concat(parts)
end

local function client(addr, id, start, results)
  start:wait()   -- every client connects at the same moment
  local c <close> = socket.create_connection(addr, 10)
  for i = 1, ROUNDS do
    local msg = ("client %d says hello #%d\n"):format(id, i)
    c:sendall(msg)
    assert(recv_exactly(c, #msg) == msg, "echo mismatch")
  end
  results[id] = true
end

if __name__ == "__main__" then
  local srv <close> = socket.create_server({"127.0.0.1", 0}, {backlog=N + 16})
  local addr = srv:getsockname()
  local stop, handlers, results = threading.Event(), {}, {}
  local server = threading.Thread{target=serve, args={srv, stop, handlers}}
  server:start()

  local start = threading.Barrier(N, nil, 30)
  local clients = {}
  for id = 1, N do
    clients[id] = threading.Thread{target=client, args={addr, id, start, results}}
    clients[id]:start()
  end
  for _, th in ipairs(clients) do th:join(60) end

  stop:set()
  socket.create_connection(addr, 5):close()   -- wakes the accept loop
  server:join(10)
  for _, th in ipairs(handlers) do th:join(10) end

  local ok = 0
  for id = 1, N do if results[id] then ok = ok + 1 end end
  print(("echo server: %d of %d clients served, %d round trips each, %d handler threads"):format(
    ok, N, ROUNDS, #handlers))
end
