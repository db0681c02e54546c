-- 栅栏对象: the server and the client both wait at the Barrier, so the
-- client connects only once the server is started.  Stand-ins replace
-- the network (scripts/sock_barrier.lua does it with real sockets).
local threading = require "threading"
local sleep = require("time").sleep

local b = threading.Barrier(2, nil, 5)   -- two parties, 5 s timeout
local mailbox = {}
local box_lock = threading.Lock()
local ROUNDS = 3

local function start_server() sleep(0.2); print("server: started") end
local function accept_connection(i)
  while true do
    box_lock:acquire()
    local c = mailbox[i]
    box_lock:release()
    if c then return c end
    sleep(0.01)
  end
end
local function process_server_connection(c) print("server: handled " .. c) end
local function make_connection(i)
  box_lock:acquire()
  mailbox[i] = "connection " .. i
  box_lock:release()
  return mailbox[i]
end
local function process_client_connection(c) end

local function server()
  start_server()
  b:wait()
  for i = 1, ROUNDS do   -- the notes loop forever
    local connection = accept_connection(i)
    process_server_connection(connection)
  end
end

local function client()
  b:wait()
  print("client: server is ready")
  for i = 1, ROUNDS do
    local connection = make_connection(i)
    process_client_connection(connection)
  end
end

if __name__ == "__main__" then
  local s = threading.Thread{target=server}
  local c = threading.Thread{target=client}
  s:start(); c:start()
  s:join(); c:join()
  print("done")
end
