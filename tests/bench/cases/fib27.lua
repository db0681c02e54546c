local clock = require("time").perf_counter
local function fib(n) if n < 2 then return n end return fib(n - 1) + fib(n - 2) end
local t0 = clock()
fib(27)
print((clock() - t0))
