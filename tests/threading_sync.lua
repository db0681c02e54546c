-- threading's synchronisation: Lock, RLock, Condition, Semaphore,
-- BoundedSemaphore, Event, Barrier; stress with real threads.
local t = require "tests.tap"
local threading = require "threading"
local time = require "time"
local sleep, now = time.sleep, time.monotonic

local function spawn(f, ...)
  local th = threading.Thread{target=f, args=table.pack(...)}
  th:start()
  return th
end

local function elapsed(f)
  local t0 = now()
  local r = f()
  return now() - t0, r
end

-- Lock ----------------------------------------------------------------------
do
  local lk = threading.Lock()
  t.ok(not lk:locked(), "new lock unlocked")
  t.is(lk:acquire(), true, "acquire")
  t.ok(lk:locked(), "locked()")
  t.is(lk:acquire(false), false, "non-blocking acquire of a held lock")
  t.is(lk:acquire{blocking=false}, false, "acquire{blocking=false}")
  local dt, r = elapsed(function() return lk:acquire(true, 0.1) end)
  t.is(r, false, "timed acquire fails")
  t.ok(dt >= 0.09 and dt < 1, "timed acquire waits its timeout")
  dt, r = elapsed(function() return lk:acquire{timeout=0.05} end)
  t.ok(r == false and dt >= 0.04, "acquire{timeout=}")
  lk:release()
  t.raises(function() lk:release() end, RuntimeError, "release unlocked lock", "release unlocked")
  t.raises(function() lk:acquire(false, 1) end, ValueError, "non%-blocking", "timeout on non-blocking")
  t.raises(function() lk:acquire(true, -5) end, ValueError, nil, "timeout below -1")
  t.raises(function() lk:acquire(true, "x") end, TypeError, nil, "timeout of the wrong type")
  t.is(lk:acquire(true, -1), true, "-1 is forever")
  lk:release()
  do
    local _ <close> = with(lk)
    t.ok(lk:locked(), "with(lock) holds it")
  end
  t.ok(not lk:locked(), "with(lock) releases at scope end")
  pcall(function()
    local _ <close> = with(lk)
    error("inside")
  end)
  t.ok(not lk:locked(), "with(lock) releases on error")
  t.raises(function() threading.Lock.acquire({}) end, TypeError, nil, "acquire on a non-lock")
  -- release from another thread is allowed for Lock
  lk:acquire()
  local th = spawn(function() lk:release() end)
  th:join()
  t.ok(not lk:locked(), "another thread may release a Lock")
  local MyLock = class("MyLock", threading.Lock)
  local ml = MyLock()
  ml.extra = 1
  t.ok(ml:acquire() and ml:locked() and ml.extra == 1, "Lock is subclassable and takes fields")
  ml:release()
end

do   -- a waiter wakes when the lock is released
  local lk = threading.Lock()
  lk:acquire()
  local got
  local th = spawn(function() got = lk:acquire(true, 5) end)
  sleep(0.05)
  lk:release()
  th:join(5)
  t.is(got, true, "blocked acquire gets the released lock")
end

do   -- 8 threads x 20,000 lock-protected increments
  local lk = threading.Lock()
  local n = 0
  local ths = {}
  for i = 1, 8 do
    ths[i] = spawn(function()
      for _ = 1, 20000 do lk:acquire(); n = n + 1; lk:release() end
    end)
  end
  for i = 1, 8 do ths[i]:join(30) end
  t.is(n, 160000, "8 x 20,000 increments exact")
  n = 0
  for i = 1, 8 do
    ths[i] = spawn(function()
      for k = 1, 5000 do
        local _ <close> = with(lk)
        local v = n
        if k % 100 == 0 then sleep(0) end
        n = v + 1
      end
    end)
  end
  for i = 1, 8 do ths[i]:join(30) end
  t.is(n, 40000, "with(lock) protects a read-sleep-write")
end

