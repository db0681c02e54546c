local threading = require "threading"
local clock = require("time").perf_counter
local lk = threading.Lock()
local N = 2000000
local t0 = clock()
for i = 1, N do
  local _ <close> = with(lk)
end
print((clock() - t0))
