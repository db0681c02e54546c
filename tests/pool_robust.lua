-- pool: no hangs, no lost results, no stray processes.
local t = require "tests.tap"
local pool = require "pool"
local Pool, ThreadPool = pool.Pool, pool.ThreadPool
local time = require "time"

local function alive(pid)
  local f = io.open("/proc/" .. pid .. "/stat")
  if not f then return false end
  local s = f:read("a")
  f:close()
  return s ~= nil and s:match("^%d+ %b() (%a)") ~= "Z"
end

local function wait_gone(pids, limit)
  local deadline = time.monotonic() + limit
  repeat
    local any = false
    for _, pid in ipairs(pids) do if alive(pid) then any = true end end
    if not any then return true end
    time.sleep(0.05)
  until time.monotonic() > deadline
  return false
end

-- 20,000 tasks with callbacks: each callback exactly once
do
  local p = Pool(2)
  local seen, calls, dup = {}, 0, 0
  local rs = {}
  for i = 1, 20000 do
    rs[i] = p:apply_async(function(x) return x end, { i }, nil, function(v)
      if seen[v] then dup = dup + 1 end
      seen[v] = true
      calls = calls + 1
    end)
  end
  local wrong = 0
  for i = 1, 20000 do if rs[i]:get(60) ~= i then wrong = wrong + 1 end end
  p:close()
  p:join()
  t.is(calls, 20000, "20,000 callbacks ran")
  t.is(dup, 0, "none twice")
  t.is(wrong, 0, "every result right")
end

-- maxtasksperchild: workers replaced, nothing lost
do
  local p = Pool{ processes = 2, maxtasksperchild = 2 }
  local pids = p:map(function() time.sleep(0.01) return os.getpid() end, { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12 }, 1)
  local distinct, per = 0, {}
  for i = 1, pids.n do
    if not per[pids[i]] then distinct = distinct + 1 end
    per[pids[i]] = (per[pids[i]] or 0) + 1
  end
  local max = 0
  for _, n in pairs(per) do if n > max then max = n end end
  t.is(pids.n, 12, "maxtasksperchild: all 12 results")
  t.ok(distinct >= 6 and max <= 2, "maxtasksperchild=2: each worker ran at most 2 tasks (" .. distinct .. " pids)")
  p:close()
  p:join()
end

-- a task that kills its own worker: that task fails, the rest complete
do
  local p = Pool(2)
  local t0 = time.monotonic()
  local rs = {}
  for i = 1, 10 do
    rs[i] = p:apply_async(function(x)
      if x == 4 then os.exit(3) end
      if x == 7 then os.execute("kill -9 " .. os.getpid()) time.sleep(5) end
      time.sleep(0.02)
      return x * 2
    end, { i })
  end
  local okcount = 0
  for i = 1, 10 do
    local ok, v = pcall(rs[i].get, rs[i], 20)
    if i == 4 then
      t.ok(not ok and isinstance(v, pool.WorkerLostError), "os.exit(3) in a task -> WorkerLostError")
      t.like(tostring(v), "exit code 3", "the message says how the worker ended")
    elseif i == 7 then
      t.ok(not ok and isinstance(v, pool.WorkerLostError), "kill -9 of the worker -> WorkerLostError")
      t.like(tostring(v), "signal 9", "the message names the signal")
    elseif ok and v == i * 2 then
      okcount = okcount + 1
    end
  end
  t.is(okcount, 8, "every other task completed")
  t.is(p:apply(function() return 5 end), 5, "replaced workers take new tasks")
  p:close()
  p:join()
  t.ok(time.monotonic() - t0 < 10, "in bounded time")
  t.ok(isinstance(pool.WorkerLostError(), Exception), "WorkerLostError is an Exception")
end

