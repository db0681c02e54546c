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
local count_fds = t.count_socket_fds
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

-- a reader and a writer wait on the same fd at once (one poll watches
-- both directions); the thread is never blocked meanwhile
do
  local a, b = gsocket.socketpair()
  a:settimeout(5)
  local BIG = 4 * 1024 * 1024
  local got, sent, ticks = nil, false, 0
  local r = gevent.spawn(function() got = a:recv(10) end)
  local w = gevent.spawn(function() a:sendall(string.rep("x", BIG)); sent = true end)
  local tk = gevent.spawn(function() for _ = 1, 5 do ticks = ticks + 1; gevent.sleep(0.005) end end)
  -- a wait that blocked the thread would hold the ticker for the 5 s timeout
  local t0 = now()
  tk:join(4)
  t.ok(got == nil and not sent and ticks == 5 and now() - t0 < 3,
       ("reader and writer both wait on one fd, other greenlets run (ticks %d, %.2f s)"):format(ticks, now() - t0))
  local n = 0
  local drain = gevent.spawn(function()
    b:settimeout(5)
    while n < BIG do n = n + #b:recv(65536) end
  end)
  b:sendall("ping")
  gevent.joinall({r, w, drain, tk}, 10)
  t.is(got, "ping", "the reader got its data")
  t.ok(sent and n == BIG, "the writer sent all 4 MiB (" .. n .. " bytes arrived)")
  a:close(); b:close()
end

