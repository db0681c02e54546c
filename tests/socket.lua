-- socket: every method and its error paths, TCP/UDP over IPv4, IPv6
-- and Unix sockets, timeouts, peers going away, Ctrl-C, fd hygiene.
local t = require "tests.tap"
local socket = require "socket"
local threading = require "threading"
local time = require "time"
local now, sleep = time.monotonic, time.sleep

local EBADF, EAGAIN, ECONNREFUSED, ENOENT, EADDRINUSE = 9, 11, 111, 2, 98

-- open sockets of this process (not every fd: the pipe of popen itself
-- may or may not be listed yet, and the hub has its own fds)
local count_fds = t.count_socket_fds
local fds_at_start = count_fds()

local function spawn(f, ...)
  local th = threading.Thread{target=f, args=table.pack(...)}
  th:start()
  return th
end

-- A listening server on 127.0.0.1 and a connected pair through it.
local function tcp_pair()
  local srv = socket.create_server({"127.0.0.1", 0})
  local c = socket.create_connection(srv:getsockname(), 5)
  local s = srv:accept()
  srv:close()
  return c, s
end

local function errno_of(fn)
  local ok, e = pcall(fn)
  if ok then return nil, "no error" end
  return type(e) == "table" and e.errno, e
end

-- module -------------------------------------------------------------------
t.ok(socket.error == OSError, "socket.error is OSError")
t.ok(socket.timeout == TimeoutError, "socket.timeout is TimeoutError")
t.ok(issubclass(socket.gaierror, OSError), "gaierror is an OSError")
for _, name in ipairs{"AF_INET", "AF_INET6", "AF_UNIX", "SOCK_STREAM", "SOCK_DGRAM",
    "SOL_SOCKET", "SO_REUSEADDR", "SO_REUSEPORT", "IPPROTO_TCP", "TCP_NODELAY",
    "SHUT_RD", "SHUT_WR", "SHUT_RDWR"} do
  t.ok(math.type(socket[name]) == "integer", "constant " .. name)
