-- 100,000 reads + writes of a synchronized Value (its RLock taken per access).
local mp = require "multiprocessing"
local monotonic = require("time").monotonic
local v = mp.Value("d", 0)
local t0 = monotonic()
for _ = 1, 100000 do v.value = v.value + 1 end
assert(v.value == 100000)
print(monotonic() - t0)
