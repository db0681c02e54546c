-- ping-pong: a round trip between two threads over two queues
local threading = require "threading"
local queue = require "queue"
local clock = require("time").perf_counter
local N = 10000
local ping, pong = queue.Queue(), queue.Queue()
local th = threading.Thread{target=function()
  for _ = 1, N do pong:put(ping:get()) end
end}
th:start()
local t0 = clock()
for i = 1, N do ping:put(i); pong:get() end
print((clock() - t0))
th:join()