end
t.is(socket.AF_INET, 2, "AF_INET is 2")
t.is(socket.SHUT_RDWR, 2, "SHUT_RDWR is 2")
t.ok(type(socket.gethostname()) == "string" and #socket.gethostname() > 0, "gethostname")
t.is(socket.gethostbyname("127.0.0.1"), "127.0.0.1", "gethostbyname of a number")
t.is(socket.gethostbyname("localhost"), "127.0.0.1", "gethostbyname(localhost)")
do
  local list = socket.getaddrinfo("127.0.0.1", 80, socket.AF_INET, socket.SOCK_STREAM)
  t.is(#list, 1, "getaddrinfo: one entry")
  t.is(list[1][1], socket.AF_INET, "getaddrinfo: family")
  t.is(list[1][2], socket.SOCK_STREAM, "getaddrinfo: type")
  t.is(list[1][5][1], "127.0.0.1", "getaddrinfo: sockaddr host")
  t.is(list[1][5][2], 80, "getaddrinfo: sockaddr port")
  local opt = socket.getaddrinfo("127.0.0.1", "80", {type=socket.SOCK_DGRAM})
  t.ok(#opt == 1 and opt[1][2] == socket.SOCK_DGRAM and opt[1][5][2] == 80,
    "getaddrinfo with an options table and a port string")
  local e = t.raises(function() socket.getaddrinfo("no such host!", nil, 0, 0, 0, socket.AI_NUMERICHOST) end,
    socket.gaierror, nil, "getaddrinfo of a bad name raises gaierror")
  t.ok(e and math.type(e.errno) == "integer", "gaierror has errno")
  t.raises(function() socket.getaddrinfo(42, 80) end, TypeError, "getaddrinfo%(%) argument 'host'",
    "getaddrinfo: host must be a string")
end
t.is(socket.getdefaulttimeout(), nil, "default timeout is nil")

-- construction ----------------------------------------------------------------
do
  local s = socket.socket()
  t.is(s.family, socket.AF_INET, "default family")
  t.is(s.type, socket.SOCK_STREAM, "default type")
  t.is(s.proto, 0, "default proto")
  t.ok(math.type(s:fileno()) == "integer" and s:fileno() >= 0, "fileno")
  t.like(tostring(s), "^<socket%.socket fd=%d+, family=2, type=1, proto=0, laddr=%('0%.0%.0%.0', 0%)>$",
    "tostring of a fresh socket")
  t.is(s:gettimeout(), nil, "gettimeout: nil")
  t.ok(s:getblocking(), "blocking by default")
  s:close()
  t.like(tostring(s), "^<socket%.socket %[closed%] fd=%-1, family=2, type=1, proto=0>$", "tostring closed")
  t.is(s:fileno(), -1, "fileno of a closed socket is -1")
  s:close()
  t.ok(true, "close is idempotent")

  local u = socket.socket{family=socket.AF_INET, type=socket.SOCK_DGRAM}
  t.is(u.type, socket.SOCK_DGRAM, "Python-call form, named")
  u:close()
  local u2 = socket.socket{socket.AF_INET6, socket.SOCK_DGRAM}
  t.is(u2.family, socket.AF_INET6, "Python-call form, positional")
  u2:close()
  local nb = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
  t.is(nb.type, socket.SOCK_STREAM, "SOCK_NONBLOCK is not part of type")
  t.is(nb:gettimeout(), 0.0, "SOCK_NONBLOCK gives timeout 0")
  nb:close()

  local MySock = class("MySock", socket.socket)
  function MySock:__init__(tag)
    socket.socket.__init__(self, socket.AF_INET, socket.SOCK_STREAM)
    self.tag = tag
  end
  function MySock:hello() return "hello " .. self.tag end
  local m = MySock("x")
  t.ok(isinstance(m, socket.socket), "subclass instance is a socket.socket")
  t.is(m:hello(), "hello x", "subclass methods and fields")
  t.like(tostring(m), "^<MySock fd=", "subclass tostring names the class")
  m:close()

  t.raises(function() socket.socket("x") end, TypeError, "socket%(%) argument 'family'", "family must be an integer")
  t.raises(function() socket.socket(socket.AF_INET, 2.5) end, TypeError, "argument 'type'", "type must be an integer")
  local e = t.raises(function() socket.socket(12345) end, OSError, nil, "bad family: OSError")
  t.ok(e and e.errno == 97, "bad family: errno EAFNOSUPPORT")
  t.raises(function() socket.socket.bind({}, {"127.0.0.1", 0}) end, TypeError, "expected a socket",
    "methods check self")
end

-- context manager ---------------------------------------------------------------
do
  local fd
  do
    local s <close> = with(socket.socket())
    fd = s:fileno()
    t.ok(fd >= 0, "with(): open inside")
    t.ok(s:__enter__() == s, "__enter__ returns the socket")
  end
  local s2 = socket.socket()
  local ok = pcall(function()
    local s <close> = with(s2)
    error("boom")
  end)
  t.ok(not ok and s2:fileno() == -1, "with(): closed on error too")
end

-- closed sockets raise EBADF -------------------------------------------------
do
  local s = socket.socket()
  s:close()
  local calls = {
    bind = function() s:bind({"127.0.0.1", 0}) end,
    listen = function() s:listen() end,
    accept = function() s:accept() end,
    connect = function() s:connect({"127.0.0.1", 1}) end,
    connect_ex = function() s:connect_ex({"127.0.0.1", 1}) end,
    send = function() s:send("x") end,
    sendall = function() s:sendall("x") end,
    sendto = function() s:sendto("x", {"127.0.0.1", 1}) end,
    recv = function() s:recv(1) end,
    recvfrom = function() s:recvfrom(1) end,
    shutdown = function() s:shutdown(socket.SHUT_RDWR) end,
    setsockopt = function() s:setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1) end,
    getsockopt = function() s:getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) end,
    getsockname = function() s:getsockname() end,
    getpeername = function() s:getpeername() end,
    dup = function() s:dup() end,
  }
  for name, fn in pairs(calls) do
    local errno, e = errno_of(fn)
    t.ok(errno == EBADF and isinstance(e, OSError), "closed socket: " .. name .. " raises OSError EBADF")
  end
