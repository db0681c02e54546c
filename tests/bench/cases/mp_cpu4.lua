-- Four CPU-bound processes (a pure-Lua loop of about 1 s each): run in
-- parallel, against the same four run one after another ("serial").
local mp = require "multiprocessing"
local clock = require("time").perf_counter
local function burn()
  local x = 0
  for i = 1, 200000000 do x = x + i % 3 end
  return x
end
local t0 = clock()
if arg[1] == "serial" then
  for _ = 1, 4 do burn() end
else
  local ps = {}
  for i = 1, 4 do ps[i] = mp.Process{target=burn}; ps[i]:start() end
  for i = 1, 4 do ps[i]:join() end
end
print(clock() - t0)
