local threading = require "threading"
local clock = require("time").perf_counter
local N = 5000
local a, b = threading.Event(), threading.Event()
local th = threading.Thread{target=function()
  for i = 1, N do a:wait(); a:clear(); b:set() end
end}
th:start()
local t0 = clock()
for i = 1, N do a:set(); b:wait(); b:clear() end
print((clock() - t0))
th:join()
