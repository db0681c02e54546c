local clock = require("time").perf_counter
local N = 200000
local gen = coroutine.wrap(function() while true do coroutine.yield(1) end end)
local t0 = clock()
for _ = 1, N do gen() end
print(clock() - t0)
