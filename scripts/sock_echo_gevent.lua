-- A gevent echo server: one greenlet per client, all in one OS thread.
-- gevent.socket's blocking calls switch to other greenlets while they
-- wait (the hub polls the sockets with libuv), so hundreds of clients
-- are served at once without threads -- gevent's own StreamServer idea.
-- The clients are greenlets of the same thread.
--   mtlua scripts/sock_echo_gevent.lua [clients] [round_trips]
local gevent = require "gevent"
local socket = require "gevent.socket"

local N = tonumber(arg and arg[1]) or 20
local ROUNDS = tonumber(arg and arg[2]) or 10

local function handle(conn)
  local c <close> = conn
  while true do
    local data = c:recv(4096)
    if data == "" then break end   -- the client closed
    c:sendall(data)
  end
end

local function serve(srv, handlers, stop)
  while true do
    local conn = srv:accept()
    if stop.now then conn:close(); break end
    handlers[#handlers + 1] = gevent.spawn(handle, conn)
  end
end

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

local function client(addr, id, results)
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
  local handlers, results = {}, {}
  local stop = {now = false}
  local server = gevent.spawn(serve, srv, handlers, stop)

  local clients = {}
  for id = 1, N do clients[id] = gevent.spawn(client, addr, id, results) end
  gevent.joinall(clients, 60)
  gevent.joinall(handlers, 10)   -- each ends when its client closed
  stop.now = true
  socket.create_connection(addr, 5):close()   -- wakes the accept loop
  server:join(10)

  local ok = 0
  for id = 1, N do if results[id] then ok = ok + 1 end end
  print(("gevent echo server: %d of %d clients served, %d round trips each, %d handler greenlets"):format(
    ok, N, ROUNDS, #handlers))
end
