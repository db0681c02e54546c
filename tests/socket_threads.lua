-- socket under threads: 50 threads each doing an echo exchange at once,
-- sendall of 8 MiB to a slow reader (partial sends), many threads
-- blocked in recv while the GIL goes round; no fd leaked.
local t = require "tests.tap"
local socket = require "socket"
local threading = require "threading"
local sleep = require("time").sleep

-- open sockets of this process (not every fd: the pipe of popen itself
-- may or may not be listed yet, and the hub has its own fds)
local count_fds = t.count_socket_fds
local fds_at_start = count_fds()

local function spawn(f, ...)
  local th = threading.Thread{target=f, args=table.pack(...)}
  th:start()
  return th
end

local function recv_exactly(c, n)
  local parts, got = {}, 0
  while got < n do
    local d = c:recv(math.min(n - got, 65536))
    if d == "" then break end
    parts[#parts + 1] = d
    got = got + #d
  end
  return table.concat(parts)
end

-- 50 threads, each an echo exchange, against a thread-per-client server
do
  local N = 50
  local srv = socket.create_server({"127.0.0.1", 0}, {backlog=128})
  srv:settimeout(10)
  local addr = srv:getsockname()
  local handlers = {}
  local server = spawn(function()
    for i = 1, N do
      local conn = srv:accept()
      conn:settimeout(10)
      handlers[i] = spawn(function()
        while true do
          local d = conn:recv(8192)
          if d == "" then break end
          conn:sendall(d)
        end
        conn:close()
      end)
    end
  end)
  local ok, start = {}, threading.Barrier(N, nil, 10)
  local clients = {}
  for id = 1, N do
    clients[id] = spawn(function()
      start:wait()
      local c = socket.create_connection(addr, 10)
      local good = true
      for round = 1, 20 do
        -- sizes vary so that some echoes come back in several pieces
        local msg = ("%d:%d:"):format(id, round) .. string.rep(string.char(65 + id % 26), (id * round * 37) % 20000)
        c:sendall(msg)
        if recv_exactly(c, #msg) ~= msg then good = false end
      end
      c:close()
      ok[id] = good
    end)
  end
  for _, th in ipairs(clients) do th:join(30) end
  server:join(10)
  for _, th in pairs(handlers) do th:join(10) end
  local n = 0
  for id = 1, N do if ok[id] then n = n + 1 end end
  t.is(n, N, "50 threads each complete 20 echo round trips")
  srv:close()
end

-- sendall of 8 MiB to a slow reader: the kernel takes it in pieces
do
  local a, b = socket.socketpair()
  a:setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
  local chunks = {}
  for i = 1, 8 * 1024 do chunks[i] = ("%8d"):format(i) .. string.rep(".", 1015) .. "\n" end
  local data = table.concat(chunks)
  t.is(#data, 8 * 1024 * 1024, "8 MiB of data")
  local got, reads
  local reader = spawn(function()
    local parts, n = {}, 0
    b:settimeout(20)
    while true do
      local d = b:recv(65536)
      if d == "" then break end
      parts[#parts + 1] = d
      n = n + 1
      if n % 16 == 0 then sleep(0.002) end   -- a slow reader
    end
    got, reads = table.concat(parts), n
  end)
  a:settimeout(20)
  a:sendall(data)
  a:shutdown(socket.SHUT_WR)
  reader:join(30)
  t.ok(got == data, "sendall delivers 8 MiB intact to a slow reader")
  t.ok(reads and reads > 8, "... in many pieces (" .. tostring(reads) .. " reads)")
  a:close(); b:close()

  -- the same over TCP with both ends in threads
  local srv = socket.create_server({"127.0.0.1", 0})
  local sum
  local th = spawn(function()
    local conn = srv:accept()
    conn:settimeout(20)
    local n = 0
    while true do
      local d = conn:recv(100000)
      if d == "" then break end
      n = n + #d
    end
    conn:close()
    sum = n
  end)
  local c = socket.create_connection(srv:getsockname(), 20)
  c:sendall(data)
  c:close()
  th:join(30)
  t.is(sum, #data, "8 MiB over TCP")
  srv:close()
end

-- many threads blocked in recv at once, woken in turn by the main thread
do
  local N = 30
  local pairs_, got, threads = {}, {}, {}
  for i = 1, N do
    local a, b = socket.socketpair()
    pairs_[i] = {a, b}
    b:settimeout(10)
    threads[i] = spawn(function() got[i] = b:recv(100) end)
  end
  sleep(0.05)
  for i = N, 1, -1 do pairs_[i][1]:sendall("wake " .. i) end
  local all = true
  for i = 1, N do
    threads[i]:join(10)
    if got[i] ~= "wake " .. i then all = false end
    pairs_[i][1]:close(); pairs_[i][2]:close()
  end
  t.ok(all, "30 threads blocked in recv each get their own data")
end

collectgarbage(); collectgarbage()
t.is(count_fds(), fds_at_start, "no fd leaked")
t.done()
