local gevent = require "gevent"
local clock = require("time").perf_counter
local t0 = clock()
local gs = {}
for i = 1, 1000 do gs[i] = gevent.spawn(gevent.sleep, 0.01) end
gevent.joinall(gs)
print(clock() - t0)
