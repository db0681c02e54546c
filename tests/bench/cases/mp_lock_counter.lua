-- 4 processes x 10,000 increments of a shared value under a shared Lock.
local mp = require "multiprocessing"
local monotonic = require("time").monotonic
local lock, v = mp.Lock(), mp.RawValue("i", 0)
local function work()
  for _ = 1, 10000 do
    lock:acquire()
    v.value = v.value + 1
    lock:release()
  end
end
local t0 = monotonic()
local ps = {}
for i = 1, 4 do ps[i] = mp.Process{target = work}; ps[i]:start() end
for i = 1, 4 do ps[i]:join() end
assert(v.value == 40000)
print(monotonic() - t0)
