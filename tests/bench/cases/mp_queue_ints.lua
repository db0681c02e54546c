-- One queue moving 100,000 small integers parent -> child.
local mp = require "multiprocessing"
local monotonic = require("time").monotonic
local N = 100000
local q, done = mp.Queue(), mp.Queue()
local p = mp.Process{target = function()
  local s = 0
  for _ = 1, N do s = s + q:get() end
  done:put(s)
end}
p:start()
local t0 = monotonic()
for i = 1, N do q:put(i) end
assert(done:get() == N * (N + 1) // 2)
local t = monotonic() - t0
p:join()
print(t)
