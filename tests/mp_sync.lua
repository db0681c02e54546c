-- multiprocessing's process-shared Lock, RLock, Semaphore,
-- BoundedSemaphore, Event, Condition, Barrier, Value, Array, RawValue,
-- RawArray: the API, across forked processes and processes that got
-- the object pickled, robustness against a holder killed with SIGKILL,
-- Ctrl-C.  Every wait is bounded.
local t = require "tests.tap"
local mp = require "multiprocessing"
local threading = require "threading"
local time = require "time"

local spawn = t.spawn_process

local join_all = t.join_processes

------------------------------------------------------------------ Lock

do
  local l = mp.Lock()
  t.is(l:locked(), false, "Lock: new lock unlocked")
  t.is(l:acquire(), true, "Lock: acquire")
  t.is(l:locked(), true, "Lock: locked")
  t.is(l:acquire(false), false, "Lock: acquire(false) when held")
  t.is(l:acquire{blocking = false}, false, "Lock: acquire{blocking=false}")
  local t0 = time.monotonic()
  t.is(l:acquire(true, 0.1), false, "Lock: acquire(true, 0.1) times out")
  t.ok(time.monotonic() - t0 >= 0.09, "Lock: the timeout was waited")
  t.is(l:acquire{timeout = 0}, false, "Lock: acquire{timeout=0}")
  t.like(tostring(l), "^<Lock%(owner=MainProcess|%d+, count=1%)>$", "Lock: tostring held")
  l:release()
  t.like(tostring(l), "^<Lock%(owner=None%)>$", "Lock: tostring free")
  t.raises(function() l:release() end, RuntimeError, "release unlocked lock", "Lock: release unlocked")
  do
    local _ <close> = with(l)
    t.is(l:locked(), true, "Lock: with() holds it")
  end
  t.is(l:locked(), false, "Lock: with() released it")
  t.raises(function() l:acquire(true, "x") end, TypeError, "timeout", "Lock: acquire(true, 'x')")
  t.raises(function() l.acquire({}) end, TypeError, "Lock", "Lock: acquire on a non-lock")
  -- a Lock is not owned: another thread may release it (as threading's)
  l:acquire()
  local th = threading.Thread{target = function() l:release() end}
  th:start(); th:join(5)
  t.is(l:locked(), false, "Lock: released by another thread")
end

do   -- held by a child: the parent waits; released: the parent gets it
  local l, ev = mp.Lock(), mp.Event()
  local p = spawn(function()
    l:acquire()
    ev:set()
    time.sleep(0.3)
    l:release()
  end)
  t.ok(ev:wait(10), "Lock: child holds the lock")
  t.is(l:acquire(false), false, "Lock: held in another process")
  t.is(l:acquire(true, 10), true, "Lock: acquired after the child released it")
  l:release()
  join_all({ p }, "Lock across processes")
end

do   -- the notes' shared counter: 4 processes x 10,000 under a shared Lock
  local lock = mp.Lock()
  local n = mp.RawValue("q", 0)
  local counter = mp.Value("i", 0)
  local ps = {}
  for _ = 1, 4 do
    ps[#ps + 1] = spawn(function()
      for _ = 1, 10000 do
        lock:acquire()
        n.value = n.value + 1
        lock:release()
        local _ <close> = with(counter:get_lock())
        counter.value = counter.value + 1
      end
    end)
  end
  join_all(ps, "counter")
  t.is(n.value, 40000, "4 x 10,000 increments under a shared Lock: exact")
  t.is(counter.value, 40000, "4 x 10,000 increments under Value's get_lock(): exact")
end

do   -- a holder killed with SIGKILL does not wedge the lock
  local l, rl, ev = mp.Lock(), mp.RLock(), mp.Event()
  local p = spawn(function()
    l:acquire()
    rl:acquire(); rl:acquire()
    ev:set()
    time.sleep(30)
  end)
  t.ok(ev:wait(10), "robust: the child holds Lock and RLock")
  t.is(l:acquire(false), false, "robust: held while the holder lives")
  p:kill()
  p:join(10)
  t.is(l:acquire(true, 5), true, "robust: Lock acquired after its holder was SIGKILLed")
  t.is(rl:acquire(true, 5), true, "robust: RLock acquired after its holder was SIGKILLed")
  l:release()
  rl:release()
  t.is(rl:acquire(false), true, "robust: the RLock is whole again")
  rl:release()
  -- a waiter in another process sees it too
  local q = mp.Queue()
  local holder = spawn(function() l:acquire(); ev:clear(); q:put("held"); time.sleep(30) end)
  t.is(q:get{timeout = 10}, "held", "robust: a second holder")
  local waiter = spawn(function() q:put(l:acquire(true, 10)) end)
  time.sleep(0.1)
  holder:kill()
  t.is(q:get{timeout = 15}, true, "robust: a waiting process gets the lock of a killed holder")
  join_all({ waiter }, "robust waiter")
  holder:join(5)
end

----------------------------------------------------------------- RLock

do
  local rl = mp.RLock()
  t.is(rl:acquire(), true, "RLock: acquire")
  t.is(rl:acquire(), true, "RLock: acquire again (reentrant)")
  t.like(tostring(rl), "count=2", "RLock: tostring shows the count")
  rl:release()
  t.is(rl:locked(), true, "RLock: still held after one release")
  local th = threading.Thread{target = function()
    local ok, e = pcall(rl.release, rl)
    rl._thread_result = isinstance(e, RuntimeError) and "RuntimeError" or tostring(e)
    rl._thread_try = rl:acquire(false)
  end}
  th:start(); th:join(5)
  t.is(rawget(rl, "_thread_result"), "RuntimeError", "RLock: another thread cannot release it")
  t.is(rawget(rl, "_thread_try"), false, "RLock: another thread cannot take it")
  local q = mp.Queue()
  local p = spawn(function()
    local ok, e = pcall(rl.release, rl)
    q:put(isinstance(e, RuntimeError) and "RuntimeError" or tostring(e))
    q:put(rl:acquire(true, 0.05))
  end)
  t.is(q:get{timeout = 10}, "RuntimeError", "RLock: another process cannot release it")
  t.is(q:get{timeout = 10}, false, "RLock: another process cannot take it")
  join_all({ p }, "RLock")
  rl:release()
  t.is(rl:locked(), false, "RLock: free after the last release")
  t.raises(function() rl:release() end, RuntimeError, "un%-acquired", "RLock: release unowned")
end

------------------------------------------------------------- Semaphore

do
  local s = mp.Semaphore(2)
  t.is(s:get_value(), 2, "Semaphore: get_value")
  t.ok(s:acquire() and s:acquire(), "Semaphore: two acquires")
  t.is(s:acquire(false), false, "Semaphore: third fails")
  t.is(s:acquire{timeout = 0.05}, false, "Semaphore: timeout")
  s:release(2)
  t.is(s:get_value(), 2, "Semaphore: release(2)")
  s:release()
  t.is(s:get_value(), 3, "Semaphore: may go over its initial value")
  t.like(tostring(s), "^<Semaphore%(value=3%)>$", "Semaphore: tostring")
  t.raises(function() mp.Semaphore(-1) end, ValueError, "initial value", "Semaphore(-1)")
  t.raises(function() mp.Semaphore("x") end, TypeError, "value", "Semaphore('x')")
  t.raises(function() s:release(0) end, ValueError, "one or more", "Semaphore: release(0)")
  local b = mp.BoundedSemaphore(1)
  b:acquire()
  b:release()
  t.raises(function() b:release() end, ValueError, "too many", "BoundedSemaphore: over-release")
  t.ok(isinstance(b, mp.Semaphore), "BoundedSemaphore is a Semaphore")
  t.like(tostring(b), "maxvalue=1", "BoundedSemaphore: tostring")
  -- at most 2 of 4 processes inside at once
  local sem = mp.Semaphore(2)
  local inside, most = mp.Value("i", 0), mp.Value("i", 0)
  local ps = {}
  for _ = 1, 4 do
    ps[#ps + 1] = spawn(function()
      for _ = 1, 5 do
        local _ <close> = with(sem)
        do
          local _ <close> = with(inside:get_lock())
          inside.value = inside.value + 1
          if inside.value > most.value then most.value = inside.value end
        end
        time.sleep(0.005)
        local _ <close> = with(inside:get_lock())
        inside.value = inside.value - 1
      end
    end)
  end
  join_all(ps, "Semaphore(2)")
  t.is(most.value, 2, "Semaphore(2): never more than two processes inside, and two at once")
end

----------------------------------------------------------------- Event

do
  local e = mp.Event()
  t.is(e:is_set(), false, "Event: new is unset")
  t.is(e:wait(0.05), false, "Event: wait times out")
  t.is(e:wait{timeout = 0}, false, "Event: wait{timeout=0}")
  e:set()
  t.is(e:wait(), true, "Event: wait when set")
  e:clear()
  t.is(e:is_set(), false, "Event: clear")
  local go, q = mp.Event(), mp.Queue()
  local ps = {}
  for i = 1, 3 do ps[i] = spawn(function() q:put(go:wait(10)) end) end
  time.sleep(0.1)
  go:set()
  local n = 0
  for _ = 1, 3 do if q:get{timeout = 10} == true then n = n + 1 end end
  t.is(n, 3, "Event: set() wakes every waiting process")
  join_all(ps, "Event")
end

------------------------------------------------------------- Condition

do
  local c = mp.Condition()
  t.raises(function() c:wait(0.01) end, RuntimeError, "un%-acquired", "Condition: wait without the lock")
  t.raises(function() c:notify() end, RuntimeError, "un%-acquired", "Condition: notify without the lock")
  c:acquire()
  t.is(c:wait(0.05), false, "Condition: wait times out: false")
  t.is(c._lock:locked(), true, "Condition: lock held again after the wait")
  c:release()
  t.raises(function() mp.Condition(threading.Lock()) end, TypeError, "lock", "Condition(threading.Lock())")
  local c2 = mp.Condition(mp.Lock())
  t.like(tostring(c2), "^<Condition%(<Lock%(owner=None%)>, 0%)>$", "Condition: tostring")

  -- 3 processes wait; notify(1) wakes exactly one, notify_all the rest
  local cond, q, ready = mp.Condition(mp.Lock()), mp.Queue(), mp.Semaphore(0)
  local ps = {}
  for i = 1, 3 do
    ps[i] = spawn(function()
      local _ <close> = with(cond)
      ready:release()
      q:put(cond:wait(10) and i or "timeout")
    end)
  end
  for _ = 1, 3 do ready:acquire(true, 10) end
  local deadline = time.monotonic() + 10   -- each has its slot once it let the lock go
  while time.monotonic() < deadline do
    local _ <close> = with(cond)
    if cond:_n_waiting() == 3 then break end
  end
  do local _ <close> = with(cond); cond:notify() end
  local first = q:get{timeout = 10}
  t.ok(math.type(first) == "integer", "Condition: notify() woke one process")
  t.raises(function() q:get{timeout = 0.2} end, require("queue").Empty, nil, "Condition: only one")
  do local _ <close> = with(cond); cond:notify_all() end
  local rest = 0
  for _ = 1, 2 do if math.type(q:get{timeout = 10}) == "integer" then rest = rest + 1 end end
  t.is(rest, 2, "Condition: notify_all() woke the other two")
  join_all(ps, "Condition")

  -- wait_for across processes, with a shared Value
  local v = mp.Value("i", 0)
  local p = spawn(function()
    for _ = 1, 5 do
      time.sleep(0.01)
      local _ <close> = with(cond)
      v.value = v.value + 1
      cond:notify_all()
    end
  end)
  local got
  do
    local _ <close> = with(cond)
    got = cond:wait_for(function() return v.value >= 5 end, 10)
  end
  t.is(got, true, "Condition: wait_for a predicate another process makes true")
  join_all({ p }, "wait_for")
  -- with an RLock held twice: wait releases it fully and restores the count
  local rc = mp.Condition()
  rc:acquire(); rc:acquire()
  local p2 = spawn(function()
    local ok = rc:acquire(true, 10)
    rc:notify()
    rc:release()
    os.exit(ok and 0 or 1)
  end)
  t.is(rc:wait(10), true, "Condition(RLock): wait with the lock held twice")
  rc:release()
  t.is(rc._lock:locked(), true, "Condition(RLock): the recursion count came back")
  rc:release()
  join_all({ p2 }, "Condition(RLock)")
end

--------------------------------------------------------------- Barrier

do
  local b = mp.Barrier(3)
  t.is(b.parties, 3, "Barrier: parties")
  t.is(b.n_waiting, 0, "Barrier: n_waiting")
  t.is(b.broken, false, "Barrier: not broken")
  local q = mp.Queue()
  local ps = {}
  for _ = 1, 2 do
    ps[#ps + 1] = spawn(function()
      for _ = 1, 3 do q:put(b:wait(10)) end
    end)
  end
  local mine = {}
  for i = 1, 3 do mine[i] = b:wait(10) end
  local seen = { [0] = 0, 0, 0 }
  for _, i in ipairs(mine) do seen[i] = seen[i] + 1 end
  for _ = 1, 6 do local i = q:get{timeout = 10}; seen[i] = seen[i] + 1 end
  t.ok(seen[0] == 3 and seen[1] == 3 and seen[2] == 3,
    "Barrier: 3 processes x 3 cycles: each index 0..2 once per cycle")
  join_all(ps, "Barrier")
  -- timeout breaks it, in every process
  local b2 = mp.Barrier(2)
  t.raises(function() b2:wait(0.05) end, threading.BrokenBarrierError, nil, "Barrier: timeout")
  local p = spawn(function() os.exit(b2.broken and 0 or 1) end)
  join_all({ p }, "Barrier: broken is seen in another process")
  b2:reset()
  t.is(b2.broken, false, "Barrier: reset")
  -- abort wakes a waiter in another process
  local p2 = spawn(function()
    local ok, e = pcall(b2.wait, b2, 10)
    os.exit(isinstance(e, threading.BrokenBarrierError) and 0 or 1)
  end)
  local deadline = time.monotonic() + 10
  while b2.n_waiting < 1 and time.monotonic() < deadline do time.sleep(0.01) end
  b2:abort()
  join_all({ p2 }, "Barrier: abort() breaks a waiting process's wait")
  t.is(mp.BrokenBarrierError, threading.BrokenBarrierError, "BrokenBarrierError is threading's")
end

--------------------------------------------------------- Value, Array

do
  local ranges = {
    b = { -128, 127 }, B = { 0, 255 }, h = { -32768, 32767 }, H = { 0, 65535 },
    i = { -2147483648, 2147483647 }, I = { 0, 4294967295 },
    l = { math.mininteger, math.maxinteger }, q = { math.mininteger, math.maxinteger },
    L = { 0, math.maxinteger }, Q = { 0, math.maxinteger },
  }
  for code, r in pairs(ranges) do
    local v = mp.Value(code, r[1])
    local good = v.value == r[1]
    v.value = r[2]
    good = good and v.value == r[2] and math.type(v.value) == "integer"
    t.ok(good, "Value('" .. code .. "'): both ends of its range")
    if r[1] > math.mininteger then
      t.raises(function() v.value = r[1] - 1 end, OverflowError, nil, "Value('" .. code .. "'): below")
    end
    if r[2] < math.maxinteger then
      t.raises(function() v.value = r[2] + 1 end, OverflowError, nil, "Value('" .. code .. "'): above")
    end
    t.raises(function() v.value = 1.5 end, TypeError, "integer", "Value('" .. code .. "'): a float")
  end
  t.raises(function() mp.Value("Q", -1) end, OverflowError, nil, "Value('Q', -1)")
  t.raises(function() mp.Value("b", 128) end, OverflowError, nil, "Value('b', 128)")
  local d = mp.Value("d", 0.1)
  t.is(d.value, 0.1, "Value('d'): exact double")
  d.value = 3
  t.is(d.value, 3.0, "Value('d'): an integer assigned")
  local f = mp.Value("f", 0.1)
  t.ok(math.abs(f.value - 0.1) < 1e-7 and f.value ~= 0.1, "Value('f'): single precision")
  t.raises(function() f.value = "x" end, TypeError, "number", "Value('f'): a string")
  local c = mp.Value("c", "a")
  t.is(c.value, "a", "Value('c')")
  c.value = "\0"
  t.is(c.value, "\0", "Value('c'): a NUL byte")
  t.raises(function() c.value = "ab" end, TypeError, "one%-byte", "Value('c'): two bytes")
  t.raises(function() mp.Value("z", 1) end, ValueError, "typecode", "Value: bad typecode")
  t.raises(function() mp.Value(1, 1) end, TypeError, "typecode", "Value: typecode not a string")
  t.is(mp.Value("i").value, 0, "Value: default 0")
  t.like(tostring(mp.Value("i", 7)), "^<Synchronized wrapper for c_int%(7%)>$", "Value: tostring")
  local raw = mp.RawValue("h", 5)
  t.raises(function() raw:get_lock() end, AttributeError, nil, "RawValue: no get_lock")
  t.is(tostring(raw), "c_short(5)", "RawValue: tostring")
  local nl = mp.Value("i", 1, { lock = false })
  t.raises(function() nl:get_lock() end, AttributeError, nil, "Value(lock=false): no get_lock")
  local own = mp.Lock()
  local vl = mp.Value{"i", 2, lock = own}
  t.is(vl:get_lock(), own, "Value{..., lock=Lock}: that lock")
  do
    local _ <close> = with(vl:get_lock())
    vl.value = vl.value + 1   -- a plain Lock held by us: no deadlock
  end
  t.is(vl.value, 3, "Value: access while holding its plain Lock")
  t.raises(function() mp.Value("i", 1, { lock = 3 }) end, TypeError, "lock", "Value: bad lock")
  vl.note = "mine"
  t.is(rawget(vl, "note"), "mine", "Value: other fields are the instance's")
end

do
  local a = mp.Array("i", 4)
  t.is(#a, 4, "Array(size): #a")
  t.is(a[1], 0, "Array(size): zeroed")
  a[1], a[4] = 10, 40
  t.is(a[1] + a[4], 50, "Array: a[i] = v")
  t.is(a[0], nil, "Array: a[0] is nil")
  t.is(a[5], nil, "Array: a[n+1] is nil")
  t.raises(function() a[5] = 1 end, IndexError, nil, "Array: a[n+1] = v")
  t.raises(function() a[1] = 2 ^ 40 end, TypeError, nil, "Array('i'): a float")
  t.raises(function() a[1] = 2147483648 end, OverflowError, nil, "Array('i'): overflow")
  local b = mp.Array("d", { 1.5, 2.5, 3.5 })
  local sum, n = 0, 0
  for i, x in ipairs(b) do sum, n = sum + x, i end
  t.ok(sum == 7.5 and n == 3, "Array: ipairs")
  t.is(table.concat(b:tolist(), ","), "1.5,2.5,3.5", "Array: tolist")
  t.like(tostring(b), "c_double_Array_3", "Array: tostring")
  local s = mp.Array("c", "hello")
  t.is(s.value, "hello", "Array('c'): value")
  s.value = "hi"
  t.is(s.value, "hi", "Array('c'): shorter value ends at a NUL")
  t.is(s.raw, "hi\0lo", "Array('c'): raw")
  t.raises(function() s.value = "toolong" end, ValueError, "too long", "Array('c'): too long")
  t.raises(function() mp.Array("i", { 1, "x" }) end, TypeError, nil, "Array: bad item")
  t.raises(function() mp.Array("i", -1) end, ValueError, "negative", "Array: negative size")
  t.raises(function() mp.Array("i", "x") end, TypeError, "size", "Array: bad size")
  local ra = mp.RawArray("B", { 1, 2 })
  t.raises(function() ra:get_lock() end, AttributeError, nil, "RawArray: no get_lock")
  -- children write their slot
  local arr = mp.Array("q", 4)
  local ps = {}
  for i = 1, 4 do ps[i] = spawn(function() arr[i] = i * i end) end
  join_all(ps, "Array")
  t.is(table.concat(arr:tolist(), ","), "1,4,9,16", "Array: written by 4 processes")
end

------------------------------------------ passing to a running process

do
  local inbox, outbox = mp.Queue(), mp.Queue()
  local p = spawn(function()   -- started before the objects exist
    local objs = inbox:get{timeout = 10}
    local l, v, a, ev, c, s, b = table.unpack(objs)
    local ok = l:acquire(true, 5)
    v.value = v.value + 1
    a[2] = 42
    l:release()
    do local _ <close> = with(c); c:notify_all() end
    s:release()
    outbox:put({ ok, getmetatable(l).__name__, b:wait(10) })
    ev:wait(10)
    outbox:put("bye")
  end)
  local l = mp.Lock()
  local v = mp.Value("i", 41)
  local a = mp.Array("i", 3)
  local ev = mp.Event()
  local c = mp.Condition(mp.Lock())
  local s = mp.BoundedSemaphore(1)
  local b = mp.Barrier(2)
  s:acquire()
  inbox:put({ l, v, a, ev, c, s, b })
  t.is(s:acquire(true, 10), true, "passed: a Semaphore released by a process that was sent it")
  local mine = b:wait(10)
  local r = outbox:get{timeout = 10}
  t.ok(r[1] == true and r[2] == "Lock", "passed: a Lock arrives as a Lock, and works")
  t.is(v.value, 42, "passed: Value written through")
  t.is(a[2], 42, "passed: Array written through")
  t.ok((r[3] == 0 or r[3] == 1) and r[3] + mine == 1, "passed: Barrier across the two")
  ev:set()
  t.is(outbox:get{timeout = 10}, "bye", "passed: Event set here wakes the receiver")
  join_all({ p }, "passing")
  -- a subclass is passed as itself
  local MyLock = class("MyLock", mp.Lock)
  function MyLock:hello() return "hello" end
  local ml = MyLock()
  ml.tag = 7
  local pickle = require "pickle"
  local back = pickle.loads(pickle.dumps(ml))
  t.ok(getmetatable(back) == MyLock and back:hello() == "hello" and back.tag == 7,
    "passed: a subclass comes back as the subclass, with its fields")
  back:acquire()
  t.is(ml:locked(), true, "passed: the copy is the same lock")
  back:release()
  local cv = pickle.loads(pickle.dumps(mp.Value("i", 5)))
  t.ok(cv:get_lock() ~= nil and cv.value == 5, "passed: a Value keeps its lock")
end

---------------------------------------------------------------- Ctrl-C

do
  local out = t.run_source([[
    local mp = require "multiprocessing"
    local function intr(fn)
      os.execute("(sleep 0.2; kill -INT " .. os.getpid() .. ") &")
      local ok, e = pcall(fn)
      print(isinstance(e, KeyboardInterrupt) and "interrupted" or tostring(e))
    end
    local l = mp.Lock(); l:acquire()
    intr(function() l:acquire() end)
    intr(function() mp.Event():wait() end)
    local c = mp.Condition()
    c:acquire()
    intr(function() c:wait() end)
    print(c._lock:_is_owned())
    intr(function() mp.Semaphore(0):acquire() end)
  ]], 30)
  t.is(out, "interrupted\ninterrupted\ninterrupted\ntrue\ninterrupted\n",
    "Ctrl-C interrupts Lock.acquire, Event.wait, Condition.wait (lock held again), Semaphore.acquire")
end

t.done()
