-- multiprocessing: Process, Queue/JoinableQueue/SimpleQueue across
-- processes, Pipe; exit codes, bad input, robustness.
local t = require "tests.tap"
local mp = require "multiprocessing"
local queue = require "queue"
local time = require "time"
local pickle = require "pickle"

------------------------------------------------------------ Process

do
  local p = mp.Process{target = function() end}
  t.like(p.name, "^Process%-%d+$", "default name Process-N")
  t.like(tostring(p), "^<Process name='Process%-%d+' parent=" .. os.getpid() .. " initial>$", "tostring initial")
  t.is(p.pid, nil, "no pid before start")
  t.is(p.exitcode, nil, "no exitcode before start")
  t.is(p:is_alive(), false, "not alive before start")
  t.raises(function() p:join() end, AssertionError, "can only join a started process", "join before start")
  p:start()
  t.ok(math.type(p.pid) == "integer" and p.pid ~= os.getpid(), "pid of the child")
  t.raises(function() p:start() end, AssertionError, "cannot start a process twice", "start twice")
  p:join(10)
  t.is(p.exitcode, 0, "exitcode 0")
  t.is(p:is_alive(), false, "not alive after join")
  t.like(tostring(p), "^<Process name='Process%-%d+' pid=%d+ parent=%d+ stopped exitcode=0>$", "tostring stopped")
  p:close()
  t.raises(function() p:is_alive() end, ValueError, "closed", "use after close")
end

do
  t.raises(function() mp.Process{target = 1} end, TypeError, "target", "Process{target=1}")
  t.raises(function() mp.Process{target = print, args = 3} end, TypeError, "args", "args not a table")
  t.raises(function() mp.Process(1) end, AssertionError, "group", "group must be nil")
  local p = mp.Process(nil, function() end, "named")   -- positional, as Python
  t.is(p.name, "named", "positional name")
  local ok = pcall(mp.set_start_method, "fork")
  t.ok(ok, "set_start_method('fork')")
  t.raises(function() mp.set_start_method("spawn") end, ValueError, "spawn", "other start methods")
  t.is(mp.get_start_method(), "fork", "get_start_method")
  t.ok(mp.cpu_count() >= 1, "cpu_count")
  t.is(mp.current_process().name, "MainProcess", "current_process in main")
  t.is(mp.parent_process(), nil, "no parent_process in main")
  t.ok(issubclass(mp.TimeoutError, Exception), "multiprocessing.TimeoutError")
  local ok_pool, pool = pcall(require, "pool")
  if ok_pool then t.is(mp.TimeoutError, pool.TimeoutError, "one TimeoutError with pool") end
end

do   -- exit codes
  local function code_of(fn)
    local p = mp.Process{target = fn}
    p:start()
    p:join(10)
    return p.exitcode, p
  end
  t.is(code_of(function() end), 0, "exit 0")
  t.is(code_of(function() io.stderr = io.open("/dev/null", "w") error("boom") end), 1, "uncaught error: 1")
  t.is(code_of(function() os.exit(3) end), 3, "os.exit(3)")
  t.is(code_of(function() raise(SystemExit(4)) end), 4, "SystemExit(4)")
  t.is(code_of(function() raise(SystemExit()) end), 0, "SystemExit(): 0")
  local p = mp.Process{target = function() time.sleep(20) end, daemon = true}
  p:start()
  t.ok(p:is_alive(), "alive while running")
  local t0 = time.monotonic()
  p:join(0.2)
  t.ok(time.monotonic() - t0 >= 0.15 and p.exitcode == nil, "join(timeout) returns while it runs")
  t.raises(function() p:close() end, ValueError, "still running", "close of a running process")
  t.like(tostring(p), "started daemon>$", "tostring started daemon")
  p:kill()
  p:join(10)
  t.is(p.exitcode, -9, "SIGKILL: -9")
  t.like(tostring(p), "stopped exitcode=%-SIGKILL daemon>$", "tostring exitcode=-SIGKILL")
  p = mp.Process{target = function() time.sleep(20) end}
  p:start()
  p:terminate()
  p:join(10)
  t.is(p.exitcode, -15, "terminate: -15")