end

-- argument errors ------------------------------------------------------------------
do
  local s = socket.socket()
  t.raises(function() s:bind("x") end, TypeError, "bind%(%): AF_INET address must be", "bind: address type")
  t.raises(function() s:bind({"127.0.0.1"}) end, TypeError, "port must be an integer", "bind: missing port")
  t.raises(function() s:bind({"127.0.0.1", 70000}) end, OverflowError, "0%-65535", "bind: port range")
  t.raises(function() s:bind({1, 2}) end, TypeError, "host must be a string", "bind: host type")
  t.raises(function() s:connect({"no such host!", 80}) end, OSError, nil, "connect: bad host name")
  t.raises(function() s:settimeout(-1) end, ValueError, "out of range", "settimeout(-1)")
  t.raises(function() s:settimeout("x") end, TypeError, "settimeout", "settimeout(string)")
  t.raises(function() s:settimeout(0/0) end, ValueError, "NaN", "settimeout(NaN)")
  t.raises(function() s:recv(-1) end, ValueError, "negative buffersize", "recv(-1)")
  t.raises(function() s:recv("x") end, TypeError, "recv%(%) argument 'bufsize'", "recv(string)")
  t.raises(function() s:send(nil) end, TypeError, "send%(%) argument 'data' must be a string", "send(nil)")
  t.raises(function() s:sendall(42) end, TypeError, "sendall%(%) argument 'data'", "sendall(number)")
  t.raises(function() s:sendto("x") end, TypeError, "sendto", "sendto without address")
  t.raises(function() s:shutdown("x") end, TypeError, "shutdown%(%) argument 'how'", "shutdown(string)")
  t.raises(function() s:setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, {}) end, TypeError,
    "setsockopt%(%) argument 'value'", "setsockopt(table)")
  t.raises(function() s:setblocking("yes") end, TypeError, "setblocking", "setblocking(string)")
  t.raises(function() s:listen("x") end, TypeError, "listen%(%) argument 'backlog'", "listen(string)")
  local errno = errno_of(function() s:getpeername() end)
  t.is(errno, 107, "getpeername on an unconnected socket: ENOTCONN")
  s:close()
  t.raises(function() socket.create_connection("x") end, TypeError, "create_connection", "create_connection(string)")
  t.raises(function() socket.create_server({"127.0.0.1", 0}, {dualstack_ipv6=true}) end, ValueError,
    "dualstack", "create_server dualstack needs AF_INET6")
  t.raises(function() socket.setdefaulttimeout(-2) end, ValueError, nil, "setdefaulttimeout(-2)")
end

-- options -----------------------------------------------------------------------------
do
  local s = socket.socket()
  s:setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
  t.ok(s:getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) ~= 0, "SO_REUSEADDR set by integer")
  s:setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, false)
  t.is(s:getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR), 0, "SO_REUSEADDR cleared by boolean")
  s:setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, true)
  t.ok(s:getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) ~= 0, "TCP_NODELAY")
  s:setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, string.pack("i4i4", 1, 0))
  t.is(s:getsockopt(socket.SOL_SOCKET, socket.SO_LINGER, 8), string.pack("i4i4", 1, 0), "raw bytes option")
  t.is(s:getsockopt(socket.SOL_SOCKET, socket.SO_TYPE), socket.SOCK_STREAM, "SO_TYPE")
  local errno = errno_of(function() s:setsockopt(socket.SOL_SOCKET, 123456, 1) end)
  t.is(errno, 92, "unknown option: ENOPROTOOPT")
  s:settimeout(2.5)
  t.is(s:gettimeout(), 2.5, "gettimeout after settimeout")
  t.is(s.timeout, 2.5, "timeout field")
  s:setblocking(false)
  t.is(s:gettimeout(), 0.0, "setblocking(false) -> timeout 0")
  t.is(s.timeout, 0.0, "timeout field follows setblocking(false)")
  t.ok(not s:getblocking(), "getblocking false")
  s:setblocking(true)
  t.is(s:gettimeout(), nil, "setblocking(true) -> timeout nil")
  s:settimeout(nil)
  t.is(s:gettimeout(), nil, "settimeout(nil)")
  t.is(s.timeout, nil, "timeout field nil when blocking")
  s:close()
  socket.setdefaulttimeout(3)
  local d = socket.socket()
  t.is(d:gettimeout(), 3.0, "setdefaulttimeout applies to new sockets")
  d:close()
  socket.setdefaulttimeout(nil)
