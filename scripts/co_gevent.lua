-- The notes' gevent example: three greenlets take turns at every
-- gevent.sleep(0).
local gevent = require "gevent"

local function f(n)
  for i = 0, n - 1 do
    print(tostring(gevent.getcurrent()) .. " " .. i)
    gevent.sleep(0)
  end
end

local g1 = gevent.spawn(f, 5)
local g2 = gevent.spawn(f, 5)
local g3 = gevent.spawn(f, 5)
g1:join()  -- 这是一个耗时操作, 所以会开始执行协程
g2:join()
g3:join()
