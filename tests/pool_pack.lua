-- pool_pack: the packed map chunks of lua_bindings/pool_pack.c, run in
-- one process (a pool worker's side): values of every packable kind,
-- the kept result buffer across nested maps, a raising function, and
-- results that cannot be packed.
local t = require "tests.tap"
local _pool = require "_pool"

local xs = {}
for i = 1, 1000 do xs[i] = i end
local s = _pool.pack(xs, 1, 1000)
t.is(s:byte(1), 68, "a chunk of integers is packed as deltas")
t.is(#s, 5 + 1000, "a range takes a byte a value")
t.is(_pool.pack({ 1.5, 2, n = 2 }, 1, 2):byte(1), 78, "a chunk with a float is tagged")

-- The delta form: extremes, jumps across the whole range, negatives.
local mini, maxi = math.mininteger, math.maxinteger
local ints = { 0, -1, maxi, mini, mini, maxi, 1, -maxi, 123456789012, -5, n = 10 }
local ps = _pool.pack(ints, 1, 10)
t.is(ps:byte(1), 68, "extreme integers: the delta form")
local back = _pool.unpack(ps)
local same = back.n == 10
for i = 1, 10 do same = same and back[i] == ints[i] and math.type(back[i]) == "integer" end
t.ok(same, "extreme integers round-trip")
local into = { "keep" }
t.is(_pool.unpack_into(into, 2, ps), 10, "unpack_into: the count")
t.ok(into[1] == "keep" and into[2] == 0 and into[4] == maxi and into[5] == mini and into[11] == -5,
  "unpack_into: at the offset")
t.is(_pool.unpack(_pool.pack({}, 1, 0)).n, 0, "an empty chunk")

-- Not integers only: tagged, each value as it was.
local nan = 0 / 0
local odd = _pool.unpack(_pool.pack({ 1, 2, 1.0, nil, nan, mini, n = 6 }, 1, 6))
t.ok(odd.n == 6 and math.type(odd[1]) == "integer" and math.type(odd[3]) == "float" and odd[3] == 1
  and odd[4] == nil and odd[5] ~= odd[5] and odd[6] == mini, "float 1.0, a nil hole, nan: tagged, kept")
t.is(_pool.pack({ 1, nil, 3, n = 3 }, 1, 3):byte(1), 78, "a nil hole: tagged")

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

-- Results that stop being integers midway: tagged from then on, the
-- integers before kept as integers.
local fl = _pool.map_packed(function(x) if x > 600 then return x / 2 end return -x end, s)
t.is(fl:byte(1), 78, "float results from the middle on: tagged")
local fr = _pool.unpack(fl)
t.ok(fr.n == 1000 and fr[600] == -600 and math.type(fr[600]) == "integer" and fr[601] == 300.5
  and fr[1000] == 500.0 and math.type(fr[1000]) == "float", "and every result is kept")
local nr = _pool.unpack(_pool.map_packed(function(x) if x % 2 == 0 then return nil end return x end, s))
t.ok(nr.n == 1000 and nr[1] == 1 and nr[2] == nil and nr[999] == 999, "nil results: holes kept")
local ext = _pool.unpack(_pool.map_packed(function(x) return x end, ps))
t.ok(ext.n == 10 and ext[3] == maxi and ext[4] == mini and ext[10] == -5, "map_packed over a delta chunk")
local fin = _pool.unpack(_pool.map_packed(function(x) if x == 1000 then return 0.5 end return x end, s))
t.ok(fin[999] == 999 and fin[1000] == 0.5, "the last result alone a float")

-- A damaged delta chunk is an error, not garbage.
local function damaged(c) return not pcall(_pool.unpack, c) end
t.ok(damaged("D\3\0\0\0\2\2"), "delta chunk: fewer values than its count")
t.ok(damaged("D\1\0\0\0\2\2"), "delta chunk: bytes after its values")
t.ok(damaged("D\1\0\0\0\255"), "delta chunk: a varint cut short")
t.ok(damaged("D\1\0\0\0" .. ("\255"):rep(11) .. "\1"), "delta chunk: a varint too long")

local bok, berr = pcall(_pool.map_packed, tostring, "xyz")
t.ok(not bok, "bad chunk: an error")
t.like(tostring(berr), "map_packed.*not a packed chunk", "naming the function and what is wrong")

t.done()