end

-- TCP over IPv4 -------------------------------------------------------------------------
do
  local srv = socket.socket()
  srv:setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
  srv:bind({"127.0.0.1", 0})
  srv:listen(5)
  local addr = srv:getsockname()
  t.is(addr[1], "127.0.0.1", "getsockname host")
  t.ok(addr[2] > 0, "getsockname: the kernel picked a port")
  local c = socket.socket()
  t.is(c:connect_ex(addr), 0, "connect_ex returns 0 on success")
  local conn, peer = srv:accept()
  t.ok(isinstance(conn, socket.socket), "accept returns a socket")
  t.is(peer[1], "127.0.0.1", "accept: peer host")
  t.is(peer[2], c:getsockname()[2], "accept: peer port is the client's")
  t.is(c:getpeername()[2], addr[2], "getpeername")
  t.like(tostring(conn), "raddr=%('127%.0%.0%.1', %d+%)>$", "tostring shows raddr")
  t.is(c:send("ping"), 4, "send returns the count")
  t.is(conn:recv(10), "ping", "recv")
  conn:sendall("pong")
  t.is(c:recv(2), "po", "recv(2) takes two bytes")
  t.is(c:recv(10), "ng", "recv takes the rest")
  t.is(c:recv(0), "", "recv(0) is empty")
  conn:send("peek")
  t.is(c:recv(4, socket.MSG_PEEK), "peek", "MSG_PEEK leaves the data")
  t.is(c:recv(4), "peek", "then recv takes it")
  c:shutdown(socket.SHUT_WR)
  t.is(conn:recv(10), "", "shutdown(SHUT_WR): peer reads EOF")
  conn:sendall("still")
  t.is(c:recv(10), "still", "the other direction still works")
  conn:close()
  t.is(c:recv(10), "", "recv after the peer closed: empty string")
  c:close()

  local d = socket.socket()
  local port = srv:getsockname()[2]
  local e = t.raises(function() d:bind({"127.0.0.1", port}) end, OSError, "Address already in use",
    "bind to a port in use")
  t.is(e and e.errno, EADDRINUSE, "EADDRINUSE errno")
  d:close()
  srv:close()

  -- the port is closed now: connection refused
  local r = socket.socket()
  local err = t.raises(function() r:connect({"127.0.0.1", port}) end, ConnectionRefusedError, nil,
    "connect to a closed port: ConnectionRefusedError")
  t.is(err and err.errno, ECONNREFUSED, "ConnectionRefusedError.errno is ECONNREFUSED")
  t.like(err and err.strerror, "refused", "strerror")
  r:close()
  local r2 = socket.socket()
  t.is(r2:connect_ex({"127.0.0.1", port}), ECONNREFUSED, "connect_ex returns ECONNREFUSED")
  r2:close()
  t.raises(function() socket.create_connection({"127.0.0.1", port}, 2) end, ConnectionRefusedError, nil,
    "create_connection to a closed port")
end

