-- seeds.lua DIR: writes real pickles of every kind into DIR (the fuzz
-- corpus).  The fuzz harness re-signs signed ones with its own key.
local pickle = require "pickle"
local dir = assert(arg[1], "usage: seeds.lua DIR")
local P = class("PkPoint")
function P:__init__(x, y) self.x, self.y = x, y end
local R = class("PkReduce")
function R:__reduce__() return string.format, {"%d-%s", 1, "x"} end
local cyc = {1, 2.5, "s"}
cyc.self = cyc
local function counter() local c = 0; return function() c = c + 1; return c end end
local function pair() local n = 0; return function() n = n + 1 end, function() return n end end
local inc, get = pair()
local mt = {__index = {m = 1}}
local values = {
  0, 127, 128, -1, math.mininteger, math.maxinteger, 1.5, -0.0, 1/0, 0/0,
  true, false, "", "short", ("long"):rep(20), ("\0\255"):rep(3),
  {1, 2, 3}, {a = 1, b = {c = "d"}}, {[1.5] = true, [{}] = false},
  table.pack(1, nil, 3), cyc, {cyc, cyc}, setmetatable({1}, mt),
  P(1, 2), {P(3, 4), P}, R(), _G, {g = _G},
  counter(), {inc, get}, print, {string.format, math.floor}, string.gsub,
}
-- a data pickle over 4 KB: loads decodes it with the collector stopped
local big = {}
for i = 1, 300 do big[i] = {i, "s" .. i, {k = i * 0.5, cyc = cyc}, P(i, -i)} end
values[#values + 1] = big
for i, v in ipairs(values) do
  local f = assert(io.open(("%s/seed%02d"):format(dir, i), "wb"))
  f:write(pickle.dumps(v))
  f:close()
end
