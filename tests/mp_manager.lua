-- multiprocessing.Manager(): lifecycle, the objects it hands out, and
-- the dict/list/Namespace proxies from several processes, from pool
-- workers, and from a process that got them pickled.  Bounded waits.
local t = require "tests.tap"
local mp = require "multiprocessing"
local pickle = require "pickle"
local time = require "time"

local spawn = t.spawn_process

local join_all = t.join_processes

------------------------------------------------------------- lifecycle

do
  local m = mp.Manager()
  t.like(tostring(m), "started", "Manager(): started")
  t.raises(function() m:start() end, mp.ProcessError, "Already started", "start() twice")
  m:shutdown()
  t.like(tostring(m), "shutdown", "shutdown()")
  t.raises(function() m:dict() end, mp.ProcessError, "not started", "dict() after shutdown")
  m:shutdown()   -- twice is fine
  local sm = mp.SyncManager()
  t.raises(function() sm:list() end, mp.ProcessError, "not started", "SyncManager() needs start()")
  sm:start()
  t.ok(sm:list() ~= nil, "SyncManager():start()")
  sm:shutdown()
  t.raises(function() mp.Manager().dict({}) end, TypeError, "Manager", "m.dict() instead of m:dict()")
  local d
  do
    local m2 <close> = with(mp.Manager())
    d = m2:dict{ a = 1 }
    t.is(d.a, 1, "with(Manager()): a dict inside")
  end
  t.raises(function() return d.a end, ConnectionRefusedError, "shut down", "with(Manager()) shuts down on exit")
  t.raises(function() d.a = 2 end, ConnectionRefusedError, nil, "writes after shutdown raise too")
end

local m = mp.Manager()

------------------------------------------------------------------ dict

