-- Process start + join, averaged over 200 children (seconds each).
local mp = require "multiprocessing"
local monotonic = require("time").monotonic
local function f() end
local N = 200
local t0 = monotonic()
for _ = 1, N do
  local p = mp.Process{target = f}
  p:start()
  p:join()
end
print((monotonic() - t0) / N)
