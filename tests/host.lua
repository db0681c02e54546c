-- The mtlua binary and the GIL: options, exit statuses, Ctrl-C, the
-- main thread waiting for non-daemon threads, GIL release in blocking
-- calls, fair switching, os/time additions, the prelude.
local t = require "tests.tap"
local threading = require "threading"
local time = require "time"

-- options and exit statuses ---------------------------------------------------
do
  local out, _, st = t.run("-e 'print(1+1)'")
  t.is(out, "2\n", "-e runs a statement")
  t.is(st, 0, "exit 0")
  out = t.run("-v")
  t.like(out, "^Lua 5%.4", "-v prints the version")
  out = t.run("-l string -e 'print(type(string.format))'")
  t.is(out, "function\n", "-l requires a module")
  out = t.run("-l th=threading -e 'print(type(th.Thread))'")
  t.is(out, "table\n", "-l g=mod")
  out = t.run_source("print(arg[0] ~= nil, arg[1], arg[2], ...)", 10, "a b")
  t.is(out, "true\ta\tb\ta\tb\n", "arg table and ... hold the script arguments")
  local _, err, st2 = t.run("-e 'error(ValueError(\"bad\"))'")
  t.is(st2, 1, "uncaught error → status 1")
  t.like(err, "stack traceback:.*ValueError: bad\n$", "traceback then the message")
  _, _, st2 = t.run("-e 'os.exit(5)'")
  t.is(st2, 5, "os.exit(5)")
  _, err, st2 = t.run("-e 'raise(SystemExit(7))'")
  t.is(st2, 7, "SystemExit(7)")
  t.is(err, "", "SystemExit prints nothing")
  _, err, st2 = t.run("-e 'raise(SystemExit(\"bye\"))'")
  t.is(st2, 1, "SystemExit with a message → 1")
  t.like(err, "bye", "... and prints it")
  _, _, st2 = t.run("-e 'raise(SystemExit())'")
  t.is(st2, 0, "SystemExit() → 0")
  _, err, st2 = t.run("-Z")
  t.is(st2, 1, "a bad option → 1")
  t.like(err, "unrecognized option", "... with usage")
  local f = os.tmpname()
  local h = io.open(f, "w"); h:write("print('from stdin', __name__)"); h:close()
  out = t.run("-", 10, f)
  os.remove(f)
  t.is(out, "from stdin\t__main__\n", "- runs stdin")
  out = t.run("-u -e 'io.write(\"a\") io.stderr:write(\"b\") io.write(\"c\\n\")'")
  t.is(out, "ac\n", "-u")
end

-- the main thread waits for non-daemon threads; daemon ones are abandoned ----
do
  local out, _, st = t.run_source([[
    local threading = require "threading"
    threading.Thread{target=function() require("time").sleep(0.3); print("worker done") end}:start()
    print("main done")
  ]])
  t.is(out, "main done\nworker done\n", "exit waits for a non-daemon thread")
  t.is(st, 0, "status 0")
  local t0 = time.monotonic()
  out, _, st = t.run_source([[
    local threading = require "threading"
    threading.Thread{target=function() require("time").sleep(5); print("never") end, daemon=true}:start()
    print("main done")
  ]])
  t.is(out, "main done\n", "a daemon thread is abandoned")
  t.ok(time.monotonic() - t0 < 3, "... without waiting for it")
  out, _, st = t.run_source([[
    local threading = require "threading"
    threading.Thread{target=function() require("time").sleep(0.2); print("worker done") end}:start()
    error("main fails")
  ]])
  t.is(st, 1, "an error in main → 1")
  t.is(out, "worker done\n", "... after waiting for the worker")
end

-- Ctrl-C -----------------------------------------------------------------------
local function interrupted(src, name)
  local path = t.tmpname(".lua")
  local h = io.open(path, "w"); h:write(src); h:close()
  local out, err = os.tmpname(), os.tmpname()
  -- the script is started in the background, then sent SIGINT
  -- (timeout resets SIGINT, which a background job of sh ignores)
  os.execute(("(timeout 20 %s %s >%s 2>%s; echo $? >>%s) & sleep 0.4; kill -INT $(pgrep -f '^%s %s') ; wait")
    :format(t.mtlua, path, out, err, out, t.mtlua, path))
  local o = io.open(out):read("a")
  local e = io.open(err):read("a")
  os.remove(out); os.remove(err); os.remove(path)
  t.like(o, "130\n$", name .. ": status 130")
  t.like(e, "KeyboardInterrupt", name .. ": KeyboardInterrupt reported")
  return o, e
end

interrupted([[
  local threading = require "threading"
  local th = threading.Thread{target=function() require("time").sleep(3) end, daemon=true}
  th:start()
  th:join()
]], "join")
interrupted([[require("time").sleep(10)]], "sleep")
interrupted([[
  local lk = require("threading").Lock(); lk:acquire(); lk:acquire()
]], "Lock:acquire")
interrupted([[
  local c = require("threading").Condition(); c:acquire(); c:wait()
]], "Condition:wait")
-- (ThreadSanitizer holds signals back until a libc call: not in this loop)
if os.getenv("MTLUA_SANITIZER") ~= "thread" then
  interrupted([[local x = 0 while true do x = x + 1 end]], "a CPU loop")