-- create_connection / create_server / dup / detach / socketpair ---------------------------
do
  local srv = socket.create_server({"127.0.0.1", 0}, {backlog=4, reuse_port=true})
  t.ok(srv:getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) ~= 0, "create_server sets SO_REUSEADDR")
  t.ok(srv:getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) ~= 0, "create_server reuse_port")
  local c = socket.create_connection({"localhost", srv:getsockname()[2]}, {timeout=3})
  t.is(c:gettimeout(), 3.0, "create_connection{timeout=} sets the timeout")
  local conn = srv:accept()
  local c2 = c:dup()
  t.ok(c2:fileno() ~= c:fileno(), "dup: another fd")
  t.ok(c2.timeout == 3.0 and c2.family == c.family and c2.type == socket.SOCK_STREAM,
       "dup: timeout, family and type fields")
  t.is(c.timeout, 3.0, "create_connection's timeout field")
  t.is(conn.family, socket.AF_INET, "accepted socket's family field")
  c2:sendall("via dup")
  t.is(conn:recv(20), "via dup", "dup shares the connection")
  c2:close()
  local fd = c:detach()
  t.ok(fd >= 0 and c:fileno() == -1, "detach gives up the fd")
  local c3 = socket.socket{fileno=fd}
  t.is(c3.family, socket.AF_INET, "socket{fileno=} finds the family")
  t.is(c3.type, socket.SOCK_STREAM, "socket{fileno=} finds the type")
  c3:sendall("wrapped")
  t.is(conn:recv(20), "wrapped", "socket{fileno=} works")
  c3:close(); conn:close(); srv:close()

  local a, b = socket.socketpair()
  t.is(a.family, socket.AF_UNIX, "socketpair: AF_UNIX")
  a:sendall("pair")
  t.is(b:recv(10), "pair", "socketpair carries data")
  a:close(); b:close()
end

-- timeouts ------------------------------------------------------------------------------
do
  local c, s = tcp_pair()
  c:settimeout(0.2)
  local t0 = now()
  local e = t.raises(function() c:recv(10) end, TimeoutError, "timed out", "recv times out")
  local dt = now() - t0
  t.ok(dt >= 0.18 and dt < 2, ("recv timeout within bounds (%.3f s)"):format(dt))
  t.ok(isinstance(e, socket.timeout) and isinstance(e, OSError), "socket.timeout is an OSError")
  c:settimeout(0)
  local errno, be = errno_of(function() c:recv(10) end)
  t.is(errno, EAGAIN, "non-blocking recv with no data: EAGAIN")
  t.ok(isinstance(be, BlockingIOError), "... as BlockingIOError")
  s:sendall("late")
  c:settimeout(2)
  t.is(c:recv(10), "late", "data arriving within the timeout")
  -- sendall's timeout bounds the whole call: the peer never reads
  c:settimeout(0.3)
  local big = string.rep("x", 64 * 1024 * 1024)
  t0 = now()
  t.raises(function() c:sendall(big) end, TimeoutError, nil, "sendall to a peer that never reads times out")
  dt = now() - t0
  t.ok(dt >= 0.25 and dt < 3, ("sendall timeout within bounds (%.3f s)"):format(dt))
  c:close(); s:close()

  local srv = socket.create_server({"127.0.0.1", 0})
  srv:settimeout(0.15)
  t0 = now()
  t.raises(function() srv:accept() end, TimeoutError, nil, "accept times out")
  dt = now() - t0
  t.ok(dt >= 0.13 and dt < 2, ("accept timeout within bounds (%.3f s)"):format(dt))
  srv:setblocking(false)
  t.is(errno_of(function() srv:accept() end), EAGAIN, "non-blocking accept: EAGAIN")
  srv:close()

  -- connect timing out: a listener whose backlog is full does not answer
  -- SYNs (the usual trick); skip if the kernel answers anyway
  local full = socket.socket()
  full:bind({"127.0.0.1", 0}); full:listen(0)
  local addr = full:getsockname()
  local fillers = {}
  local timed_out = false
  for i = 1, 8 do
    local f = socket.socket()
    f:settimeout(0.2)
    local ok, err = pcall(f.connect, f, addr)
    fillers[#fillers + 1] = f
    if not ok then timed_out = isinstance(err, TimeoutError); break end
  end
  if timed_out then
    local f = socket.socket()
    f:settimeout(0.2)
    t.is(f:connect_ex(addr), EAGAIN, "connect_ex timing out returns EAGAIN (EWOULDBLOCK)")
    f:close()
  else
    t.ok(true, "# skip: the kernel accepted every SYN")
  end
  for _, f in ipairs(fillers) do f:close() end
  full:close()
end

-- blocking calls release the GIL; peers going away -------------------------------------
do
  local c, s = tcp_pair()
  local got
  local th = spawn(function() got = c:recv(100) end)
  -- the main thread keeps running Lua while the other waits in recv
  local spins, t0 = 0, now()
  while now() - t0 < 0.2 do spins = spins + 1 end
  t.ok(spins > 1000, "the main thread runs while another blocks in recv")
  s:close()   -- the peer closes mid-recv
  th:join(5)
  t.ok(not th:is_alive(), "recv returned when the peer closed")
  t.is(got, "", "... with the empty string")
  c:close()

  -- a reset peer (SO_LINGER 0): ConnectionResetError
  c, s = tcp_pair()
  s:setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, string.pack("i4i4", 1, 0))
  c:sendall("unread")
  sleep(0.05)
  s:close()
  sleep(0.05)
  local err = t.raises(function() c:recv(10) end, ConnectionResetError, nil, "recv from a reset peer")
  t.is(err and err.errno, 104, "ConnectionResetError.errno is ECONNRESET")
  c:close()

  -- sending to a peer that went away: BrokenPipeError, and no SIGPIPE death
  c, s = tcp_pair()
  s:close()
  c:settimeout(2)
  local ok, perr
  for _ = 1, 100 do
    ok, perr = pcall(c.sendall, c, string.rep("y", 65536))
    if not ok then break end
    sleep(0.005)
  end
  t.ok(not ok and (isinstance(perr, BrokenPipeError) or isinstance(perr, ConnectionResetError)),
    "send to a closed peer: BrokenPipeError/ConnectionResetError, process alive: " .. tostring(perr))
  c:close()

  -- closing a socket another thread waits on: the waiter gets EBADF once woken
  c, s = tcp_pair()
  local werr
  c:settimeout(0.3)
  th = spawn(function() local ok2, e2 = pcall(c.recv, c, 10); werr = e2 end)
  sleep(0.05)
  c:close()
  th:join(5)
  t.ok(isinstance(werr, OSError), "a waiter on a socket closed meanwhile gets an OSError: " .. tostring(werr))
  s:close()