-- RLock ---------------------------------------------------------------------
do
  local rl = threading.RLock()
  t.ok(rl:acquire() and rl:acquire(), "RLock reentrant")
  t.is(rl:_recursion_count(), 2, "recursion count")
  rl:release()
  local other
  local th = spawn(function()
    other = rl:acquire(false)
    local ok, e = pcall(rl.release, rl)
    other = { other, ok, e }
  end)
  th:join()
  t.is(other[1], false, "another thread cannot take a held RLock")
  t.ok(not other[2] and isinstance(other[3], RuntimeError), "non-owner release → RuntimeError")
  rl:release()
  t.raises(function() rl:release() end, RuntimeError, "un%-acquired", "release unowned RLock")
  do
    local _ <close> = with(rl)
    local _2 <close> = with(rl)
    t.is(rl:_recursion_count(), 2, "with(rlock) nests")
  end
  t.is(rl:_recursion_count(), 0, "with(rlock) unwinds")
  local n = 0
  local ths = {}
  for i = 1, 4 do
    ths[i] = spawn(function()
      for _ = 1, 5000 do rl:acquire(); rl:acquire(); n = n + 1; rl:release(); rl:release() end
    end)
  end
  for i = 1, 4 do ths[i]:join(30) end
  t.is(n, 20000, "RLock stress exact")
end

