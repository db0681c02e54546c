-- socket under gevent: gevent.socket switches greenlets on every wait
-- (500 concurrent greenlet clients against a greenlet server in one OS
-- thread), timeouts use the hub, plain sockets switch only after
-- monkey.patch_all(), the echo port serves 200 clients.
local t = require "tests.tap"
local gevent = require "gevent"
local gsocket = require "gevent.socket"
local socket = require "socket"
local time = require "time"
local now = time.monotonic

-- open sockets of this process (not every fd: the pipe of popen itself
-- may or may not be listed yet, and the hub has its own fds)
local function count_fds()
  local p = io.popen("ls -l /proc/" .. os.getpid() .. "/fd | grep -c socket:")
  local n = tonumber(p:read("a"))
  p:close()
  return n
end
local fds_at_start = count_fds()

t.ok(gevent.socket == gsocket, "gevent.socket is the module gevent.socket")
t.ok(issubclass(gsocket.socket, socket.socket), "gevent.socket.socket subclasses socket.socket")
t.ok(gsocket.AF_INET == socket.AF_INET and gsocket.timeout == TimeoutError, "constants and errors re-exported")

-- 500 concurrent greenlet clients, one greenlet server, one OS thread
do
  local N = 500
  local srv = gsocket.create_server({"127.0.0.1", 0}, {backlog=N + 16})
  t.ok(isinstance(srv, gsocket.socket), "create_server makes a gevent socket")
  local addr = srv:getsockname()
  local handlers, conn_class_ok = {}, true
  local server = gevent.spawn(function()
    for _ = 1, N do
      local conn = srv:accept()
      if not isinstance(conn, gsocket.socket) then conn_class_ok = false end
      handlers[#handlers + 1] = gevent.spawn(function()
        while true do
          local d = conn:recv(4096)
          if d == "" then break end
          conn:sendall(d)
        end
        conn:close()
      end)
    end
  end)
  local done, clients = 0, {}
  for id = 1, N do
    clients[id] = gevent.spawn(function()
      local c = gsocket.create_connection(addr, 10)
      local good = true
      for r = 1, 5 do
        local msg = ("greenlet %d round %d"):format(id, r)
        c:sendall(msg)
        local got = ""
        while #got < #msg do
          local d = c:recv(4096)
          if d == "" then break end
          got = got .. d
        end
        if got ~= msg then good = false end
      end
      c:close()
      if good then done = done + 1 end
    end)
  end
  gevent.joinall(clients, 30)
  gevent.joinall({server}, 5)
  gevent.joinall(handlers, 5)
  t.is(done, N, "500 greenlet clients each complete 5 echo round trips")
  t.ok(conn_class_ok, "accept returns gevent sockets")
  srv:close()
end

-- a wait on a gevent socket lets other greenlets run, in the main greenlet too
do
  local a, b = gsocket.socketpair()
  local ticks = 0
  local ticker = gevent.spawn(function()
    for _ = 1, 10 do ticks = ticks + 1; gevent.sleep(0.01) end
    b:sendall("after ticks")
  end)
  local got = a:recv(100)   -- the main greenlet waits on the hub
  t.is(got, "after ticks", "recv in the main greenlet returns the data")
  t.is(ticks, 10, "other greenlets ran while the main greenlet waited in recv")
  ticker:join(2)

  -- timeouts use the hub's timers; others run meanwhile
  a:settimeout(0.2)
  local ran = 0
  local bg = gevent.spawn(function() for _ = 1, 5 do ran = ran + 1; gevent.sleep(0.01) end end)
  local t0 = now()
  local ok, e = pcall(a.recv, a, 10)
  local dt = now() - t0
  t.ok(not ok and isinstance(e, TimeoutError), "gevent socket recv times out: " .. tostring(e))
  t.ok(dt >= 0.18 and dt < 2, ("timeout within bounds (%.3f s)"):format(dt))
  t.is(ran, 5, "a greenlet ran during the timed-out wait")
  bg:join(2)
  a:close(); b:close()
end

-- without patching, a plain socket blocks the thread (no switch)
do
  local a, b = socket.socketpair()
  local ran = false
  local g = gevent.spawn(function() ran = true end)
  a:settimeout(0.1)
  local ok = pcall(a.recv, a, 10)
  t.ok(not ok and not ran, "unpatched plain socket: the wait does not switch greenlets")
  g:join(1)
  t.ok(ran, "... the greenlet runs afterwards")
  a:close(); b:close()
end

-- monkey.patch_all(): plain sockets switch greenlets inside greenlets
do
  local out, err, status = t.run_source([[
    local gevent = require "gevent"
    require("gevent.monkey").patch_all()
    local socket = require "socket"
    local srv = socket.create_server({"127.0.0.1", 0}, {backlog=300})
    local addr = srv:getsockname()
    local N, done = 200, 0
    gevent.spawn(function()
      for _ = 1, N do
        local c = srv:accept()
        gevent.spawn(function()
          while true do
            local d = c:recv(100)
            if d == "" then break end
            c:sendall(d)
          end
          c:close()
        end)
      end
    end)
    local clients = {}
    for i = 1, N do
      clients[i] = gevent.spawn(function()
        local c = socket.create_connection(addr, 10)
        c:sendall("hi " .. i)
        if c:recv(100) == "hi " .. i then done = done + 1 end
        c:close()
      end)
    end
    gevent.joinall(clients, 20)
    print(done)
  ]], 30)
  t.is(out, "200\n", "after patch_all, plain sockets in 200 greenlets switch: " .. err)
  t.is(status, 0, "patched run exits 0")
end

-- the port: the gevent echo server serves 200 concurrent clients
do
  local out, err, status = t.run("scripts/sock_echo_gevent.lua 200 5", 60)
  t.is(status, 0, "sock_echo_gevent exits 0")
  t.is(out, "gevent echo server: 200 of 200 clients served, 5 round trips each, 200 handler greenlets\n",
    "gevent echo server serves 200 concurrent clients")
  t.is(err, "", "sock_echo_gevent: nothing on stderr")
end

collectgarbage(); collectgarbage()
t.is(count_fds(), fds_at_start, "no fd leaked")
t.done()
