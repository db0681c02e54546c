local threading = require "threading"
local clock = require("time").perf_counter
local lk = threading.RLock()
local N = 2000000
local t0 = clock()
for i = 1, N do lk:acquire(); lk:release() end
print((clock() - t0))
