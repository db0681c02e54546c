-- threading: Thread, names, identities, errors, excepthook, Timer, local.
local t = require "tests.tap"
local threading = require "threading"
local time = require "time"
local sleep = time.sleep

-- Thread basics ---------------------------------------------------------
do
  local got = {}
  local function work(a, b, kw) got = { a, b, kw and kw.age } end
  local th = threading.Thread{target=work, args={1, 2}, kwargs={age=3}}
  t.like(tostring(th), "^<Thread%(Thread%-%d+ %(work%), initial%)>$", "tostring before start")
  t.ok(not th:is_alive(), "not alive before start")
  th:start()
  t.like(tostring(th), "^<Thread%(Thread%-%d+ %(work%), %a+ %d+%)>$", "tostring after start")
  th:join()
  t.is(got[1], 1, "args[1]")
  t.is(got[2], 2, "args[2]")
  t.is(got[3], 3, "kwargs appended as one table")
  t.like(tostring(th), "^<Thread%(Thread%-%d+ %(work%), stopped %d+%)>$", "tostring after join")
  t.ok(not th:is_alive(), "not alive after join")
  t.ok(math.type(th.ident) == "integer", "ident is an integer")
  t.ok(math.type(th.native_id) == "integer" and th.native_id > 0, "native_id is the tid")
  t.raises(function() th:start() end, RuntimeError, "only be started once", "start twice")
end

