-- The notes' "回收" example: monkey.patch_all() makes time.sleep switch
-- greenlets, so three greenlets sleeping 1 s per round take about one
-- second per round, not three.  (Shortened: 0.2 s sleeps.)
local gevent = require "gevent"
local time = require "time"
local monkey = require "gevent.monkey"
-- 有耗时操作时需要打补丁
monkey.patch_all()

local function f(n)
  for i = 0, n - 1 do
    print(tostring(gevent.getcurrent()) .. " " .. i)
    time.sleep(0.2)
  end
end

gevent.joinall({
  gevent.spawn(f, 5),
  gevent.spawn(f, 5),
  gevent.spawn(f, 5),
})