end

do   -- subclass, child's view of itself, kwargs
  local MyProc = class("MyProc", mp.Process)
  function MyProc:__init__(q) MyProc.super.__init__(self); self.q = q end
  function MyProc:run()
    local cur = mp.current_process()
    self.q:put({cur.name, cur.pid, os.getpid(), mp.parent_process().pid, tostring(cur)})
  end
  local q = mp.Queue()
  local p = MyProc(q)
  t.like(p.name, "^MyProc%-%d+$", "subclass default name")
  p:start()
  local r = q:get{timeout = 10}
  p:join(10)
  t.is(r[1], p.name, "current_process() in the child is the Process")
  t.is(r[2], r[3], "its pid is the child's")
  t.is(r[4], os.getpid(), "parent_process() is the parent")
  t.like(r[5], "^<MyProc name='MyProc%-%d+' parent=%d+ started>$", "tostring in the child")
  local got = mp.Queue()
  p = mp.Process{target = function(a, b, kw) got:put({a, b, kw.m}) end, args = table.pack(1, nil), kwargs = {m = 20}}
  p:start()
  r = got:get{timeout = 10}
  p:join(10)
  t.ok(r[1] == 1 and r[2] == nil and r[3] == 20, "args with a hole, kwargs as the last argument")
end

do   -- active_children
  local p = mp.Process{target = function() time.sleep(0.3) end}
  p:start()
  local list = mp.active_children()
  local found = false
  for _, c in ipairs(list) do if c == p then found = true end end
  t.ok(found, "active_children lists a running child")
  p:join(10)
  t.is(#mp.active_children(), 0, "and not after it ended")
end

do   -- the uncaught-error report
  local _, err, status = t.run_source([[
    local mp = require "multiprocessing"
    local p = mp.Process{target = function() error(ValueError("bad thing")) end}
    p:start(); p:join()
    print(p.exitcode)
  ]], 30)
  t.like(err, "^Process Process%-1:\n", "stderr starts with Process Process-1:")
  t.like(err, "traceback", "then a traceback")
  t.like(err, "ValueError: bad thing", "then the message")
  t.is(status, 0, "the parent goes on")
end

do   -- stdout shared through a pipe/file: nothing lost or doubled
  local out, _, status = t.run_source([[
    local mp = require "multiprocessing"
    for i = 1, 100 do print("parent-a " .. i) end
    local p = mp.Process{target = function() for i = 1, 100 do print("child " .. i) end end}
    p:start()
    for i = 1, 100 do print("parent-b " .. i) end
    p:join()
  ]], 30)
  local n, seen, dup = 0, {}, false
  for l in out:gmatch("[^\n]+") do
    n = n + 1
    if seen[l] then dup = true end
    seen[l] = true
  end
  t.is(n, 300, "300 lines, none lost")
  t.ok(not dup, "none doubled")
  t.is(status, 0, "exit 0")
end

do   -- Ctrl-C interrupts a join
  local out = t.run_source([[
    local mp = require "multiprocessing"
    local p = mp.Process{target = function() require("time").sleep(20) end}
    p:start()
    os.execute("(sleep 0.3; kill -INT " .. os.getpid() .. ") &")
    local ok, e = pcall(p.join, p)
    print(isinstance(e, KeyboardInterrupt) and "interrupted" or tostring(e))
    p:kill(); p:join()
    local function intr(obj, method)
      os.execute("(sleep 0.2; kill -INT " .. os.getpid() .. ") &")
      local ok, e = pcall(obj[method], obj)
      print(isinstance(e, KeyboardInterrupt) and "interrupted" or tostring(e))
    end
    intr(mp.Queue(), "get")
    local jq = mp.JoinableQueue(); jq:put(1)
    intr(jq, "join")
    intr(mp.Pipe(), "recv")
  ]], 30)
  t.is(out, "interrupted\n" .. ("interrupted\n"):rep(3), "KeyboardInterrupt in join, Queue.get, JoinableQueue.join, recv")
end

----------------------------------------------------------------- Queue

do
  local q = mp.Queue(2)
  t.ok(q:empty(), "new queue is empty")
  q:put(nil)
  q:put_nowait({1, 2, x = "y"})
  t.is(q:qsize(), 2, "qsize")
  t.ok(q:full(), "full at maxsize")
  t.raises(function() q:put(3, {timeout = 0.05}) end, queue.Full, nil, "put timeout: queue.Full")
  t.raises(function() q:put_nowait(3) end, queue.Full, nil, "put_nowait: queue.Full")
  t.raises(function() q:put(3, false) end, queue.Full, nil, "put(v, false): queue.Full")
  t.is(q:get(), nil, "nil item")
  local v = q:get{timeout = 1}
  t.ok(v[1] == 1 and v[2] == 2 and v.x == "y", "table item")
  t.raises(function() q:get{timeout = 0.05} end, queue.Empty, nil, "get timeout: queue.Empty")
  t.raises(function() q:get_nowait() end, queue.Empty, nil, "get_nowait: queue.Empty")
  t.raises(function() q:get(true, -1) end, ValueError, "timeout", "negative timeout")
  t.raises(function() q:put(coroutine.create(print)) end, TypeError, "pickle", "unpicklable item")
  q:put("still works")
  t.is(q:get_nowait(), "still works", "usable after a failed put")
  t.raises(function() mp.Queue("x") end, TypeError, "maxsize", "Queue('x')")
  t.raises(function() q:join_thread() end, AssertionError, nil, "join_thread before close")
  q:close()
  q:join_thread()
  q:cancel_join_thread()
  t.raises(function() q:put(1) end, ValueError, "closed", "put after close")
  t.like(tostring(mp.Queue()), "^<multiprocessing.queues.Queue object at ", "tostring")
  local sq = mp.SimpleQueue()
  sq:put(5)
  t.is(sq:get(), 5, "SimpleQueue")
end

do   -- 4 processes x 25,000 items through one queue
  local q = mp.Queue(1000)
  local ps = {}
  for w = 1, 4 do
    ps[w] = mp.Process{target = function()
      for i = 1, 25000 do q:put(w * 100000 + i) end
    end}
    ps[w]:start()
  end
  local seen, n, bad = {}, 0, 0
  for _ = 1, 100000 do
    local v = q:get{timeout = 20}
    if seen[v] then bad = bad + 1 end
    seen[v] = true
    n = n + 1
  end
  for w = 1, 4 do ps[w]:join(10) end
  local missing = 0
  for w = 1, 4 do for i = 1, 25000 do if not seen[w * 100000 + i] then missing = missing + 1 end end end
  t.is(n, 100000, "100,000 items received")
  t.is(bad, 0, "none duplicated")
  t.is(missing, 0, "none lost")
  t.ok(q:empty(), "queue empty at the end")
end

do   -- messages larger than the ring, both ways, from two writers
  local q, back = mp.Queue(), mp.Queue()
  local mib = string.rep("x", 1 << 20)
  local ps = {}
  for w = 1, 2 do
    ps[w] = mp.Process{target = function()
      for _ = 1, 3 do q:put(string.rep(string.char(64 + w), (1 << 20) + w)) end
      q:put(#back:get{timeout = 10})
    end}
    ps[w]:start()
  end
  local ok, counts = true, {0, 0}
  for _ = 1, 6 do
    local s = q:get{timeout = 20}
    local w = s:byte(1) - 64
    if #s ~= (1 << 20) + w or s:find("[^" .. string.char(64 + w) .. "]") then ok = false end
    counts[w] = (counts[w] or 0) + 1
  end
  back:put(mib)
  back:put(mib)
  local a, b = q:get{timeout = 20}, q:get{timeout = 20}
  for w = 1, 2 do ps[w]:join(10) end
  t.ok(ok and counts[1] == 3 and counts[2] == 3, "1 MiB strings from two writers arrive whole")
  t.ok(a == 1 << 20 and b == 1 << 20, "1 MiB strings parent -> child")
end

do   -- a queue passed through another queue and through a pipe
  local inbox = mp.Queue()
  local a, b = mp.Pipe()
  local p = mp.Process{target = function()
    local q1 = inbox:get{timeout = 10}
    q1:put("via queue")
    local q2 = b:recv()
    q2:put("via pipe")
  end}
  p:start()
  local late1, late2 = mp.Queue(), mp.JoinableQueue()   -- made after the fork
  inbox:put(late1)
  a:send(late2)
  t.is(late1:get{timeout = 10}, "via queue", "queue passed through a queue")
  t.is(late2:get{timeout = 10}, "via pipe", "JoinableQueue passed through a pipe")
  p:join(10)
  t.is(p.exitcode, 0, "the receiver ended well")
end

do   -- JoinableQueue across processes
  local q = mp.JoinableQueue()
  local done = mp.Queue()
  local p = mp.Process{target = function()
    for _ = 1, 10 do q:get{timeout = 10}; time.sleep(0.005); q:task_done() end
    done:put(true)
  end}
  p:start()
  for i = 1, 10 do q:put(i) end
  q:join()
  t.ok(done:get{timeout = 10}, "join() returned after ten task_done() in the child")
  p:join(10)
  t.raises(function() q:task_done() end, ValueError, "too many", "task_done too many times")
end

do   -- a child killed while it holds the queue's lock does not wedge it
  local q = mp.Queue(100)
  local p = mp.Process{target = function()
    while true do q:put(1); q:get() end
  end}
  p:start()
  time.sleep(0.3)
  p:kill()
  p:join(10)
  local ok = pcall(function()
    for i = 1, 200 do q:put(i, {timeout = 5}); q:get{timeout = 5} end
  end)
  t.ok(ok, "put/get work after the lock holder was SIGKILLed")
  t.is(p.exitcode, -9, "the child was killed")
end

------------------------------------------------------------------ Pipe

do
  local a, b = mp.Pipe()
  local p = mp.Process{target = function()
    local v = b:recv()
    b:send({v, "back"})
    b:send(nil)
    b:send_bytes("raw\0bytes")
    b:close()
  end}
  p:start()
  b:close()
  t.is(a:poll(0.05), false, "poll(timeout): nothing yet")
  a:send(42)
  local r = a:recv()
  t.ok(r[1] == 42 and r[2] == "back", "send/recv a table")
  t.is(a:recv(), nil, "nil through a pipe")
  t.ok(a:poll(5), "poll: something to read")
  t.is(a:recv_bytes(), "raw\0bytes", "send_bytes/recv_bytes")
  t.raises(function() a:recv() end, EOFError, nil, "EOFError when the other end closed")
  p:join(10)
  t.ok(math.type(a:fileno()) == "integer", "fileno")
  a:close()
  t.raises(function() a:recv() end, OSError, "closed", "recv on a closed connection")
  local r1, w1 = mp.Pipe(false)
  t.raises(function() r1:send(1) end, OSError, nil, "one-way pipe: the reader cannot send")
  w1:send("one way")
  t.is(r1:recv(), "one way", "one-way pipe")
  t.raises(function() w1:send(coroutine.create(print)) end, TypeError, nil, "unpicklable through a pipe")
  local big = string.rep("y", 3 << 20)
  local p2 = mp.Process{target = function() w1:send(big) end}
  p2:start()
  t.is(r1:recv(), big, "3 MiB through a pipe")
  p2:join(10)
end

-- Scalars cross a queue without a pickle string of their own (the
-- queue writes head and bytes straight into shared memory): every kind
-- and size boundary, there and back through a child.
do
  local mp = require "multiprocessing"
  local values = {
    {"nil", nil}, {"true", true}, {"false", false}, {"0", 0}, {"-1", -1},
    {"mininteger", math.mininteger}, {"maxinteger", math.maxinteger},
    {"float", 0.1}, {"-0.0", -0.0}, {"inf", math.huge}, {"-inf", -math.huge},
    {"1.0", 1.0}, {"empty string", ""}, {"31 bytes", string.rep("a", 31)},
    {"32 bytes", string.rep("b", 32)}, {"binary", "\0\1\255\0"},
    {"64 KiB", string.rep("c", 65536)}, {"127 KiB", string.rep("d", 130000)},
    {"129 KiB (streamed)", string.rep("e", 132000)}, {"1 MiB (streamed)", string.rep("f", 1 << 20)},
  }
  local there, back = mp.Queue(), mp.Queue()
  local p = mp.Process{target = function()
    for _ = 1, #values + 1 do back:put(there:get(true, 10)) end
  end}
  p:start()
  for _, v in ipairs(values) do there:put(v[2]) end
  there:put(0 / 0)
  for _, v in ipairs(values) do
    local got = back:get(true, 10)
    local same = got == v[2] and math.type(got) == math.type(v[2])
    if v[1] == "-0.0" then same = same and 1 / got == -math.huge end
    t.ok(same, "queue round trip: " .. v[1])
  end
  local nan = back:get(true, 10)
  t.ok(nan ~= nan, "queue round trip: nan")
  p:join(10)
  t.is(p.exitcode, 0, "the echoing child ended well")
end

-- A put never waits for a reader unless maxsize says so (CPython's
-- feeder thread buffers without bound): a ring nobody drains grows.
do
  local q = mp.Queue()
  q:put(string.rep("x", 1 << 20))
  t.is(#q:get(true, 5), 1 << 20, "1 MiB put then got in one process")
  for i = 1, 3000 do q:put_nowait(string.rep(string.char(65 + i % 26), 1000) .. i) end
  t.is(q:qsize(), 3000, "3000 KiB put_nowait with no reader: no queue.Full")
  local inorder = true
  for i = 1, 3000 do
    local v = q:get_nowait()
    if v ~= string.rep(string.char(65 + i % 26), 1000) .. i then inorder = false end
  end
  t.ok(inorder, "the backlog comes out whole and in order")
  t.ok(q:empty(), "and the queue is empty")
end

do   -- a child fills a queue and ends before anybody reads it
  local q = mp.Queue()
  local p = mp.Process{target = function()
    for i = 1, 2000 do q:put({i, string.rep("z", 1000)}) end
  end}
  p:start()
  p:join(10)
  t.is(p.exitcode, 0, "the child ended without waiting for a reader")
  local n, ok = 0, true
  while not q:empty() do
    n = n + 1
    local v = q:get_nowait()
    if v[1] ~= n or #v[2] ~= 1000 then ok = false end
  end
  t.is(n, 2000, "all 2000 items outlived their writer")
  t.ok(ok, "in order")
end

do   -- grown by one process, read by another that still maps the old size
  local q, done = mp.Queue(), mp.Queue()
  local p = mp.Process{target = function()
    local sum = 0
    for _ = 1, 40 do sum = sum + #q:get(true, 10) end
    done:put(sum)
    for i = 1, 3 do done:put(string.rep("w", 300000 * i)) end   -- grows 'done' here
  end}
  p:start()
  local big = 0
  for i = 1, 40 do local s = string.rep("y", 100000 + i) q:put(s) big = big + #s end
  t.is(done:get(true, 10), big, "a child reads a ring its parent grew (40 x 100 KB)")
  local lens = {}
  for i = 1, 3 do lens[i] = #done:get(true, 10) end
  t.is(table.concat(lens, " "), "300000 600000 900000", "a parent reads a ring its child grew")
  p:join(10)
  local copy = pickle.loads(pickle.dumps(q))   -- maps the grown file afresh
  copy:put("through the copy")
  t.is(q:get(true, 5), "through the copy", "a queue rebuilt after it grew")
end

do   -- a big backlog drained shrinks the ring; the queue goes on working
  local q = mp.Queue()
  local p = mp.Process{target = function()
    for i = 1, 5 do q:put(string.rep("s", 4 << 20) .. i) end
  end}
  p:start()
  p:join(10)
  for i = 1, 5 do t.is(q:get(true, 5):sub(-1), tostring(i), "20 MiB backlog, item " .. i) end
  local p2 = mp.Process{target = function() q:put("after the shrink") end}
  p2:start()
  t.is(q:get(true, 5), "after the shrink", "put by a process that mapped the big ring")
  p2:join(10)
  q:put(string.rep("a", 300000))
  t.is(#q:get(true, 5), 300000, "and it grows again")
end

do   -- maxsize counts items, not bytes
  local q = mp.Queue(2)
  q:put(string.rep("m", 200000))
  q:put_nowait(string.rep("n", 200000))
  t.raises(function() q:put_nowait("third") end, queue.Full, nil, "maxsize 2: the third put_nowait is queue.Full")
  t.raises(function() q:put("third", true, 0.05) end, queue.Full, nil, "and a put with a timeout too")
  t.is(#q:get() + #q:get(), 400000, "two 200 KB items in a 256 KiB ring")
end

do   -- stress: four writers, one slow reader, a ring growing under them
  local q, results = mp.Queue(), mp.Queue()
  local NP, NI = 4, 1000
  local producers = {}
  for p = 1, NP do
    producers[p] = mp.Process{target = function()
      math.randomseed(p * 7919)
      for i = 1, NI do
        local n = i % 250 == 0 and 300000 or math.random(0, 10000)
        q:put({p, i, string.rep(string.char(65 + (p + i) % 26), n)})
      end
    end}
    producers[p]:start()
  end
  local reader = mp.Process{target = function()
    local seen = 0
    while true do
      local v = q:get(true, 20)
      if v == nil then break end
      if #v[3] > 0 and v[3]:sub(1, 1) ~= string.char(65 + (v[1] + v[2]) % 26) then error("corrupt item") end
      seen = seen + 1
      if seen % 500 == 0 then time.sleep(0.05) end   -- slow: the ring must grow
      results:put(v[1] * 100000 + v[2])
    end
  end}
  reader:start()
  for p = 1, NP do producers[p]:join(60) end
  q:put(nil)
  local got, n, dup = {}, 0, false
  for _ = 1, NP * NI do
    local k = results:get(true, 30)
    if got[k] then dup = true end
    got[k] = true
    n = n + 1
  end
  reader:join(30)
  t.is(n, NP * NI, "4 writers x 1000 items of 0-300 KB, one slow reader: all arrive")
  t.ok(not dup, "none twice")
  t.is(reader.exitcode, 0, "and none damaged")
end

-- Under a limit on the address space a queue cannot reserve room to
-- grow: it still works, its puts wait for readers once the ring is full
-- (put_nowait: queue.Full).  (Sanitizers need more address space.)
if not os.getenv("MTLUA_SANITIZER") then
  local src = t.tmpname(".lua")
  local f = assert(io.open(src, "w"))
  f:write([[
    local mp, queue = require "multiprocessing", require "queue"
    local q = mp.Queue()
    local ok, e = pcall(function() for _ = 1, 400 do q:put_nowait(string.rep("x", 1000)) end end)
    local full, held = isinstance(e, queue.Full), q:qsize()
    local p = mp.Process{target = function() for i = 1, 500 do q:put(i) end end}
    p:start()
    local n = 0
    while n < held + 500 do q:get(true, 10); n = n + 1 end
    p:join(10)
    print(ok, full, held > 200, n, p.exitcode)
  ]])
  f:close()
  local out = t.tmpname()
  os.execute(("sh -c 'ulimit -v 400000; exec timeout -k 2 60 %s %s' >%s 2>&1"):format(t.mtlua, src, out))
  local r = io.open(out):read("a")
  os.remove(src); os.remove(out)
  t.like(r, "^false\ttrue\ttrue\t%d+\t0\n$", "a queue that cannot grow (ulimit -v): Full, then a full round trip")
end

t.done()