end

-- UDP -----------------------------------------------------------------------------
do
  local a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
  a:bind({"127.0.0.1", 0})
  local b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
  b:bind({"127.0.0.1", 0})
  t.is(b:sendto("datagram", a:getsockname()), 8, "sendto returns the count")
  a:settimeout(2)
  local data, addr = a:recvfrom(100)
  t.is(data, "datagram", "recvfrom data")
  t.is(addr[2], b:getsockname()[2], "recvfrom address is the sender's")
  a:sendto("back", 0, addr)
  b:settimeout(2)
  t.is(b:recv(100), "back", "sendto with flags")
  b:sendto("trunc-me", a:getsockname())
  t.is(a:recvfrom(5), "trunc", "a short buffer truncates the datagram")
  a:settimeout(0.1)
  t.raises(function() a:recvfrom(10) end, TimeoutError, nil, "recvfrom times out")
  b:connect(a:getsockname())
  b:send("connected udp")
  a:settimeout(2)
  t.is(a:recv(100), "connected udp", "connected UDP send")
  a:close(); b:close()
end

-- Unix sockets ----------------------------------------------------------------------
do
  local path = os.tmpname()
  os.remove(path)
  local srv = socket.socket(socket.AF_UNIX)
  srv:bind(path)
  srv:listen()
  t.is(srv:getsockname(), path, "AF_UNIX getsockname is the path")
  t.like(tostring(srv), "laddr=" .. path:gsub("%p", "%%%0") .. ">$", "AF_UNIX tostring")
  local c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
  c:connect(path)
  local conn, addr = srv:accept()
  t.is(addr, "", "accept from an unnamed Unix client: empty address")
  t.is(c:getpeername(), path, "AF_UNIX getpeername")
  c:sendall("over unix")
  t.is(conn:recv(100), "over unix", "AF_UNIX stream data")
  conn:close(); c:close(); srv:close()
  os.remove(path)
  local e = t.raises(function()
    local u = socket.socket(socket.AF_UNIX); local ok, er = pcall(u.connect, u, path); u:close(); error(er)
  end, FileNotFoundError, nil, "connect to a missing path: FileNotFoundError")
  t.is(e and e.errno, ENOENT, "... errno ENOENT")
  t.raises(function() socket.socket(socket.AF_UNIX):bind({"x", 1}) end, TypeError,
    "AF_UNIX address must be a string", "AF_UNIX address type")
  t.raises(function() socket.socket(socket.AF_UNIX):bind(string.rep("p", 200)) end, OSError,
    nil, "AF_UNIX path too long")
  -- abstract namespace and datagrams
  local name = "\0mtlua-test-" .. os.getpid()
  local d1 = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
  d1:bind(name)
  t.is(d1:getsockname(), name, "abstract Unix name round-trips")
  local d2 = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
  d2:sendto("unix dgram", name)
  d1:settimeout(2)
  t.is(d1:recv(100), "unix dgram", "AF_UNIX datagram")
  d1:close(); d2:close()
  collectgarbage()
