-- queue: Queue, LifoQueue, PriorityQueue, SimpleQueue; their methods,
-- argument forms and exceptions, in one thread and with real threads.
local t = require "tests.tap"
local queue = require "queue"
local threading = require "threading"
local time = require "time"
local sleep, now = time.sleep, time.monotonic
local Queue, LifoQueue, PriorityQueue, SimpleQueue =
  queue.Queue, queue.LifoQueue, queue.PriorityQueue, queue.SimpleQueue

local function spawn(f, ...)
  local th = threading.Thread{target=f, args=table.pack(...)}
  th:start()
  return th
end

local function elapsed(f, ...)
  local t0 = now()
  local ok, e = pcall(f, ...)
  return now() - t0, ok, e
end

local function drain(q)
  local out = {}
  while not q:empty() do out[#out + 1] = tostring(q:get()) end
  return table.concat(out, " ")
end

-- exceptions ----------------------------------------------------------------
do
  for _, name in ipairs{"Empty", "Full", "ShutDown"} do
    local E = queue[name]
    t.ok(issubclass(E, Exception), "queue." .. name .. " is an Exception")
    t.is(tostring(E()), "queue." .. name, "tostring of a bare queue." .. name)
    t.is(tostring(E("why")), "queue." .. name .. ": why", "tostring with a message")
  end
  t.ok(not issubclass(queue.Empty, queue.Full), "Empty and Full are distinct")
end

-- order, sizes, nil ---------------------------------------------------------
do
  local q = Queue()
  t.is(q.maxsize, 0, "Queue() is unbounded (maxsize 0)")
  t.ok(q:empty() and not q:full() and q:qsize() == 0, "a new queue is empty")
  for i = 1, 20 do q:put(i) end   -- past the ring's first capacity
  t.is(q:get(), 1, "FIFO: first in...")
  for i = 21, 40 do q:put(i) end  -- wraps, then grows while wrapped
  local ok = true
  for i = 2, 40 do ok = ok and q:get() == i end
  t.ok(ok and q:empty(), "FIFO order kept across wrap-around and growth")

  local l = LifoQueue()
  for i = 1, 5 do l:put(i) end
  t.is(drain(l), "5 4 3 2 1", "LIFO order")

  local p = PriorityQueue()
  for _, v in ipairs{5, 3, 9, 1, 7, 3, 2, 8, 6, 4, 0} do p:put(v) end
  t.is(drain(p), "0 1 2 3 3 4 5 6 7 8 9", "PriorityQueue: smallest first")
  p = PriorityQueue()
  for _, s in ipairs{"pear", "apple", "fig"} do p:put(s) end
  t.is(drain(p), "apple fig pear", "PriorityQueue of strings")
  p = PriorityQueue()
  p:put(2.5) p:put(1) p:put(2)
  t.is(drain(p), "1 2 2.5", "integers and floats compare together")

  local s = SimpleQueue()
  for i = 1, 3 do s:put(i) end
  t.is(s:qsize(), 3, "SimpleQueue qsize")
  t.is(drain(s), "1 2 3", "SimpleQueue FIFO order")

  for _, Q in ipairs{Queue, LifoQueue, SimpleQueue} do
    local nq = Q()
    nq:put(nil) nq:put(1) nq:put(nil)
    t.is(nq:qsize(), 3, Q.__name__ .. ": nil items are counted by qsize")
    local n, nils = 0, 0
    while not nq:empty() do
      local v = nq:get()
      n = n + 1
      if v == nil then nils = nils + 1 end
    end
    t.ok(n == 3 and nils == 2, Q.__name__ .. ": nil items come back as nil")
  end
  local nq = Queue()
  nq:put(nil)
  t.is(select("#", nq:get()), 1, "get of a nil item returns one value")
end

-- PriorityQueue: tuples, equal priorities, bad items --------------------------
do
  local p = PriorityQueue()
  p:put{2, "b"} p:put{1, "z"} p:put{2, "a"} p:put{1, "y"} p:put{0, "first"}
  local out = {}
  while not p:empty() do local x = p:get() out[#out + 1] = x[1] .. x[2] end
  t.is(table.concat(out, " "), "0first 1y 1z 2a 2b",
       "{prio, data}: equal priorities fall to the next element")
  p = PriorityQueue()
  p:put{1, 2} p:put{1} p:put{1, 1, 1}
  out = {}
  while not p:empty() do out[#out + 1] = #p:get() end
  t.is(table.concat(out, ","), "1,3,2", "a prefix sorts before the longer array")
  p = PriorityQueue()
  p:put{1, {2, "b"}} p:put{1, {2, "a"}} p:put{1, {1, "c"}}
  out = {}
  while not p:empty() do out[#out + 1] = p:get()[2][2] end
  t.is(table.concat(out), "cab", "nested arrays compare element-wise too")

  p = PriorityQueue()
  p:put(1)
  t.raises(function() p:put("x") end, TypeError,
           "'<' not supported between instances of 'string' and 'number'", "number vs string")
  t.raises(function() p:put(true) end, TypeError, "boolean", "booleans do not compare")
  t.raises(function() p:put{1} end, TypeError, nil, "a table against a number")
  t.is(p:qsize(), 1, "a failed put leaves the queue unchanged")
  t.is(p:get(), 1, "...and usable")
  p:put{1, true}
  t.raises(function() p:put{1, false} end, TypeError, nil, "tuple elements that do not compare")

  local C = class("C")
  function C.__lt(a, b)
    if a.v == "bad" or b.v == "bad" then error("boom") end
    return a.v < b.v
  end
  local function c(v) return setmetatable({v = v}, C) end
  p = PriorityQueue()
  for i = 20, 1, -1 do p:put(c(i)) end
  local ok = pcall(p.put, p, c("bad"))
  t.ok(not ok and p:qsize() == 20, "an __lt that errors: put fails, heap unchanged")
  out = {}
  while not p:empty() do out[#out + 1] = p:get().v end
  t.is(table.concat(out, " "), "1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20",
       "the heap is still ordered after the failed put")
  -- a get whose comparisons fail leaves the heap whole as well: items
  -- put in order sit in order, so the last one (4) is the one that sinks
  p = PriorityQueue()
  local four = c(4)
  p:put(c(1)) p:put(c(2)) p:put(c(3)) p:put(four)
  four.v = "bad"
  ok = pcall(p.get, p)
  t.ok(not ok and p:qsize() == 4, "an __lt that errors: get fails, heap unchanged")
  four.v = 4
  out = {}
  while not p:empty() do out[#out + 1] = p:get().v end
  t.is(table.concat(out, " "), "1 2 3 4", "the heap is still whole after the failed get")
  local D = class("D")
  t.raises(function() local z = PriorityQueue() z:put(D()) z:put(D()) end, TypeError,
           "instances of 'D' and 'D'", "instances without __lt raise TypeError naming the class")
end

-- argument forms and bad input ----------------------------------------------
do
  t.raises(function() Queue("x") end, TypeError, "maxsize", "Queue('x')")
  t.raises(function() Queue(0 / 0) end, ValueError, nil, "Queue(NaN)")
  local neg = Queue(-1)
  for i = 1, 100 do neg:put(i) end
  t.ok(not neg:full() and neg:qsize() == 100, "Queue(-1) is unbounded")
  t.is(Queue{maxsize = 2}.maxsize, 2, "Queue{maxsize=2}")
  t.is(Queue{3}.maxsize, 3, "Queue{3}")
  t.raises(function() SimpleQueue(3) end, TypeError, nil, "SimpleQueue takes no arguments")

  local q = Queue(1)
  t.raises(function() q:put() end, TypeError, "missing", "put() without an item")
  t.raises(function() q:put_nowait() end, TypeError, "missing", "put_nowait() without an item")
  t.raises(function() q:put(1, true, -1) end, ValueError,
           "'timeout' must be a non%-negative number", "put: negative timeout")
  t.raises(function() q:get(true, -0.5) end, ValueError, "non%-negative", "get: negative timeout")
  t.raises(function() q:get{timeout = -1} end, ValueError, nil, "get{timeout=-1}")
  t.raises(function() q:get(true, "soon") end, TypeError, "get%(%) argument 'timeout'",
           "get: timeout of the wrong type")
  t.raises(function() q:put(1, {timeout = {}}) end, TypeError, "put%(%) argument 'timeout'",
           "put: timeout of the wrong type")
  t.raises(function() Queue.get(42) end, TypeError, "Queue object", "a method called with '.'")
  t.raises(function() q:task_done() end, ValueError, "too many times", "task_done too often")

  q:put("a")
  t.ok(q:full(), "full() at maxsize")
  t.raises(function() q:put_nowait("b") end, queue.Full, nil, "put_nowait on a full queue")
  t.raises(function() q:put("b", false) end, queue.Full, nil, "put(x, false)")
  t.raises(function() q:put("b", {block = false}) end, queue.Full, nil, "put(x, {block=false})")
  t.raises(function() q:put("b", false, 5) end, queue.Full, nil, "block=false ignores timeout")
  local dt, ok, e = elapsed(q.put, q, "b", {timeout = 0.1})
  t.ok(not ok and isinstance(e, queue.Full), "put{timeout=} on a full queue raises Full")
  t.ok(dt >= 0.09 and dt < 1.0, "...after about its timeout")
  dt, ok, e = elapsed(q.put, q, "b", true, 0)
  t.ok(not ok and isinstance(e, queue.Full) and dt < 0.5, "put with timeout 0 fails at once")
  t.is(q:qsize(), 1, "qsize unchanged by failed puts")
  t.is(q:get(), "a", "get")
  t.raises(function() q:get_nowait() end, queue.Empty, nil, "get_nowait on an empty queue")
  t.raises(function() q:get(false) end, queue.Empty, nil, "get(false)")
  t.raises(function() q:get{block = false} end, queue.Empty, nil, "get{block=false}")
  t.raises(function() q:get{false} end, queue.Empty, nil, "get{false}: the Python-call form")
  t.raises(function() q:get{true, -1} end, ValueError, nil, "get{true, -1}")
  dt, ok, e = elapsed(q.get, q, {true, 0.05})
  t.ok(not ok and isinstance(e, queue.Empty) and dt >= 0.04 and dt < 1.0, "get{true, 0.05}")
  dt, ok, e = elapsed(q.get, q, true, 0.1)
  t.ok(not ok and isinstance(e, queue.Empty) and dt >= 0.09 and dt < 1.0,
       "get(true, 0.1) raises Empty after about 0.1 s")
  dt, ok, e = elapsed(q.get, q, {timeout = 0.05})
  t.ok(not ok and isinstance(e, queue.Empty) and dt >= 0.04 and dt < 1.0, "get{timeout=0.05}")
  q:put_nowait(7)
  t.is(q:get_nowait(), 7, "put_nowait / get_nowait")
  q:put(8)
  t.is(q:get(true, nil), 8, "get(true, nil): nil timeout is no timeout")
end

-- maxsize: blocking and unblocking --------------------------------------------
do
  local q = Queue(2)
  q:put(1) q:put(2)
  local th = spawn(function() sleep(0.1); q:get() end)
  local dt, ok = elapsed(q.put, q, 3, {timeout = 5})
  t.ok(ok and dt >= 0.05 and dt < 4, "a blocked put resumes when a get makes room")
  th:join(5)
  t.is(drain(q), "2 3", "and the item went in behind the others")

  local got
  th = spawn(function() got = q:get{timeout = 5} end)
  sleep(0.05)
  t.ok(th:is_alive(), "get waits on an empty queue")
  q:put("late")
  th:join(5)
  t.is(got, "late", "a blocked get receives the next put")

  -- several blocked putters all get through as room appears
  q = Queue(1)
  q:put(0)
  local putters = {}
  for i = 1, 4 do putters[i] = spawn(function() q:put(i, {timeout = 5}) end) end
  local seen = {}
  for _ = 1, 5 do seen[#seen + 1] = q:get{timeout = 5} end
  for _, p in ipairs(putters) do p:join(5) end
  table.sort(seen)
  t.is(table.concat(seen, ","), "0,1,2,3,4", "four blocked putters, none lost")

  -- a blocked get with a timeout that expires gives its turn to others
  q = Queue()
  local r1, r2
  local a = spawn(function() r1 = select(2, pcall(q.get, q, {timeout = 0.05})) end)
  local b = spawn(function() r2 = q:get{timeout = 5} end)
  sleep(0.15)
  q:put("x")
  a:join(5) b:join(5)
  t.ok(isinstance(r1, queue.Empty) and r2 == "x", "timed-out getter does not swallow a put")
end

-- a getter parked on an empty ring while puts grow it finds every item
-- (regression: the ring used to be replaced by a bigger table, and the
-- parked getter read the old one)
do
  local q = Queue()
  for i = 1, 5 do q:put(i); q:get() end     -- the ring's head is now mid-table
  local got = {}
  local th = spawn(function()
    for i = 1, 50 do got[i] = q:get{timeout = 5} end
  end)
  sleep(0.05)                               -- the getter is parked
  for i = 1, 50 do q:put(i) end             -- grows 8 -> 64 while it is
  th:join(10)
  local ok = #got == 50
  for i = 1, 50 do ok = ok and got[i] == i end
  t.ok(ok, "a parked getter sees every item, in order, after the ring grew")
end

-- task_done / join ------------------------------------------------------------
do
  local q = Queue()
  q:join()
  t.ok(true, "join on a queue with no tasks returns at once")
  for i = 1, 5 do q:put(i) end
  local done = 0
  local worker = spawn(function()
    for _ = 1, 5 do q:get(); sleep(0.01); done = done + 1; q:task_done() end
  end)
  local joined = spawn(function() q:join() end)
  joined:join(5)
  t.ok(not joined:is_alive() and done == 5, "join returns only after every task_done")
  worker:join(5)
  t.raises(function() q:task_done() end, ValueError, nil, "one more task_done is too many")
end

-- shutdown ----------------------------------------------------------------------
do
  local q = Queue()
  q:put(1) q:put(2)
  q:shutdown()
  t.raises(function() q:put(3) end, queue.ShutDown, nil, "put after shutdown")
  t.raises(function() q:put_nowait(3) end, queue.ShutDown, nil, "put_nowait after shutdown")
  t.is(q:get(), 1, "items put before shutdown are still gotten")
  t.is(q:get_nowait(), 2, "...all of them")
  t.raises(function() q:get() end, queue.ShutDown, nil, "get on a shut-down empty queue")
  t.raises(function() q:get(false) end, queue.ShutDown, nil, "get(false) too")

  q = Queue()
  local err
  local th = spawn(function() err = select(2, pcall(q.get, q, {timeout = 5})) end)
  sleep(0.05)
  q:shutdown()
  th:join(5)
  t.ok(isinstance(err, queue.ShutDown), "shutdown wakes a blocked getter with ShutDown")

  q = Queue(1)
  q:put(1)
  th = spawn(function() err = select(2, pcall(q.put, q, 2, {timeout = 5})) end)
  sleep(0.05)
  q:shutdown()
  th:join(5)
  t.ok(isinstance(err, queue.ShutDown), "shutdown wakes a blocked putter with ShutDown")

  q = Queue()
  for i = 1, 3 do q:put(i) end
  local joiner = spawn(function() q:join() end)
  sleep(0.05)
  q:shutdown{immediate = true}
  joiner:join(5)
  t.ok(not joiner:is_alive(), "shutdown{immediate=true} releases join")
  t.is(q:qsize(), 0, "...and drops the items")
  t.raises(function() q:get() end, queue.ShutDown, nil, "get after an immediate shutdown")
  local p = PriorityQueue()
  p:put(2) p:put(1)
  p:shutdown(true)
  t.ok(p:empty(), "shutdown(true) empties a PriorityQueue")
  -- the dropped items are released (a weak table sees them collected),
  -- also from a ring that wrapped around and grew
  for _, Q in ipairs{Queue, SimpleQueue, LifoQueue} do
    local rq, alive = Q(), setmetatable({}, {__mode = "k"})
    local function item() local x = {} alive[x] = true return x end
    for _ = 1, 12 do rq:put(item()) end
    for _ = 1, 5 do rq:get() end
    for _ = 1, 8 do rq:put(item()) end
    Queue.shutdown(rq, true)   -- SimpleQueue has none of its own: Queue's works on it
    collectgarbage() collectgarbage()
    t.ok(rq:empty() and next(alive) == nil, Q.__name__ .. ": an immediate shutdown releases every item")
    t.raises(function() rq:get_nowait() end, queue.ShutDown, nil, Q.__name__ .. ": then get raises ShutDown")
  end
  local l = LifoQueue()
  l:put(1)
  l:shutdown{true}
  t.ok(l:empty(), "shutdown{true}: the Python-call form")
  l = LifoQueue()
  l:put(1)
  l:shutdown{}
  t.is(l:get(), 1, "shutdown{} is not immediate")
end

-- 4 producers x 4 consumers x 50,000 items --------------------------------------
do
  local N, P = 50000, 4
  local q = Queue(100)
  local got = {}   -- per consumer: a shared counter would lose updates
  local producers, consumers = {}, {}
  for p = 1, P do
    producers[p] = spawn(function()
      for i = 1, N do q:put((p - 1) * N + i, {timeout = 20}) end
    end)
  end
  for c = 1, P do
    consumers[c] = spawn(function()
      local mine = {}
      while true do
        local v = q:get{timeout = 20}
        if v == nil then break end
        mine[#mine + 1] = v
      end
      got[c] = mine
    end)
  end
  for _, th in ipairs(producers) do th:join(30) end
  for _ = 1, P do q:put(nil) end     -- one nil sentinel per consumer
  for _, th in ipairs(consumers) do th:join(30) end
  local seen, dup, total, missing = {}, 0, 0, 0
  for c = 1, P do
    for _, v in ipairs(got[c] or {}) do
      if seen[v] then dup = dup + 1 end
      seen[v] = true
      total = total + 1
    end
  end
  for i = 1, P * N do if not seen[i] then missing = missing + 1 end end
  t.is(total, P * N, "4x4 threads: every item received")
  t.ok(dup == 0 and missing == 0, "4x4 threads: none lost or duplicated")
  t.ok(q:empty(), "4x4 threads: queue empty at the end")
end

-- the same stress on a PriorityQueue and a LifoQueue (order not checked)
for _, Q in ipairs{PriorityQueue, LifoQueue} do
  local q, N = Q(50), 5000
  local sums = {}
  local th = {}
  for _ = 1, 2 do th[#th + 1] = spawn(function() for i = 1, N do q:put(i) end end) end
  for c = 1, 2 do
    th[#th + 1] = spawn(function()
      local sum = 0
      for _ = 1, N do sum = sum + q:get{timeout = 20} end
      sums[c] = sum
    end)
  end
  for _, x in ipairs(th) do x:join(30) end
  t.is((sums[1] or 0) + (sums[2] or 0), N * (N + 1), Q.__name__ .. ": 2x2 threads, every item once")
end

-- subclassing -------------------------------------------------------------------
do
  local Counting = class("Counting", Queue)
  function Counting:__init__(n)
    Queue.__init__(self, n)
    self.puts = 0
  end
  function Counting:put(item, ...)
    self.puts = self.puts + 1
    return Queue.put(self, item, ...)
  end
  local q = Counting(2)
  q:put("a") q:put("b")
  t.ok(isinstance(q, Queue) and q.puts == 2 and q:full(), "a Queue subclass works")
  t.is(tostring(q):match("^<(%S+)"), "__main__.Counting", "tostring names a subclass as Python does")
  t.like(tostring(Queue()), "^<queue%.Queue object at ", "tostring(Queue())")
  t.ok(isinstance(LifoQueue(), Queue) and isinstance(PriorityQueue(), Queue),
       "LifoQueue and PriorityQueue are Queues")
end

-- Ctrl-C interrupts a main thread blocked in get -------------------------------
-- (the kill comes from a background shell: system() ignores SIGINT in the
-- process that called it while its child runs)

-- Runs a script; returns stdout, stderr and the status as a shell shows
-- it (128 + N for death by signal N: mtlua, like CPython, ends an
-- uncaught KeyboardInterrupt by dying of SIGINT).
local function run_child(src)
  local path, out, err = os.tmpname(), os.tmpname(), os.tmpname()
  local f = assert(io.open(path, "w"))
  f:write(src)
  f:close()
  local _, kind, code = os.execute(("timeout -k 2 20 %s %s >%s 2>%s </dev/null"):format(
    t.mtlua, path, out, err))
  local function slurp(p)
    local h = io.open(p, "rb")
    local text = h and h:read("a") or ""
    if h then h:close() end
    os.remove(p)
    return text
  end
  os.remove(path)
  return slurp(out), slurp(err), kind == "signal" and 128 + code or code
end

do
  local o, e, status = run_child([[
    local queue = require "queue"
    local threading = require "threading"
    local q = queue.Queue()
    os.execute("(sleep 0.3; kill -INT " .. os.getpid() .. ") &")
    print("waiting")
    io.stdout:flush()
    q:get()
    print("not reached")
  ]])
  t.is(status, 130, "SIGINT during q:get() exits with status 130")
  t.like(e, "KeyboardInterrupt", "...reporting KeyboardInterrupt")
  t.is(o, "waiting\n", "...without returning from get")
  o, e, status = run_child([[
    local queue = require "queue"
    local threading = require "threading"
    local q = queue.Queue(1)
    q:put(1)
    os.execute("(sleep 0.3; kill -INT " .. os.getpid() .. ") &")
    local ok, e = pcall(q.put, q, 2)
    print(isinstance(e, KeyboardInterrupt), q:qsize())
    local ok2, e2 = pcall(q.get, q, {timeout = 0.05})
    print(ok2, e2)
  ]])
  t.is(o, "true\t1\ntrue\t1\n", "a blocked put raises KeyboardInterrupt and the queue stays usable")
  o, e, status = run_child([[
    local q = require("queue").Queue()
    q:put("task")
    os.execute("(sleep 0.3; kill -INT " .. os.getpid() .. ") &")
    local ok, e = pcall(q.join, q)
    print(isinstance(e, KeyboardInterrupt))
  ]])
  t.is(o, "true\n", "Ctrl-C interrupts join() too")
end

t.done()
