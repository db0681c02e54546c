-- pool_pack: the packed map chunks of lua_bindings/pool_pack.c, run in
-- one process (a pool worker's side): values of every packable kind,
-- the kept result buffer across nested maps, a raising function, and
-- results that cannot be packed.
local t = require "tests.tap"
local _pool = require "_pool"

local xs = {}
for i = 1, 1000 do xs[i] = i end
local s = _pool.pack(xs, 1, 1000)
t.is(s:byte(1), 78, "a chunk of numbers is packed")

local mixed = _pool.unpack(_pool.pack({ 1, 2.5, true, false, nil, -7, n = 6 }, 1, 6))
t.ok(mixed.n == 6 and mixed[1] == 1 and mixed[2] == 2.5 and mixed[3] == true and mixed[4] == false
  and mixed[5] == nil and mixed[6] == -7 and math.type(mixed[1]) == "integer", "every packable kind round-trips")

local r = _pool.unpack(_pool.map_packed(function(x) return x * 2 end, s))
t.ok(r.n == 1000 and r[1] == 2 and r[1000] == 2000, "map_packed: every result")

-- The mapped function maps too: the inner map must not write into the
-- outer one's buffer.
local inner_ok = true
local outer = _pool.unpack(_pool.map_packed(function(x)
  if x % 100 == 0 then
    local inner = _pool.unpack(_pool.map_packed(function(y) return -y end, s))
    inner_ok = inner_ok and inner[1000] == -1000 and inner[1] == -1
  end
  return x + 1
end, s))
t.ok(inner_ok, "nested map_packed: the inner results")
local all = outer.n == 1000
for i = 1, 1000 do all = all and outer[i] == i + 1 end
t.ok(all, "nested map_packed: the outer results untouched")

-- A raising function frees the kept buffer for the next map.
local ok, err = pcall(_pool.map_packed, function(x) if x == 500 then error("boom") end return x end, s)
t.ok(not ok and tostring(err):find("boom") ~= nil, "a raising function's error comes through")
local after = _pool.unpack(_pool.map_packed(function(x) return x * 3 end, s))
t.ok(after[1] == 3 and after[1000] == 3000, "the map after an error is right")
for _ = 1, 3 do pcall(_pool.map_packed, function() error("again") end, s) end
local again = _pool.unpack(_pool.map_packed(function(x) return x - 1 end, s))
t.ok(again[1] == 0 and again[1000] == 999, "and after several errors")

-- A result that is not a number, boolean or nil: the chunk goes pickled.
local spilled = _pool.map_packed(function(x) if x == 7 then return "seven" end return x end, s)
t.ok(spilled:byte(1) ~= 78, "a string result: the chunk is pickled")
local sp = _pool.unpack(spilled)
t.ok(sp.n == 1000 and sp[7] == "seven" and sp[6] == 6 and sp[8] == 8, "and every result is kept")

local bok, berr = pcall(_pool.map_packed, tostring, "xyz")
t.ok(not bok, "bad chunk: an error")
t.like(tostring(berr), "map_packed.*not a packed chunk", "naming the function and what is wrong")

t.done()