end
do
  local o = interrupted([[
    local ok, e = pcall(require("time").sleep, 10)
    print("caught", isinstance(e, KeyboardInterrupt), isinstance(e, Exception))
    raise(e)
  ]], "caught and re-raised")
  t.like(o, "caught\ttrue\tfalse", "KeyboardInterrupt is not an Exception")
end
do   -- SIGINT ignored at start stays ignored (as in CPython)
  local path = t.tmpname(".lua")
  local h = io.open(path, "w"); h:write("require('time').sleep(0.8) print('slept')"); h:close()
  local p = io.popen(("trap '' INT; %s %s & sleep 0.3; kill -INT $!; wait $!; echo status $?")
    :format(t.mtlua, path))
  local o = p:read("a"); p:close(); os.remove(path)
  t.like(o, "slept\nstatus 0", "an ignored SIGINT stays ignored")
end

-- the GIL ------------------------------------------------------------------------
do   -- a thread in sleep(1) does not stop another thread's work
  local done_at
  local sleeper = threading.Thread{target=time.sleep, args={1}, daemon=true}
  local t0 = time.monotonic()
  sleeper:start()
  local worker = threading.Thread{target=function()
    local x = 0
    local stop = time.monotonic() + 0.1
    while time.monotonic() < stop do x = x + 1 end
    done_at = time.monotonic() - t0
  end}
  worker:start(); worker:join()
  t.ok(done_at < 0.6, ("sleep(1) in one thread does not block another (%.3f s)"):format(done_at))
end

do   -- a CPU-bound thread does not starve a thread waiting on an Event
  local ev = threading.Event()
  local stop = false
  local woke_at
  local spinner = threading.Thread{target=function() local x = 0 while not stop do x = x + 1 end end}
  local waiter = threading.Thread{target=function() ev:wait(10); woke_at = time.monotonic() end}
  waiter:start(); spinner:start()
  time.sleep(0.1)
  local set_at = time.monotonic()
  ev:set()
  waiter:join(10)
  stop = true
  spinner:join(10)
  local latency = woke_at - set_at
  t.ok(latency < 0.1, ("the waiter got the GIL %.1f ms after set (switch interval 5 ms)")
    :format(latency * 1000))
end

do   -- unprotected updates can be lost; protected ones cannot
  threading.setswitchinterval(1e-6)
  counter = 0
  local function racy() for _ = 1, 300000 do counter = counter + 1 end end
  local a, b = threading.Thread{target=racy}, threading.Thread{target=racy}
  a:start(); b:start(); a:join(); b:join()
  threading.setswitchinterval(0.005)
  t.ok(counter <= 600000, ("racy counter %d <= 600000 (threads really interleave)"):format(counter))
end

do   -- os.execute and io.popen reads release the GIL
  local n, stop = 0, false
  local th = threading.Thread{target=function() while not stop do n = n + 1 time.sleep(0) end end}
  th:start()
  time.sleep(0.02)
  local before = n
  os.execute("sleep 0.2")
  local mid = n
  local f = io.popen("sleep 0.2; echo hi")
  local line = f:read("l")
  f:close()
  stop = true
  th:join()
  t.ok(mid > before, "os.execute releases the GIL")
  t.ok(n > mid, "reading a slow pipe releases the GIL")
  t.is(line, "hi", "the pipe's line")
  local lines = {}
  for l in io.popen("printf 'a\\nb\\n'"):lines() do lines[#lines + 1] = l end
  t.is(table.concat(lines, ","), "a,b", "lines() on a pipe")
  local p = io.popen("echo 12 34")
  local x, y = p:read("n", "n")
  p:close()
  t.ok(x == 12 and y == 34, "read('n') on a pipe")
  local input = os.tmpname()
  local h = io.open(input, "w"); h:write("l1\n42 xyz"); h:close()
  local out = t.run("-e 'print(io.read(\"l\"), io.read(\"n\"), io.read(2), io.read(\"a\"))'", 10, input)
  os.remove(input)
  t.is(out, "l1\t42\t x\tyz\n", "io.read formats on stdin")
end

-- time and os ------------------------------------------------------------------------
do
  t.raises(function() time.sleep(-1) end, ValueError, "non%-negative", "sleep(-1)")
  t.raises(function() time.sleep("x") end, TypeError, nil, "sleep('x')")
  local t0 = time.monotonic()
  time.sleep(0.05)
  local dt = time.monotonic() - t0
  t.ok(dt >= 0.049 and dt < 0.5, "sleep(0.05)")
  t.ok(math.abs(time.time() - os.time()) < 2, "time.time")
  t.ok(math.type(time.time_ns()) == "integer", "time_ns")
  t.ok(time.perf_counter_ns() > 0 and time.perf_counter() > 0, "perf_counter")
  t.ok(time.process_time() >= 0, "process_time")
  t.ok(math.type(os.getpid()) == "integer" and os.getpid() > 1, "os.getpid")
  t.ok(os.getppid() > 0, "os.getppid")
  t.ok(os.cpu_count() >= 1, "os.cpu_count")
end

t.done()