do   -- nil holes in args are kept (table.pack's .n)
  local seen
  local th = threading.Thread{target=function(...) seen = select("#", ...) end,
                              args=table.pack(1, nil, 3)}
  th:start(); th:join()
  t.is(seen, 3, "args with a nil hole keep their length")
end

do   -- names
  local th = threading.Thread{target=print, name="worker"}
  t.is(th.name, "worker", "explicit name")
  local th2 = threading.Thread{target=print}
  t.like(th2.name, "^Thread%-%d+ %(print%)$", "a global target is named")
  local th3 = threading.Thread{target=function() end}
  t.like(th3.name, "^Thread%-%d+ %(tests/threading_api.lua:%d+%)$", "an anonymous target: file:line")
  local Sub = class("Sub", threading.Thread)
  function Sub:run() end
  local s = Sub()
  t.like(s.name, "^Thread%-%d+$", "a subclass's default name is Thread-N")
  t.like(tostring(s), "^<Sub%(Thread%-%d+, initial%)>$", "tostring names the subclass")
  local n1 = tonumber(threading.Thread().name:match("%d+"))
  local n2 = tonumber(threading.Thread().name:match("%d+"))
  t.is(n2, n1 + 1, "names count up")
  local d = threading.Thread{target=print, daemon=true}
  t.like(tostring(d), "initial daemon%)>$", "daemon in tostring")
end

do   -- upvalue targets are named by the upvalue
  local function dance() end
  local function make() return threading.Thread{target=dance} end
  t.like(make().name, "%(dance%)$", "an upvalue target is named")
end

-- main thread, current_thread, enumerate -------------------------------
do
  local main = threading.main_thread()
  t.like(tostring(main), "^<_MainThread%(MainThread, started %d+%)>$", "main thread tostring")
  t.ok(threading.current_thread() == main, "current_thread in main")
  t.is(main.ident, threading.get_ident(), "get_ident of main")
  t.is(main.native_id, threading.get_native_id(), "get_native_id of main")
  local inside, ident
  local ev = threading.Event()
  local th = threading.Thread{target=function()
    inside = threading.current_thread()
    ident = threading.get_ident()
    ev:wait(5)
  end}
  th:start()
  sleep(0.05)
  t.ok(inside == th, "current_thread inside a thread")
  t.is(ident, th.ident, "get_ident inside a thread")
  local list = threading.enumerate()
  t.is(#list, 2, "enumerate lists two threads")
  t.is(threading.active_count(), 2, "active_count")
  t.like(tostring(list), "^%[<_MainThread.-%)>, <Thread%(.-%)>%]$", "enumerate tostring is a list")
  ev:set()
  th:join(5)
  t.is(threading.active_count(), 1, "the thread left enumerate")
end

-- join ----------------------------------------------------------------
do
  local th = threading.Thread{target=sleep, args={0.3}}
  t.raises(function() th:join() end, RuntimeError, "before it is started", "join before start")
  th:start()
  local t0 = time.monotonic()
  th:join(0.05)
  local dt = time.monotonic() - t0
  t.ok(dt >= 0.04 and dt < 0.25, "join(timeout) returns after the timeout")
  t.ok(th:is_alive(), "still alive after a timed-out join")
  th:join{timeout=-1}
  t.ok(th:is_alive(), "negative timeout is 0")
  th:join()
  t.ok(not th:is_alive(), "join waits for the end")
  local self_err
  local th2 = threading.Thread{target=function()
    local ok, e = pcall(function() threading.current_thread():join() end)
    self_err = e
  end}
  th2:start(); th2:join()
  t.ok(isinstance(self_err, RuntimeError) and tostring(self_err):find("join current thread"),
    "joining self raises RuntimeError")
end

-- bad input -------------------------------------------------------------
t.raises(function() threading.Thread{target=42} end, TypeError, "target", "Thread{target=42}")
t.raises(function() threading.Thread{target=print, args=5} end, TypeError, "args", "args must be a table")
t.raises(function() threading.setswitchinterval(0) end, ValueError, nil, "switch interval 0")
t.raises(function() threading.setswitchinterval("x") end, TypeError, nil, "switch interval string")
t.raises(function() threading.Thread.start({}) end, RuntimeError, "not called", "start on a non-thread")

do
  local old = threading.getswitchinterval()
  t.is(old, 0.005, "default switch interval 5 ms")
  threading.setswitchinterval(0.001)
  t.is(threading.getswitchinterval(), 0.001, "setswitchinterval")
  threading.setswitchinterval(old)
  t.ok(threading.TIMEOUT_MAX > 1e6, "TIMEOUT_MAX")
end

-- excepthook ---------------------------------------------------------------
do
  local got
  local old = threading.excepthook
  threading.excepthook = function(args) got = args end
  local th = threading.Thread{target=function() raise(ValueError("boom")) end, name="bad"}
  th:start(); th:join()
  threading.excepthook = old
  t.ok(got ~= nil, "excepthook called")
  t.ok(got and got.exc_type == ValueError, "exc_type")
  t.ok(got and isinstance(got.exc_value, ValueError), "exc_value")
  t.ok(got and got.thread == th, "thread")
  t.like(got and got.exc_traceback or "", "stack traceback", "exc_traceback")
end

do   -- default hook output, and the other threads go on
  local out, err, status = t.run_source([[
    local threading = require "threading"
    local function dance() error(ValueError("bad step")) end
    local ok = false
    local th = threading.Thread{target=dance}
    local other = threading.Thread{target=function() require("time").sleep(0.1) ok = true end}
    other:start(); th:start(); th:join(); other:join()
    print("other finished:", ok)
  ]])
  t.is(status, 0, "an error in a thread does not end the process")
  t.like(err, "^Exception in thread Thread%-1 %(dance%):\n", "excepthook header")
  t.like(err, "\nValueError: bad step\n$", "excepthook message last")
  t.like(out, "other finished:\ttrue", "other threads go on")
end

-- Timer ---------------------------------------------------------------------
do
  local fired = {}
  local tm = threading.Timer(0.05, function(a, kw) fired[#fired + 1] = a .. kw.x end, {"v"}, {x="!"})
  local t0 = time.monotonic()
  tm:start(); tm:join(5)
  t.is(fired[1], "v!", "Timer fires with args and kwargs")
  t.ok(time.monotonic() - t0 >= 0.045, "Timer waits its interval")
  local tm2 = threading.Timer{0.5, function() fired[#fired + 1] = "late" end}
  tm2:start(); tm2:cancel(); tm2:join(5)
  t.is(#fired, 1, "a cancelled Timer does not fire")
  t.raises(function() threading.Timer(0.1, 42) end, TypeError, nil, "Timer needs a callable")
end

-- local ---------------------------------------------------------------------
do
  local data = threading.Local()
  data.x = "main"
  local seen = {}
  local ths = {}
  for i = 1, 4 do
    ths[i] = threading.Thread{target=function()
      seen[i] = data.x
      data.x = i
      sleep(0.01)
      seen[i] = seen[i] == nil and data.x == i
    end}
    ths[i]:start()
  end
  for i = 1, 4 do ths[i]:join() end
  local all = true
  for i = 1, 4 do all = all and seen[i] == true end
  t.ok(all, "each thread sees only its own fields")
  t.is(data.x, "main", "the main thread's field is untouched")
  t.ok(threading["local"] == threading.Local, "threading['local'] is Local")
end

-- a thread may run and end before start() has returned ----------------------
do
  local out, err, status = t.run_source([[
    local threading = require "threading"
    threading.setswitchinterval(1e-6)   -- preempt as often as possible
    for i = 1, 400 do
      local th = threading.Thread{target=function() end}
      th:start()
      if i % 2 == 0 then th:join() end
    end
    threading.setswitchinterval(0.005)
    for _, th in ipairs(threading.enumerate()) do
      if th ~= threading.main_thread() then th:join() end
    end
    print(threading.active_count(), #threading.enumerate())
  ]], 60)
  t.is(out, "1\t1\n", "no finished thread is left registered")
  t.is(err, "", "no error from a thread ending early")
  t.is(status, 0, "... status 0")
end

-- many threads --------------------------------------------------------------
do
  local n, lock = 0, threading.Lock()
  local ths = {}
  for i = 1, 100 do
    ths[i] = threading.Thread{target=function() lock:acquire(); n = n + 1; lock:release() end}
    ths[i]:start()
  end
  for i = 1, 100 do ths[i]:join(10) end
  t.is(n, 100, "100 threads started and joined")
end

-- Lock and RLock instances carry bound fast methods: the class's methods,
-- subclass overrides and calls on another self must behave as before.
for _, name in ipairs{"Lock", "RLock"} do
  local Cls = threading[name]
  local a, b = Cls(), Cls()
  t.ok(a:acquire(), name .. ": a:acquire()")
  t.ok(Cls.acquire(b, false), name .. ": the class's acquire on another instance")
  t.ok(a:locked() and b:locked(), name .. ": both locked")
  a.release(b)
  t.ok(a:locked() and not b:locked(), name .. ": a.release(b) releases b, not a")
  a:release()
  t.raises(function() a.acquire() end, TypeError, "did you call with '%.'", name .. ": a.acquire() without self")
  t.raises(function() a.acquire(42) end, TypeError, nil, name .. ": a.acquire(42)")
  t.ok(not a:locked(), name .. ": nothing taken by the bad calls")
  do local _ <close> = with(a); t.ok(a:locked(), name .. ": with() takes it") end
  t.ok(not a:locked(), name .. ": and gives it back")
  b.__enter__ = a.__enter__   -- a method bound to another instance
  do
    local _ <close> = with(b)
    t.ok(b:locked() and not a:locked(), name .. ": with(b) takes b even through a's bound __enter__")
  end
  t.ok(not b:locked(), name .. ": and gives b back")

  local Counted = class("Counted" .. name, Cls)
  function Counted:__init__() Cls.__init__(self); self.n = 0 end
  function Counted:acquire(...) self.n = self.n + 1; return Cls.acquire(self, ...) end
  function Counted:__enter__() self.n = self.n + 10; return Cls.__enter__(self) end
  local c = Counted()
  c:acquire(); c:release()
  do local _ <close> = with(c) end
  t.is(c.n, 11, name .. ": a subclass's overrides are called")
  t.ok(not c:locked(), name .. ": and the subclass's lock works")
end

-- with() remembers the object it last entered (its state, for the next
-- with() and for its __close): re-initialising it, overriding its
-- __enter__, other threads and abandoned coroutines must not fool it.
for _, name in ipairs{"Lock", "RLock"} do
  local Cls = threading[name]
  local a = Cls()
  do local _ <close> = with(a) end
  a:acquire()
  a:__init__()   -- a fresh C part: the remembered one is stale
  t.ok(not a:locked(), name .. ": re-__init__ gives an unlocked lock")
  do local _ <close> = with(a); t.ok(a:locked(), name .. ": with() takes the new state") end
  t.ok(not a:locked(), name .. ": and its __close releases the new state")
  local calls = 0
  a.__enter__ = function(self) calls = calls + 1; return Cls.__enter__(self) end
  do local _ <close> = with(a) end
  t.is(calls, 1, name .. ": an __enter__ set on the instance after a with() is called")
  a.__enter__ = nil
  local b = Cls()
  do
    local _ <close> = with(a)
    local _2 <close> = with(b)
    t.ok(a:locked() and b:locked(), name .. ": nested with() holds both")
  end
  t.ok(not a:locked() and not b:locked(), name .. ": nested with() releases both")
  local other = threading.Thread{target = function()
    local _ <close> = with(b)
  end}
  do
    local _ <close> = with(a)
    other:start()
    other:join(5)
  end
  t.ok(not a:locked() and not b:locked(), name .. ": a with() in another thread between enter and close")
end

do   -- a coroutine abandoned inside with(): its lock goes, new ones work
  local co = coroutine.create(function()
    local lk = threading.Lock()
    local _ <close> = with(lk)
    coroutine.yield()
  end)
  coroutine.resume(co)
  co = nil
  for _ = 1, 3 do collectgarbage() end
  local fresh = {}
  for i = 1, 200 do fresh[i] = threading.Lock() end
  local ok = true
  for i = 1, 200 do
    local _ <close> = with(fresh[i])
    if not fresh[i]:locked() then ok = false end
  end
  for i = 1, 200 do if fresh[i]:locked() then ok = false end end
  t.ok(ok, "200 new locks after an abandoned with(): each takes and gives back its own")
end

t.done()