do
  local d = m:dict{ x = 1, y = "two" }
  t.is(d.x, 1, "dict: d[k]")
  t.is(d.missing, nil, "dict: absent key is nil")
  d.z = { 1, 2, 3 }
  t.is(#d, 3, "dict: #d")
  t.is(d:get("x"), 1, "dict: get")
  t.is(d:get("nope", 9), 9, "dict: get with default")
  local z = d.z
  z[1] = 100
  t.is(d.z[1], 1, "dict: values are copies (mutating one does not change the shared dict)")
  local keys = d:keys()
  table.sort(keys)
  t.is(table.concat(keys, ","), "x,y,z", "dict: keys")
  t.is(#d:values(), 3, "dict: values")
  local items = d:items()
  t.ok(#items == 3 and type(items[1]) == "table" and d[items[1][1]] ~= nil, "dict: items")
  local seen = 0
  for k, v in pairs(d) do if d:get(k) ~= nil then seen = seen + 1 end end
  t.is(seen, 3, "dict: pairs")
  t.is(d:pop("x"), 1, "dict: pop")
  t.is(d.x, nil, "dict: popped")
  t.is(d:pop("x", "dflt"), "dflt", "dict: pop with default")
  t.raises(function() d:pop("x") end, KeyError, nil, "dict: pop of a missing key")
  d:update{ a = 1, b = 2 }
  t.is(d.a + d.b, 3, "dict: update")
  local c = d:copy()
  t.ok(getmetatable(c) == nil and c.a == 1 and c.y == "two", "dict: copy() is a plain table")
  d.a = nil
  t.is(d.a, nil, "dict: d[k] = nil deletes")
  t.is(d:setdefault("s", 5), 5, "dict: setdefault")
  t.raises(function() d:update(3) end, TypeError, "update", "dict: update(3)")
  t.raises(function() d.co = coroutine.create(print) end, TypeError, "cannot pickle", "dict: an unpicklable value raises TypeError")
  t.is(d.s, 5, "dict: still usable after a failed write")
  t.like(tostring(d), "^<DictProxy object, typeid 'dict' at", "dict: tostring")
  d:clear()
  t.is(#d, 0, "dict: clear")
  -- big values grow the shared store
  d.big = ("x"):rep(100000)
  t.is(#d.big, 100000, "dict: a 100 KB value")
  local p = spawn(function() os.exit(#d.big == 100000 and 0 or 1) end)
  join_all({ p }, "dict: the grown store seen in a child")
  -- a store grown after a process mapped it: that process maps the new
  -- part when it next reads, and grows it further itself
  local g = m:dict()
  local go, back = mp.Queue(), mp.Queue()
  p = spawn(function()
    go:get{timeout = 10}
    local ok, err = pcall(function()
      assert(#g.big == 300000, "the parent's growth not seen")
      g.bigger = ("y"):rep(1000000)
    end)
    back:put(ok or tostring(err))
  end)
  g.big = ("x"):rep(300000)
  go:put(true)
  t.is(back:get{timeout = 20}, true, "dict: a store grown since the fork is read by the child")
  t.is(#g.bigger, 1000000, "dict: the child grew it further, the parent reads it")
  join_all({ p }, "dict: growing across processes")
  local again = pickle.loads(pickle.dumps(g))   -- mapped anew from /proc
  again.huge = ("z"):rep(2000000)
  t.is(#g.huge, 2000000, "dict: grown through another mapping of the same store")
  -- Only a store's data is mapped readable, not the whole range it may
  -- grow into: memory past the file's end faults when read, and what
  -- reads all of a process's memory (valgrind's leak check, a core
  -- dump) crawled through 256 MiB of it per store.
  local maps = assert(io.open("/proc/self/maps"))
  local readable = 0
  for line in maps:lines() do
    local lo, hi = line:match("^(%x+)-(%x+) r[w-]%-s .*mtlua%-sync")
    if lo then readable = readable + (tonumber(hi, 16) - tonumber(lo, 16)) end
  end
  maps:close()
  t.ok(readable > 0 and readable < 64 << 20,
       ("dict: shared stores map only their data readable (%d MiB)"):format(readable >> 20))
  -- 4 processes x 50 keys, and a counter under a shared Lock
  local shared = m:dict()
  local lock = m:Lock()
  shared.count = 0
  local ps = {}
  for i = 1, 4 do
    ps[i] = spawn(function()
      for j = 1, 50 do
        shared[i * 1000 + j] = j
        local _ <close> = with(lock)
        shared.count = shared.count + 1
      end
    end)
  end
  join_all(ps, "dict from 4 processes")
  t.is(#shared, 201, "dict: every key from 4 processes")
  t.is(shared.count, 200, "dict: read-modify-write under the manager's Lock: exact")
end

------------------------------------------------------------------ list

do
  local l = m:list{ 1, 2, 3 }
  t.is(#l, 3, "list: #l")
  t.is(l[1], 1, "list: l[1]")
  t.is(l[4], nil, "list: l[n+1] is nil")
  l[2] = "b"
  t.is(l[2], "b", "list: l[i] = v")
  t.raises(function() l[5] = 1 end, IndexError, nil, "list: l[n+2] = v")
  t.raises(function() l.x = 1 end, TypeError, "integers", "list: l.x = v")
  l:append(nil)
  t.is(#l, 4, "list: append(nil) keeps the hole")
  l:extend{ 5, 6 }
  t.is(#l, 6, "list: extend")
  t.is(l:pop(), 6, "list: pop")
  t.is(l:pop(1), 1, "list: pop(1)")
  t.is(l[1], "b", "list: shifted after pop(1)")
  l:insert(1, "a")
  t.is(l[1], "a", "list: insert")
  t.is(l:index(3), 3, "list: index")
  l:remove(3)
  t.is(l:count(3), 0, "list: remove, count")
  local n = 0
  for i, v in ipairs(m:list{ "p", "q", "r" }) do n = i end
  t.is(n, 3, "list: ipairs")
  local c = l:copy()
  t.ok(getmetatable(c) == nil and c.n == #l and c[1] == "a", "list: copy() is a plain table with .n")
  local e = m:list()
  t.raises(function() e:pop() end, IndexError, "empty", "list: pop from empty")
  local s = m:list{ 3, 1, 2 }
  s:sort()
  t.is(table.concat(s:copy(), ","), "1,2,3", "list: sort")
  t.like(tostring(s), "typeid 'list'", "list: tostring")
  -- appends from 4 processes
  local all = m:list()
  local ps = {}
  for i = 1, 4 do
    ps[i] = spawn(function() for j = 1, 25 do all:append(i * 100 + j) end end)
  end
  join_all(ps, "list from 4 processes")
  t.is(#all, 100, "list: 4 x 25 appends, none lost")
end

------------------------------------------------------------- Namespace

do
  local ns = m:Namespace{ x = 1 }
  ns.y = "why"
  t.is(ns.x, 1, "Namespace: field from the initial table")
  local p = spawn(function()
    if ns.y ~= "why" then os.exit(1) end
    ns.z = ns.x + 41
  end)
  join_all({ p }, "Namespace")
  t.is(ns.z, 42, "Namespace: set in one process, read in another")
  t.is(tostring(ns), "Namespace(x=1, y='why', z=42)", "Namespace: tostring")
  ns.x = nil
  t.is(ns.x, nil, "Namespace: a field set to nil is gone")
end

--------------------------------------------------- the shared objects

do
  local q, jq = m:Queue(), m:JoinableQueue()
  t.ok(isinstance(q, mp.Queue) and isinstance(jq, mp.JoinableQueue), "Manager: Queue, JoinableQueue")
  t.ok(isinstance(m:Lock(), mp.Lock) and isinstance(m:RLock(), mp.RLock), "Manager: Lock, RLock")
  t.ok(isinstance(m:Semaphore(2), mp.Semaphore), "Manager: Semaphore")
  t.ok(isinstance(m:BoundedSemaphore(2), mp.BoundedSemaphore), "Manager: BoundedSemaphore")
  t.ok(isinstance(m:Condition(), mp.Condition) and isinstance(m:Event(), mp.Event), "Manager: Condition, Event")
  t.is(m:Barrier(2).parties, 2, "Manager: Barrier")
  local v, a = m:Value("i", 3), m:Array("d", { 1, 2 })
  t.ok(v.value == 3 and a[2] == 2.0, "Manager: Value, Array")
  local ev = m:Event()
  local p = spawn(function() q:put("from child"); ev:set() end)
  t.is(q:get{timeout = 10}, "from child", "Manager: Queue across processes")
  t.ok(ev:wait(10), "Manager: Event across processes")
  join_all({ p }, "Manager queue")
end

-------------------------------------- passing proxies to running processes

do
  local inbox, outbox = mp.Queue(), mp.Queue()
  local p = spawn(function()   -- started before the proxies exist
    local d, l, ns = table.unpack(inbox:get{timeout = 10})
    d.from_child = true
    l:append("child")
    ns.seen = getmetatable(d).__name__ .. "," .. getmetatable(l).__name__
    outbox:put("done")
  end)
  local d, l, ns = m:dict(), m:list(), m:Namespace()
  inbox:put({ d, l, ns })
  t.is(outbox:get{timeout = 10}, "done", "passed: proxies through a queue")
  t.is(d.from_child, true, "passed: dict written by the receiver")
  t.is(l[1], "child", "passed: list written by the receiver")
  t.is(ns.seen, "DictProxy,ListProxy", "passed: they arrive as proxies")
  join_all({ p }, "passing proxies")
  local back = pickle.loads(pickle.dumps(d))
  back.k = "v"
  t.is(d.k, "v", "passed: a pickled proxy is the same dict")
end

------------------------------------------------------------ pool workers

do
  local ok_pool, pool = pcall(require, "pool")
  if not ok_pool then
    t.ok(true, "pool not available: skipped")
  else
    local q = mp.Manager():Queue()   -- as in the notes
    local d = m:dict()
    local l = m:list()
    local po = pool.Pool(2)
    local res = po:map(function(i)
      q:put(i * 10)
      d[i] = i * i
      l:append(i)
      return i
    end, { 1, 2, 3, 4, 5, 6 })
    po:close()
    po:join()
    local sum = 0
    for _ = 1, 6 do sum = sum + q:get{timeout = 10} end
    t.is(#res, 6, "pool: map over the proxies ran")
    t.is(sum, 210, "pool: Manager():Queue() filled by pool workers")
    t.is(d[6], 36, "pool: dict written by pool workers")
    t.is(#l, 6, "pool: list appended by pool workers")
  end
end

m:shutdown()

do   -- the demo script
  local out, err, status = t.run("scripts/mp_manager.lua", 30)
  t.is(out, "squares:\t1 4 9 16\nlist length:\t4\nnamespace:\twritten by worker 1\ncounter:\t4000\n",
    "scripts/mp_manager.lua output")
  t.is(err, "", "scripts/mp_manager.lua: nothing on stderr")
end

t.done()