-- Condition -----------------------------------------------------------------
do
  local c = threading.Condition()
  t.raises(function() c:wait(0.01) end, RuntimeError, "un%-acquired", "wait without the lock")
  t.raises(function() c:notify() end, RuntimeError, "un%-acquired", "notify without the lock")
  c:acquire()
  local dt, r = elapsed(function() return c:wait(0.05) end)
  t.is(r, false, "wait timeout → false")
  t.ok(dt >= 0.04, "wait waits")
  c:release()

  -- producer / consumer
  local items, consumed = {}, {}
  local cond = threading.Condition(threading.Lock())
  local N = 2000
  local consumers = {}
  for i = 1, 3 do
    consumers[i] = spawn(function()
      while true do
        local _ <close> = with(cond)
        cond:wait_for(function() return #items > 0 end, 5)
        local v = table.remove(items, 1)
        if v == nil or v == "stop" then
          if v == "stop" then table.insert(items, 1, "stop") end
          return
        end
        consumed[#consumed + 1] = v
      end
    end)
  end
  for i = 1, N do
    local _ <close> = with(cond)
    items[#items + 1] = i
    cond:notify()
  end
  do
    local _ <close> = with(cond)
    items[#items + 1] = "stop"
    cond:notify_all()
  end
  for i = 1, 3 do consumers[i]:join(10) end
  table.sort(consumed)
  local ok = #consumed == N
  for i = 1, N do ok = ok and consumed[i] == i end
  t.ok(ok, "Condition producer/consumer: every item consumed once")

  -- notify(n) wakes n, notify_all wakes all
  local cv = threading.Condition()
  local woke = 0
  local ws = {}
  for i = 1, 5 do
    ws[i] = spawn(function()
      local _ <close> = with(cv)
      if cv:wait(5) then woke = woke + 1 end
    end)
  end
  sleep(0.1)
  do local _ <close> = with(cv); cv:notify(2) end
  sleep(0.1)
  t.is(woke, 2, "notify(2) wakes two")
  do local _ <close> = with(cv); cv:notify_all() end
  for i = 1, 5 do ws[i]:join(5) end
  t.is(woke, 5, "notify_all wakes the rest")
  local r = cv:wait_for(function() return 42 end)
end

-- Semaphore -----------------------------------------------------------------
do
  t.raises(function() threading.Semaphore(-1) end, ValueError, ">= 0", "Semaphore(-1)")
  t.raises(function() threading.Semaphore("x") end, TypeError, nil, "Semaphore('x')")
  local s = threading.Semaphore(2)
  t.ok(s:acquire() and s:acquire(), "acquire twice")
  t.is(s:acquire(false), false, "third non-blocking fails")
  local dt, r = elapsed(function() return s:acquire(true, 0.05) end)
  t.ok(r == false and dt >= 0.04, "timed acquire")
  t.raises(function() s:acquire(false, 1) end, ValueError, nil, "timeout with non-blocking")
  s:release(2)
  t.is(s._value, 2, "release(n)")
  t.raises(function() s:release(0) end, ValueError, "one or more", "release(0)")
  -- at most 3 at once
  local sem = threading.Semaphore(3)
  local inside, peak = 0, 0
  local guard = threading.Lock()
  local ths = {}
  for i = 1, 10 do
    ths[i] = spawn(function()
      for _ = 1, 20 do
        local _ <close> = with(sem)
        guard:acquire(); inside = inside + 1; if inside > peak then peak = inside end; guard:release()
        sleep(0.001)
        guard:acquire(); inside = inside - 1; guard:release()
      end
    end)
  end
  for i = 1, 10 do ths[i]:join(30) end
  t.ok(peak <= 3 and peak >= 1, "Semaphore(3) admits at most three (peak " .. peak .. ")")
  local b = threading.BoundedSemaphore(1)
  b:acquire()
  b:release()
  t.raises(function() b:release() end, ValueError, "too many", "BoundedSemaphore over-release")
end

-- Event ---------------------------------------------------------------------
do
  local ev = threading.Event()
  t.is(ev:is_set(), false, "new event unset")
  local dt, r = elapsed(function() return ev:wait(0.05) end)
  t.ok(r == false and dt >= 0.04, "wait with timeout")
  t.is(ev:wait(-1), false, "negative timeout is 0")
  local got
  local th = spawn(function() got = ev:wait(5) end)
  sleep(0.05)
  ev:set()
  th:join(5)
  t.is(got, true, "set wakes a waiter")
  t.is(ev:wait(), true, "wait on a set event returns at once")
  ev:clear()
  t.is(ev:is_set(), false, "clear")
  -- ping-pong
  local a, b = threading.Event(), threading.Event()
  local rounds = 0
  local p = spawn(function()
    for _ = 1, 500 do
      a:wait(5); a:clear(); rounds = rounds + 1; b:set()
    end
  end)
  for _ = 1, 500 do a:set(); b:wait(5); b:clear() end
  p:join(10)
  t.is(rounds, 500, "Event ping-pong 500 rounds")
end

-- Barrier -------------------------------------------------------------------
do
  t.raises(function() threading.Barrier(0) end, ValueError, "> 0", "Barrier(0)")
  local N, CYCLES = 4, 50
  local b = threading.Barrier(N)
  t.is(b.parties, N, "parties")
  t.is(b.n_waiting, 0, "n_waiting")
  t.is(b.broken, false, "broken")
  local indices = {}
  local lk = threading.Lock()
  local ths = {}
  for i = 1, N do
    ths[i] = spawn(function()
      for c = 1, CYCLES do
        local idx = b:wait(5)
        lk:acquire()
        indices[c] = indices[c] or {}
        indices[c][#indices[c] + 1] = idx
        lk:release()
      end
    end)
  end
  for i = 1, N do ths[i]:join(30) end
  local ok = true
  for c = 1, CYCLES do
    local seen = {}
    for _, idx in ipairs(indices[c] or {}) do seen[idx] = (seen[idx] or 0) + 1 end
    for k = 0, N - 1 do ok = ok and seen[k] == 1 end
  end
  t.ok(ok, "Barrier indices 0..N-1 exactly once per cycle over 50 cycles")

  -- action runs once per cycle
  local actions = 0
  local b2 = threading.Barrier(3, function() actions = actions + 1 end)
  local w = {}
  for i = 1, 3 do w[i] = spawn(function() for _ = 1, 5 do b2:wait(5) end end) end
  for i = 1, 3 do w[i]:join(10) end
  t.is(actions, 5, "action once per cycle")

  -- timeout breaks the barrier
  local b3 = threading.Barrier(2, nil, 0.05)
  t.raises(function() b3:wait() end, threading.BrokenBarrierError, nil, "timeout → BrokenBarrierError")
  t.is(b3.broken, true, "broken after timeout")
  t.raises(function() b3:wait() end, threading.BrokenBarrierError, nil, "broken barrier raises")
  b3:reset()
  t.is(b3.broken, false, "reset mends it")

  -- abort wakes waiters
  local b4 = threading.Barrier(3)
  local errs = {}
  local aw = {}
  for i = 1, 2 do
    aw[i] = spawn(function()
      local ok, e = pcall(b4.wait, b4, 5)
      errs[i] = not ok and isinstance(e, threading.BrokenBarrierError)
    end)
  end
  sleep(0.05)
  t.is(b4.n_waiting, 2, "n_waiting counts waiters")
  b4:abort()
  for i = 1, 2 do aw[i]:join(5) end
  t.ok(errs[1] and errs[2], "abort breaks waiting threads")
  t.ok(isinstance(threading.BrokenBarrierError(), RuntimeError), "BrokenBarrierError is a RuntimeError")
end

t.done()