-- a worker killed from outside while idle is replaced
do
  local p = Pool(2)
  local pids = p:_pids()
  os.execute("kill -9 " .. pids[1])
  t.ok(wait_gone({ pids[1] }, 5), "idle worker killed")
  t.is(p:apply(function(x) return x + 1 end, { 1 }, nil), 2, "the pool still works")
  local r = p:map(function(x) return x end, { 1, 2, 3, 4 })
  t.is(r.n, 4, "map after a lost idle worker")
  p:close()
  p:join()
end

-- terminate during long tasks: fast, pending results fail, no process left
do
  local p = Pool(2)
  local rs = {}
  for i = 1, 4 do rs[i] = p:apply_async(function() os.execute("sleep 30") return 1 end) end
  time.sleep(0.3)
  local pids = p:_pids()
  local t0 = time.monotonic()
  p:terminate()
  t.ok(time.monotonic() - t0 < 3, "terminate returns fast")
  t.ok(wait_gone(pids, 3), "no worker left after terminate")
  local out = io.popen("pgrep -f 'sleep 30' -P " .. table.concat(pids, ",") .. " 2>/dev/null"):read("a")
  t.is(out, "", "no worker's child left either")
  local failed = 0
  for i = 1, 4 do
    local ok, e = pcall(rs[i].get, rs[i], 5)
    if not ok and isinstance(e, pool.WorkerLostError) then failed = failed + 1 end
  end
  t.is(failed, 4, "pending results fail after terminate")
  p:join()
end

