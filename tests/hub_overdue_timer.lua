-- The hub's loop and timers that are already due when it starts to
-- wait.  libuv 1.44's uv_run(UV_RUN_ONCE) runs due timers first and
-- then polls with the next timer's timeout, or none: a greenlet woken
-- by such a timer stayed asleep until some other event came (forever
-- if none did).  A greenlet that keeps the hub busy past another's
-- deadline is enough to get there.  Bounded: a watchdog OS thread
-- rescues a lost wake-up after 10 s and the test reports it.
local t = require "tests.tap"
local gevent = require "gevent"
local monkey = require "gevent.monkey"
local threading = require "threading"
local time = require "time"

monkey.patch_all()

local function busy(seconds)   -- runs without letting the hub in
  local t0 = time.monotonic()
  while time.monotonic() - t0 < seconds do end
end

local function overdue_case(what, sleeper)
  local ev = threading.Event()
  local rescued = false
  local watchdog = threading.Thread{target = function()
    if not ev:wait(10) then rescued = true; ev:set() end
  end}
  watchdog:start()
  local g1 = gevent.spawn(function() sleeper(0.001); ev:set() end)
  local g2 = gevent.spawn(function() busy(0.03); ev:wait() end)
  gevent.joinall({ g1, g2 }, 20)
  watchdog:join(20)
  t.ok(not rescued, what .. ": a timer due before the hub waits wakes its greenlet")
end

overdue_case("time.sleep (patched)", time.sleep)
overdue_case("gevent.sleep", gevent.sleep)

t.done()