-- two readers on one fd both get served
do
  local a, b = gsocket.socketpair()
  a:settimeout(3)
  local got = {}
  local readers = {}
  for i = 1, 2 do readers[i] = gevent.spawn(function() local d = a:recv(1); got[#got + 1] = d end) end
  gevent.sleep(0.02)
  b:sendall("x")
  gevent.sleep(0.02)
  b:sendall("y")
  gevent.joinall(readers, 3)
  table.sort(got)
  t.is(table.concat(got), "xy", "two greenlets reading one socket each get a byte")
  a:close(); b:close()
end

-- close() wakes the greenlets waiting on the socket: OSError EBADF
do
  local a, b = gsocket.socketpair()
  local rerr, werr
  local r = gevent.spawn(function() local _, e = pcall(a.recv, a, 10); rerr = e end)
  local w = gevent.spawn(function() local _, e = pcall(a.sendall, a, string.rep("y", 4 * 1024 * 1024)); werr = e end)
  gevent.sleep(0.05)
  local t0 = now()
  a:close()
  gevent.joinall({r, w}, 2)
  t.ok(isinstance(rerr, OSError) and rerr.errno == 9,
       "close() wakes a greenlet waiting in recv with EBADF: " .. tostring(rerr))
  t.ok(isinstance(werr, OSError) and werr.errno == 9,
       "close() wakes a greenlet waiting in sendall with EBADF: " .. tostring(werr))
  t.ok(now() - t0 < 1, "... at once")
  b:close()
end

-- closed from another OS thread while a greenlet of this one waits on it
do
  local threading = require "threading"
  local a, b = gsocket.socketpair()
  local err
  local g = gevent.spawn(function() local _, e = pcall(a.recv, a, 10); err = e end)
  gevent.sleep(0.02)
  local th = threading.Thread{target = function() a:close() end}
  th:start()
  g:join(3)
  th:join(3)
  t.ok(isinstance(err, OSError) and err.errno == 9,
       "a close in another thread wakes the waiting greenlet with EBADF: " .. tostring(err))
  b:close()
end

-- an fd number reused after close (or after a socket is collected
-- unclosed) is watched afresh: a stale poll would never see its data
do
  local function wait_used(a, b)   -- a recv that had to wait: a's poll is kept
    gevent.spawn(function() gevent.sleep(0.01); b:sendall("1") end)
    return a:recv(1)
  end
  local function works(c, d, what)
    c:settimeout(2); d:settimeout(2)
    gevent.spawn(function() gevent.sleep(0.01); d:sendall("2") end)
    local ok1, v1 = pcall(c.recv, c, 1)
    gevent.spawn(function() gevent.sleep(0.01); c:sendall("3") end)
    local ok2, v2 = pcall(d.recv, d, 1)
    t.ok(ok1 and v1 == "2" and ok2 and v2 == "3", what .. ": " .. tostring(v1) .. " " .. tostring(v2))
  end
  local a, b = gsocket.socketpair()
  a:settimeout(2); b:settimeout(2)
  t.is(wait_used(a, b), "1", "a wait on a fresh pair")
  t.is(wait_used(b, a), "1", "... both ways")
  local fa, fb = a:fileno(), b:fileno()
  a:close(); b:close()
  local c, d = gsocket.socketpair()
  t.ok((c:fileno() == fa or c:fileno() == fb) and (d:fileno() == fa or d:fileno() == fb),
       "the fd numbers are reused")
  works(c, d, "waits on reused fd numbers see their data")
  fa, fb = c:fileno(), d:fileno()
  c, d = nil, nil
  collectgarbage(); collectgarbage()
  local e, f = gsocket.socketpair()
  t.ok(e:fileno() == fa or e:fileno() == fb, "a collected socket's fd number is reused")
  works(e, f, "waits on the fd numbers of collected sockets see their data")
  e:close(); f:close()
end

-- a greenlet's wait timer is kept armed between its timed waits
-- (hub.c): each wait still ends on its own deadline, an idle timer
-- keeps no loop alive, and one whose greenlet is collected just goes
do
  local a, b = gsocket.socketpair()
  local function waited_recv(data)   -- the data comes while recv waits
    local g = gevent.spawn(function() gevent.sleep(0.02); b:sendall(data) end)
    local got = a:recv(10)
    g:join(2)
    return got
  end
  local function timed_recv()
    local t0 = now()
    local ok, e = pcall(a.recv, a, 10)
    return not ok and isinstance(e, TimeoutError), now() - t0
  end
  a:settimeout(5)
  t.is(waited_recv("x"), "x", "a timed recv that waits for its data (timer armed for 5 s)")
  a:settimeout(0.1)
  local timed_out, dt = timed_recv()
  t.ok(timed_out and dt >= 0.09 and dt < 2,
       ("a shorter timeout after a longer one ends on its own deadline (%.3f s)"):format(dt))
  a:settimeout(0.05)
  t.is(waited_recv("y"), "y", "a timed recv that waits for its data (timer armed for 0.05 s)")
  a:settimeout(0.3)
  timed_out, dt = timed_recv()
  t.ok(timed_out and dt >= 0.28 and dt < 2,
       ("a longer timeout after a shorter one is not cut short (%.3f s)"):format(dt))
  local out = t.run_source([[
    local gevent = require "gevent"
    local gsocket = require "gevent.socket"
    local now = require("time").monotonic
    local a, b = gsocket.socketpair()
    a:settimeout(5)
    local g = gevent.spawn(function() gevent.sleep(0.02); b:sendall("z") end)
    a:recv(10)
    g:join()
    a:close(); b:close()
    local t0 = now()
    print(gevent.wait(), now() - t0 < 1)
  ]], 20)
  t.is(out, "true\ttrue\n", "gevent.wait() returns at once: an idle wait timer keeps no loop alive")
  local g = gevent.spawn(function()
    b:settimeout(0.1)
    gevent.spawn(function() gevent.sleep(0.02); a:sendall("w") end)
    return b:recv(10)
  end)
  t.is(g:get(2), "w", "a greenlet's timed recv")
  g = nil
  collectgarbage(); collectgarbage()
  gevent.sleep(0.2)   -- its idle timer fires with the greenlet collected
  t.ok(true, "a collected greenlet's idle wait timer fired harmlessly")
  a:close(); b:close()
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
