local gevent = require "gevent"
local clock = require("time").perf_counter
local function f() gevent.sleep(0) end
local t0 = clock()
local gs = {}
for i = 1, 10000 do gs[i] = gevent.spawn(f) end
gevent.joinall(gs)
print(clock() - t0)
