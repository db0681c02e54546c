-- map of a trivial function over 100,000 integers on Pool(2).
local Pool = require("pool").Pool
local clock = require("time").perf_counter
local function f(x) return x * 2 end
local p = Pool(2)
p:apply(f, {0})
local xs = {}
for i = 1, 100000 do xs[i] = i end
local t0 = clock()
local r = p:map(f, xs)
local t1 = clock()
assert(r.n == 100000 and r[100000] == 200000)
p:close(); p:join()
print(t1 - t0)
