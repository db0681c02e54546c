local greenlet = require("greenlet").greenlet
local getcurrent = require("greenlet").getcurrent
local clock = require("time").perf_counter
local main = getcurrent()
local N = 200000
local g = greenlet(function() while true do main:switch() end end)
local t0 = clock()
for _ = 1, N do g:switch() end
print(clock() - t0)