-- a SIGKILLed parent leaves no worker behind
do
  local out = t.run_source([[
    local p = require("pool").Pool(2)
    p:apply(function() end)
    local pids = p:_pids()
    print(table.concat(pids, " "))
    io.stdout:flush()
    for i = 1, 4 do p:apply_async(function() require("time").sleep(30) end) end
    os.execute("kill -9 " .. os.getpid())
  ]], 20)
  local pids = {}
  for pid in out:gmatch("%d+") do pids[#pids + 1] = tonumber(pid) end
  t.is(#pids, 2, "the child reported its workers")
  t.ok(#pids == 2 and wait_gone(pids, 5), "workers die with their parent")
end

-- replacement workers (forked by the result thread) die with the parent too
do
  local out = t.run_source([[
    local p = require("pool").Pool{ processes = 2, maxtasksperchild = 1 }
    for i = 1, 6 do p:apply(function() end) end
    local deadline = require("time").monotonic() + 5
    while #p:_pids() < 2 and require("time").monotonic() < deadline do require("time").sleep(0.01) end
    print(table.concat(p:_pids(), " "))
    io.stdout:flush()
    for i = 1, 2 do p:apply_async(function() require("time").sleep(30) end) end
    require("time").sleep(0.2)
    os.execute("kill -9 " .. os.getpid())
  ]], 20)
  local pids = {}
  for pid in out:gmatch("%d+") do pids[#pids + 1] = tonumber(pid) end
  t.is(#pids, 2, "replacement workers reported")
  t.ok(#pids == 2 and wait_gone(pids, 5), "replacement workers die with their SIGKILLed parent")
end

-- a script that never closes its pool still exits, and takes its workers
do
  local out, err, status = t.run_source([[
    local p = require("pool").Pool(2)
    print(p:apply(function() return "x" end))
    print(table.concat(p:_pids(), " "))
  ]], 20)
  t.like(out, "^x\n", "unclosed pool: script output")
  local pids = {}
  for pid in out:gmatch("%d+") do pids[#pids + 1] = tonumber(pid) end
  t.ok(#pids == 2 and wait_gone(pids, 5), "unclosed pool: no worker left at exit")
end

-- ThreadPool under load: callbacks exactly once
do
  local p = ThreadPool(4)
  local calls = 0
  local rs = {}
  for i = 1, 3000 do rs[i] = p:apply_async(function(x) return x end, { i }, nil, function() calls = calls + 1 end) end
  local wrong = 0
  for i = 1, 3000 do if rs[i]:get(30) ~= i then wrong = wrong + 1 end end
  p:close()
  p:join()
  t.is(calls, 3000, "ThreadPool: 3,000 callbacks")
  t.is(wrong, 0, "ThreadPool: every result right")
  local tp = ThreadPool{ processes = 2, maxtasksperchild = 1 }
  local ids = tp:map(function() return require("threading").get_ident() end, { 1, 2, 3, 4 }, 1)
  t.is(ids.n, 4, "ThreadPool maxtasksperchild: all results")
  tp:close()
  tp:join()
end

-- a pool made in a short-lived thread keeps its workers after the thread
-- ends (they are tied to the process, not to the forking thread), and
-- they still die with the process when it is SIGKILLed
do
  local threading = require "threading"
  local p
  local th = threading.Thread{ target = function() p = Pool(2) end }
  th:start()
  th:join(10)
  time.sleep(0.3)
  local pids = p:_pids()
  t.is(#pids, 2, "pool made in a thread: two workers")
  t.ok(alive(pids[1]) and alive(pids[2]), "workers outlive the thread that forked them")
  t.is(p:apply(function(x) return x * 3 end, { 5 }), 15, "and still take tasks")
  p:close()
  p:join()
  local out = t.run_source([[
    local threading = require "threading"
    local p
    local th = threading.Thread{ target = function() p = require("pool").Pool(2) end }
    th:start(); th:join()
    p:apply(function() end)
    print(table.concat(p:_pids(), " "))
    io.stdout:flush()
    os.execute("kill -9 " .. os.getpid())
  ]], 20)
  local kpids = {}
  for pid in out:gmatch("%d+") do kpids[#kpids + 1] = tonumber(pid) end
  t.is(#kpids, 2, "thread-made pool in a child: its workers reported")
  t.ok(#kpids == 2 and wait_gone(kpids, 5), "they die with the SIGKILLed parent")
end

-- the remote traceback holds the task's frames, not the worker loop's
-- nor the parent's frames from before the fork
do
  local function make() return Pool(1) end
  local p = make()
  local function inner() error("deep") end
  local r = p:apply_async(function() inner() end)
  local ok, e = pcall(r.get, r, 10)
  t.ok(not ok, "failing task")
  local s = tostring(e)
  t.like(s, "in upvalue 'inner'", "traceback names the task's frames")
  t.ok(not s:find("main chunk", 1, true) and not s:find("spawn", 1, true) and not s:find("xpcall", 1, true),
    "and none from before the fork or of the worker loop")
  p:terminate()
end

-- functions without state are sent once per worker and named by id;
-- closures go by value with every task; replaced workers get them anew
do
  local p = Pool{ processes = 2, maxtasksperchild = 3 }
  local function triple(x) return x * 3 end
  local r = p:map(triple, { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20 }, 1)
  local good = r.n == 20
  for i = 1, 20 do if r[i] ~= 3 * i then good = false end end
  t.ok(good, "a cached function on workers replaced every 3 tasks")
  local base = 1
  local addb = function(x) return x + base end
  t.is(p:apply(addb, { 1 }), 2, "closure: upvalue as submitted")
  base = 10
  t.is(p:apply(addb, { 1 }), 11, "closure: a changed upvalue is seen by the next task")
  local sum = 0
  for i = 1, 50 do sum = sum + p:apply(function(x) return x + 1 end, { i }) end
  t.is(sum, 50 * 51 // 2 + 50, "50 closures of one prototype")
  p:close()
  p:join()
  local q = Pool(2)
  local function ident(x) return x end
  t.is(q:apply(ident, { 7 }), 7, "cached function before a worker dies")
  for _, pid in ipairs(q:_pids()) do os.execute("kill -9 " .. pid) end
  local rs = {}
  for i = 1, 6 do rs[i] = q:apply_async(ident, { i }) end
  local okn = 0
  for i = 1, 6 do
    local ok, v = pcall(rs[i].get, rs[i], 20)
    if ok and v == i then okn = okn + 1 end
  end
  t.is(okn, 6, "the replaced workers get the cached function again")
  q:close()
  q:join()
end

t.done()
