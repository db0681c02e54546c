-- queue under gevent's monkey patching: a blocking put or get inside a
-- greenlet switches to the other greenlets instead of blocking the thread.
local t = require "tests.tap"
local gevent = require "gevent"
gevent.monkey.patch_all()
local queue = require "queue"
local threading = require "threading"

do   -- producer and consumer greenlets in one OS thread, through a bounded queue
  local q = queue.Queue(2)
  local log = {}
  local c = gevent.spawn(function()
    for _ = 1, 100 do
      local v = q:get{timeout = 5}
      log[#log + 1] = "g" .. v
    end
  end)
  local p = gevent.spawn(function()
    for i = 1, 100 do
      q:put(i, {timeout = 5})
      log[#log + 1] = "p" .. i
    end
  end)
  gevent.joinall({c, p}, 10)
  local gets = {}
  for _, e in ipairs(log) do
    local n = e:match("^g(%d+)$")
    if n then gets[#gets + 1] = tonumber(n) end
  end
  t.ok(c.dead and p.dead and c.exception == nil and p.exception == nil,
       "both greenlets finished without error")
  local ok = #gets == 100
  for i = 1, 100 do ok = ok and gets[i] == i end
  t.ok(ok, "the consumer greenlet got every item in order")
  -- a put on a full Queue(2) can only have finished if the consumer ran
  -- in between: the log interleaves
  t.ok(log[1] ~= nil and table.concat(log, " "):find("g1 .*p3") ~= nil,
       "the full queue's put switched to the consumer")
end

do   -- a timed get in a greenlet raises queue.Empty
  local q = queue.Queue()
  local g = gevent.spawn(function() return select(2, pcall(q.get, q, {timeout = 0.05})) end)
  g:join(5)
  t.ok(isinstance(g.value, queue.Empty), "a timed-out get in a greenlet raises queue.Empty")
end

do   -- a greenlet parked in get is woken by a put from another OS thread
  local q = queue.Queue()
  local g = gevent.spawn(function() return q:get{timeout = 5} end)
  local th = threading.Thread{target = function()
    require("time").sleep(0.05)
    q:put("from a thread")
  end}
  th:start()
  g:join(5)
  th:join(5)
  t.is(g.value, "from a thread", "another thread's put wakes a greenlet parked in get")
end

t.done()
