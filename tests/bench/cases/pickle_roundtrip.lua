-- pickle.dumps + pickle.loads of a 10,000-element mixed table, 20 times.
local pickle = require "pickle"
local perf_counter = require("time").perf_counter

local items = {}
for i = 1, 10000 do
  local m = i % 5
  if m == 0 then items[i] = i * 1000
  elseif m == 1 then items[i] = i * 0.5
  elseif m == 2 then items[i] = "item-" .. i
  elseif m == 3 then items[i] = {i, "x", false}
  else items[i] = {id = i, name = "n" .. i, ok = true} end
end

local dumps, loads = pickle.dumps, pickle.loads
local t0 = perf_counter()
for _ = 1, 20 do
  local r = loads(dumps(items))
  assert(#r == 10000)
end
print(perf_counter() - t0)
