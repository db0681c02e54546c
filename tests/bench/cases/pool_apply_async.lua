-- 20,000 trivial apply_async tasks on Pool(2), every result collected.
local Pool = require("pool").Pool
local clock = require("time").perf_counter
local function f(x) return x + 1 end
local p = Pool(2)
p:apply(f, {0})   -- workers up
local t0 = clock()
local rs = {}
for i = 1, 20000 do rs[i] = p:apply_async(f, {i}) end
local s = 0
for i = 1, 20000 do s = s + rs[i]:get() end
local t1 = clock()
assert(s == 20000 * 20001 // 2 + 20000)
p:close(); p:join()
print(t1 - t0)
