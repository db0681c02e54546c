-- The GIL's cost when nothing else runs: the same loop under mtlua and
-- under Debian's plain lua5.4 (os.clock: both have it).
local t0 = os.clock()
local x = 0
for i = 1, 30000000 do x = x + i % 7 end
print((os.clock() - t0))
