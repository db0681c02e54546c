-- Pipe ping-pong: seconds per round trip (20,000 of them).
local mp = require "multiprocessing"
local monotonic = require("time").monotonic
local N = 20000
local a, b = mp.Pipe()
local p = mp.Process{target = function()
  while true do
    local v = b:recv()
    if v == nil then break end
    b:send(v)
  end
end}
p:start()
a:send(0); a:recv()
local t0 = monotonic()
for i = 1, N do a:send(i); a:recv() end
local t = monotonic() - t0
a:send(nil)
p:join()
print(t / N)
