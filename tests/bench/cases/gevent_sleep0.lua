local gevent = require "gevent"
local clock = require("time").perf_counter
local N = 100000
local function f() for _ = 1, N do gevent.sleep(0) end end
local t0 = clock()
gevent.joinall({gevent.spawn(f), gevent.spawn(f)})
print((clock() - t0) / (2 * N) * N)