end

-- IPv6 -------------------------------------------------------------------------------
do
  local srv = socket.socket(socket.AF_INET6)
  local ok = pcall(srv.bind, srv, {"::1", 0})
  if not ok then
    t.ok(true, "# skip: no IPv6 loopback on this machine")
    srv:close()
  else
    srv:listen()
    local addr = srv:getsockname()
    t.is(addr[1], "::1", "IPv6 getsockname host")
    t.is(#addr, 4, "IPv6 addresses have 4 fields")
    local c = socket.create_connection({"::1", addr[2]}, 2)
    t.is(c.family, socket.AF_INET6, "create_connection picks AF_INET6 for ::1")
    local conn, peer = srv:accept()
    t.is(peer[1], "::1", "IPv6 peer address")
    t.like(tostring(c), "raddr=%('::1', %d+, 0, 0%)>$", "IPv6 tostring")
    c:sendall("six")
    t.is(conn:recv(10), "six", "IPv6 data")
    conn:close(); c:close(); srv:close()
    local s6 = socket.create_server({"::1", 0}, {family=socket.AF_INET6})
    t.is(s6.family, socket.AF_INET6, "create_server AF_INET6")
    s6:close()
  end
end

-- Ctrl-C interrupts a blocking accept in the main thread ------------------------------
do
  local out, err, status = t.run_source([[
    local socket = require "socket"
    local srv = socket.create_server({"127.0.0.1", 0})
    os.execute("(sleep 0.3; kill -INT " .. os.getpid() .. ") &")
    local ok, e = pcall(srv.accept, srv)
    print(isinstance(e, KeyboardInterrupt) and "interrupted" or tostring(e))
  ]], 20)
  t.is(out, "interrupted\n", "Ctrl-C interrupts accept with KeyboardInterrupt")
  local o2, _, st2 = t.run_source([[
    local socket = require "socket"
    local c = socket.socket(socket.AF_UNIX); c:close()
    local a, b = socket.socketpair()
    a:close()
    for i = 1, 3 do pcall(b.sendall, b, "x") end
    print("alive")
  ]], 20)
  t.is(o2, "alive\n", "writing to a closed peer does not kill the process (SIGPIPE)")
end

-- close-on-exec and fd leaks -----------------------------------------------------------
do
  local s = socket.create_server({"127.0.0.1", 0})
  local fd = s:fileno()
  local p = io.popen("ls /proc/self/fd/ 2>/dev/null")
  local listing = p:read("a")
  p:close()
  t.ok(not listing:find("\n" .. fd .. "\n", 1, true) and not listing:find("^" .. fd .. "\n"),
    "socket fds are close-on-exec")
  s:close()
  collectgarbage(); collectgarbage()
  local unclosed = socket.socket()
  unclosed = nil
  collectgarbage(); collectgarbage()
  t.is(count_fds(), fds_at_start, "no fd leaked (collected sockets close theirs)")
end

t.done()
