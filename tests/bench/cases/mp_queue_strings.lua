-- One queue moving 10,000 strings of 1 KiB parent -> child.
local mp = require "multiprocessing"
local monotonic = require("time").monotonic
local N = 10000
local q, done = mp.Queue(), mp.Queue()
local p = mp.Process{target = function()
  local s = 0
  for _ = 1, N do s = s + #q:get() end
  done:put(s)
end}
p:start()
local items = {}
for i = 1, N do items[i] = string.rep(string.char(65 + i % 26), 1024) end
local t0 = monotonic()
for i = 1, N do q:put(items[i]) end
assert(done:get() == N * 1024)
local t = monotonic() - t0
p:join()
print(t)
