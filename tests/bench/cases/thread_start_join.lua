local threading = require "threading"
local clock = require("time").perf_counter
local function f() end
local N = 2000
local t0 = clock()
for i = 1, N do
  local t = threading.Thread{target=f}
  t:start(); t:join()
end
print((clock() - t0))
