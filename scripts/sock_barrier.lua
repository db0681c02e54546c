-- 栅栏对象 (Barrier) with a real server and client: the notes' example
--
--   b = Barrier(2, timeout=5)
--   def server(): start_server(); b.wait(); while True: accept + process
--   def client(): b.wait(); while True: connect + process
--
-- The client connects only after the server listens: both wait at the
-- barrier first.  The port is 0 (the kernel picks one; getsockname tells
-- which), and both loops are bounded so the script ends.
local threading = require "threading"
local socket = require "socket"

local b = threading.Barrier(2, nil, 5)   -- two parties, 5 s timeout
local ROUNDS = 3
local srv, address

local function start_server()
  srv = socket.create_server({"127.0.0.1", 0})
  address = srv:getsockname()
  print("server: started")
end

local function accept_connection()
  srv:settimeout(5)
  local conn = srv:accept()
  conn:settimeout(5)
  return conn
end

local function process_server_connection(conn)
  local c <close> = conn
  local request = c:recv(1024)
  print(("server: got %q"):format(request))
  c:sendall(request:upper())
end

local function make_connection()
  return socket.create_connection(address, 5)
end

local function process_client_connection(conn, i)
  local c <close> = conn
  c:sendall("hello " .. i)
  print(("client: server replied %q"):format(c:recv(1024)))
end

local function server()
  start_server()
  b:wait()
  for _ = 1, ROUNDS do   -- the notes loop forever
    local connection = accept_connection()
    process_server_connection(connection)
  end
  srv:close()
end

local function client()
  b:wait()
  for i = 1, ROUNDS do
    local connection = make_connection()
    process_client_connection(connection, i)
  end
end

if __name__ == "__main__" then
  local s = threading.Thread{target=server}
  local c = threading.Thread{target=client}
  s:start(); c:start()
  s:join(10); c:join(10)
  print("done")
end
