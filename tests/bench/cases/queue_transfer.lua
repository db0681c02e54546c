-- one producer thread and one consumer thread move 200,000 integers
local threading = require "threading"
local queue = require "queue"
local clock = require("time").perf_counter
local N = 200000
local q = queue.Queue()
local t0 = clock()
local consumer = threading.Thread{target=function()
  local sum = 0
  for _ = 1, N do sum = sum + q:get() end
  assert(sum == N * (N + 1) // 2)
end}
local producer = threading.Thread{target=function()
  for i = 1, N do q:put(i) end
end}
consumer:start(); producer:start()
producer:join(); consumer:join()
print((clock() - t0))
