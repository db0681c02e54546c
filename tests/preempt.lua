-- Preemption in both of its ways (vm_glue/threads.c): by signal (the
-- default) and by the count hook (MTLUA_PREEMPT=hook; what ThreadSanitizer
-- builds and hosts with their own SIGURG handler get).  Each check runs a
-- script in a child mtlua with a time limit: a thread that cannot get the
-- GIL back shows as a timeout.
local t = require "tests.tap"

local plain = t.mtlua
local modes = {{"signal", plain}, {"hook", "env MTLUA_PREEMPT=hook " .. plain}}

local busy_and_waiter = [[
  local threading = require "threading"
  local time = require "time"
  threading.setswitchinterval(0.001)
  local stop, spins = false, 0
  local busy = threading.Thread{target = function()
    while not stop do spins = spins + 1 end   -- pure Lua: no call to release the GIL
  end}
  busy:start()
  local woke = 0
  for i = 1, 20 do
    local ev = threading.Event()
    threading.Timer(0.001, function() ev:set() end):start()
    if ev:wait(5) then woke = woke + 1 end
  end
  local t0 = time.monotonic()
  time.sleep(0.05)
  local late = time.monotonic() - t0
  stop = true
  busy:join()
  print("woke", woke, "spun", spins > 0, "sleep back in time", late < 2)
]]

local two_busy = [[
  local threading = require "threading"
  local time = require "time"
  threading.setswitchinterval(0.001)
  local stop, counts = false, {0, 0}
  local ths = {}
  for k = 1, 2 do
    ths[k] = threading.Thread{target = function()
      while not stop do counts[k] = counts[k] + 1 end
    end}
    ths[k]:start()
  end
  time.sleep(0.3)
  local seen = {counts[1], counts[2]}
  time.sleep(0.3)
  stop = true
  for k = 1, 2 do ths[k]:join() end
  print("both ran", seen[1] > 0 and seen[2] > 0,
        "both went on", counts[1] > seen[1] and counts[2] > seen[2])
]]

-- A loop made only of a global read, an add and a global write: the
-- switch must be able to land between the read and the write.
local racy = [[
  local threading = require "threading"
  threading.setswitchinterval(1e-6)
  counter = 0
  local function add() for _ = 1, 300000 do counter = counter + 1 end end
  local a, b = threading.Thread{target = add}, threading.Thread{target = add}
  a:start(); b:start(); a:join(); b:join()
  print("lost", counter < 600000)
]]

-- After the second thread, a single thread's loop runs at full speed only
-- with signals; with the hook it pays the hook on every instruction.  Not
-- timed here (see `make bench`): checked is that the result is right.
local after_thread = [[
  local threading = require "threading"
  local th = threading.Thread{target = function() end}
  th:start(); th:join()
  local s = 0
  for i = 1, 1000000 do s = s + i % 3 end
  print("sum", s)
]]

for _, mode in ipairs(modes) do
  local name, cmd = mode[1], mode[2]
  t.mtlua = cmd
  local out, err, st = t.run_source(busy_and_waiter, 60)
  t.is(out, "woke\t20\tspun\ttrue\tsleep back in time\ttrue\n",
       name .. ": a pure-Lua busy thread does not starve Event waits or sleep")
  t.is(st, 0, name .. ": ... and ends (" .. err:sub(1, 200) .. ")")

  out = t.run_source(two_busy, 60)
  t.is(out, "both ran\ttrue\tboth went on\ttrue\n", name .. ": two busy threads take turns")

  local lost = false
  for _ = 1, 5 do   -- a switch between read and write is likely, not certain
    if t.run_source(racy, 60) == "lost\ttrue\n" then lost = true; break end
  end
  t.ok(lost, name .. ": a racy counter loses updates at a tiny switch interval")

  out = t.run_source(after_thread, 60)
  t.is(out, "sum\t1000000\n", name .. ": a loop after a thread ended")
end
t.mtlua = plain

-- SIGURG ignored by whoever started us: preemption still works
do
  local path = t.tmpname(".lua")
  local h = assert(io.open(path, "w"))
  h:write[[
    local threading = require "threading"
    threading.setswitchinterval(0.001)
    local stop, n = false, 0
    local th = threading.Thread{target = function() while not stop do n = n + 1 end end}
    th:start()
    require("time").sleep(0.1)
    stop = true
    th:join()
    print("joined")
  ]]
  h:close()
  local p = io.popen(("trap '' URG; timeout -k 2 60 %s %s; echo status $?"):format(plain, path))
  local out = p:read("a")
  p:close()
  os.remove(path)
  t.is(out, "joined\nstatus 0\n", "a busy thread is preempted when SIGURG was ignored at start")
end

t.done()
