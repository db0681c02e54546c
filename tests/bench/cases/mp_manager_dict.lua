-- 2,000 writes then 2,000 reads of a Manager dict of 100 keys.
local mp = require "multiprocessing"
local monotonic = require("time").monotonic
local m = mp.Manager()
local d = m:dict()
local t0 = monotonic()
for i = 1, 2000 do d[i % 100] = i end
local s = 0
for i = 1, 2000 do s = s + d[i % 100] end
print(monotonic() - t0)
m:shutdown()
