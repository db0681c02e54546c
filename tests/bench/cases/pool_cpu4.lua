-- Four CPU-bound tasks (a pure-Lua loop of about 1 s each) on Pool(2),
-- against the same four run one after another ("serial").
-- Target: parallel / serial <= 0.55, a speedup of at least 1.8.
local Pool = require("pool").Pool
local clock = require("time").perf_counter
local function burn()
  local x = 0
  for i = 1, 100000000 do x = x + i % 3 end
  return x
end
if arg[1] == "serial" then
  local t0 = clock()
  for _ = 1, 4 do burn() end
  print(clock() - t0)
else
  local p = Pool(2)
  local t0 = clock()
  local r = p:map(burn, { 1, 2, 3, 4 }, 1)
  print(clock() - t0)
  assert(r.n == 4)
  p:close()
  p:join()
end
