-- pool: the API of Pool and ThreadPool (SPEC §7).
local t = require "tests.tap"
local pool = require "pool"
local Pool, ThreadPool = pool.Pool, pool.ThreadPool
local sleep = require("time").sleep

local function square(x) return x * x end
-- classes must exist before the workers are forked to travel by name
local MyErrors = { Pool = class("PoolMyError", ValueError), ThreadPool = class("ThreadPoolMyError", ValueError) }

for _, kind in ipairs { "Pool", "ThreadPool" } do
  local P = pool[kind]
  local p = P(3)
  local tag = kind .. ": "

  -- apply / apply_async, both calling forms, kwds appended
  t.is(p:apply(function(a, b) return a + b end, { 2, 3 }), 5, tag .. "apply returns the result")
  t.is(p:apply(function(a, kw) return a .. kw.sep end, { "x" }, { sep = "!" }), "x!", tag .. "kwds come as one table after args")
  local r = p:apply_async(square, { 7 })
  t.is(r:get(10), 49, tag .. "apply_async():get()")
  t.ok(r:ready() and r:successful(), tag .. "ready and successful")
  local got
  local r2 = p:apply_async{ square, { 9 }, callback = function(v) got = v end }
  t.is(r2:get(10), 81, tag .. "apply_async{...} Python-call form")
  t.is(got, 81, tag .. "callback ran before get returned")
  local nilr = p:apply_async(function() return nil end)
  t.is(nilr:get(10), nil, tag .. "nil result")

  -- a closure defined after the pool was made, with upvalues
  local base = 100
  local add = function(x) return x + base end
  t.is(p:apply(add, { 1 }), 101, tag .. "closure made after the pool")

  -- map / starmap / chunksize / .n / nil results / iterator input
  local m = p:map(square, { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10 })
  t.is(table.concat(m, ","), "1,4,9,16,25,36,49,64,81,100", tag .. "map in order")
  t.is(m.n, 10, tag .. "map result has .n")
  local m2 = p:map(function(x) if x % 2 == 0 then return nil end return x end, { 1, 2, 3, 4, 5 }, 2)
  t.ok(m2.n == 5 and m2[1] == 1 and m2[2] == nil and m2[5] == 5, tag .. "nil results kept, chunksize")
  local i = 0
  local m3 = p:map(square, function() i = i + 1; if i <= 4 then return i end end)
  t.is(table.concat(m3, ","), "1,4,9,16", tag .. "map over an iterator function")
  t.is(p:map(square, {}).n, 0, tag .. "map of nothing")
  local sm = p:starmap(function(a, b) return a * b end, { { 1, 2 }, { 3, 4 }, { 5, 6 } })
  t.is(table.concat(sm, ","), "2,12,30", tag .. "starmap")
  local sma = p:starmap_async(function(a, b) return a - b end, { { 5, 1 }, { 9, 3 } })
  t.is(table.concat(sma:get(10), ","), "4,6", tag .. "starmap_async")
  local mcb
  local ma = p:map_async(square, { 3, 4 }, nil, function(v) mcb = v end)
  t.is(table.concat(ma:get(10), ","), "9,16", tag .. "map_async")
  t.ok(mcb ~= nil and mcb[2] == 16, tag .. "map_async callback got the list")

  -- map chunks of every kind of value: packed numbers, booleans and nil,
  -- a chunk whose results stop being packable midway, tables and strings
  local mixed = p:map(function(x)
    if x % 4 == 0 then return nil elseif x % 4 == 1 then return x + 0.5 elseif x % 4 == 2 then return x > 5 end
    return math.mininteger + x
  end, { 1, 2, 3, 4, 5, 6, 7, 8 }, 8)
  t.ok(mixed.n == 8 and mixed[1] == 1.5 and math.type(mixed[1]) == "float" and mixed[2] == false
    and mixed[3] == math.mininteger + 3 and mixed[4] == nil and mixed[6] == true and mixed[8] == nil,
    tag .. "map: floats, integers, booleans and nil kept exactly")
  local spill = p:map(function(x) if x > 3 then return "s" .. x end return x end, { 1, 2, 3, 4, 5, 6 }, 6)
  t.is(table.concat(spill, ","), "1,2,3,s4,s5,s6", tag .. "map: results that stop being numbers midway")
  local tabs = p:map(function(v) return { v.a * 2 } end, { { a = 1 }, { a = 2 }, { a = 3 } })
  t.ok(tabs[1][1] == 2 and tabs[3][1] == 6, tag .. "map over tables returning tables")
  local strs = p:map(string.upper, { "a", "b", "c" })
  t.is(table.concat(strs), "ABC", tag .. "map of a C function over strings")
  local ext = { math.mininteger, math.maxinteger, -1, 0, 7, n = 5 }
  local me = p:map(function(x) return x end, ext, 2)
  t.ok(me.n == 5 and me[1] == math.mininteger and me[2] == math.maxinteger and me[3] == -1 and me[5] == 7,
    tag .. "map: extreme integers kept exactly")
  local nanr = p:map(function(x) if x == 2 then return 0 / 0 end return x end, { 1, 2, 3 }, 3)
  t.ok(nanr[2] ~= nanr[2] and math.type(nanr[1]) == "integer" and nanr[3] == 3, tag .. "map: nan among integers")
  local holes = p:map(function(x) return x end, table.pack(1, nil, 3))
  t.ok(holes.n == 3 and holes[1] == 1 and holes[2] == nil and holes[3] == 3, tag .. "map input with a nil hole (.n)")
  local big = {}
  for k = 1, 30000 do big[k] = k end
  local bm = p:map(function(x) return x * 3 end, big)
  local good = bm.n == 30000
  for k = 1, 30000 do if bm[k] ~= 3 * k then good = false break end end
  t.ok(good, tag .. "map over 30,000 integers")
  local bs = p:map(function(x) return ("x"):rep(x % 50) end, big)
  t.ok(bs.n == 30000 and bs[49] == ("x"):rep(49) and bs[30000] == "", tag .. "map of 30,000 strings")
  local huge = p:apply(function(n) return ("y"):rep(n) .. "z" end, { 3000000 })
  t.ok(#huge == 3000001 and huge:sub(-2) == "yz", tag .. "a 3 MB result (streams through the result ring)")

  -- imap in order, imap_unordered complete
  local seq = {}
  for pos, v in p:imap(function(x) sleep((5 - x) * 0.01) return x * 10 end, { 1, 2, 3, 4 }) do
    seq[#seq + 1] = pos .. "=" .. v
  end
  t.is(table.concat(seq, " "), "1=10 2=20 3=30 4=40", tag .. "imap yields in order")
  local seen, count = {}, 0
  for pos, v in p:imap_unordered(square, { 1, 2, 3, 4, 5, 6 }, 2) do
    seen[pos] = v
    count = count + 1
  end
  t.ok(count == 6 and seen[6] == 36 and seen[1] == 1, tag .. "imap_unordered yields all")
  local holes = {}
  for pos, v in p:imap(function(x) if x ~= 2 then return x end end, { 1, 2, 3 }) do holes[#holes + 1] = pos end
  t.is(table.concat(holes, ","), "1,2,3", tag .. "imap goes past nil results")

  -- imap reads its input lazily, with a bounded read-ahead: an endless
  -- iterator works, and only a window of it is read
  local pulled = 0
  local endless = function() pulled = pulled + 1; return pulled end
  local got, last = 0, 0
  for pos, v in p:imap(function(x) return x * 2 end, endless) do
    if v ~= pos * 2 then break end
    got, last = got + 1, pos
    if got == 1000 then break end
  end
  t.ok(got == 1000 and last == 1000, tag .. "imap over an endless iterator, in order")
  t.ok(pulled <= 1000 + 300, tag .. "with a bounded read-ahead (" .. pulled .. " items read)")
  pulled = 0
  local ucount = 0
  for _ in p:imap_unordered(function(x) return x end, endless, 4) do
    ucount = ucount + 1
    if ucount == 500 then break end
  end
  t.ok(ucount == 500 and pulled <= 500 + 300, tag .. "imap_unordered over an endless iterator (" .. pulled .. " read)")
  local bad_src = function() error("source broke") end
  t.raises(function() for _ in p:imap(square, bad_src) do end end, RuntimeError, "source broke", tag .. "an input iterator's error reaches the caller")

  -- errors: same class, message, remote traceback; error_callback
  local MyError = MyErrors[kind]
  local bad = p:apply_async(function() raise(MyError("broken " .. 42)) end)
  local ok, err = pcall(bad.get, bad, 10)
  t.ok(not ok and isinstance(err, MyError), tag .. "get raises the task's error class")
  t.like(tostring(err), "broken 42", tag .. "with its message")
  local mok, merr = pcall(p.map, p, function(x) if x == 5 then error("five") end return x end, { 1, 2, 3, 4, 5, 6 })
  t.ok(not mok and tostring(merr):find("five", 1, true), tag .. "map over numbers: an error midway")
  if kind == "Pool" then
    t.ok(not tostring(merr):find("_pool", 1, true), tag .. "whose traceback shows no pool internals")
    t.like(err.traceback or "", "Remote traceback:", tag .. "and the remote traceback")
  end
  t.ok(bad:ready() and not bad:successful(), tag .. "failed result: not successful")
  local ecb
  local bad2 = p:apply_async(function() error("plain") end, nil, nil, nil, function(e) ecb = e end)
  pcall(bad2.get, bad2, 10)
  t.like(tostring(ecb), "plain", tag .. "error_callback gets the error")
  t.raises(function() p:map(function(x) if x == 3 then raise(KeyError("three")) end return x end, { 1, 2, 3, 4 }) end,
    KeyError, "three", tag .. "map raises a task's error")
  local itb = p:imap(function(x) if x == 2 then raise(ValueError("two")) end return x end, { 1, 2, 3 })
  local p1, v1 = itb()
  t.ok(p1 == 1 and v1 == 1, tag .. "imap: positions before the error")
  t.raises(function() itb() end, ValueError, "two", tag .. "imap raises at the failed position")

  -- timeouts and readiness
  local slow = p:apply_async(sleep, { 0.3 })
  t.raises(function() slow:successful() end, ValueError, "not ready", tag .. "successful() before ready")
  t.raises(function() slow:get(0.01) end, pool.TimeoutError, nil, tag .. "get(timeout) expiring")
  slow:wait(0.01)
  t.ok(not slow:ready(), tag .. "wait(timeout) returns without result")
  slow:wait()
  t.ok(slow:ready(), tag .. "wait() waits")
  local it = p:imap(sleep, { 0.3 })
  t.raises(function() it:next(0.01) end, pool.TimeoutError, nil, tag .. "imap next(timeout)")

  -- bad input
  t.raises(function() p:apply_async(42) end, TypeError, "func", tag .. "non-callable func")
  t.raises(function() p:apply_async(square, 5) end, TypeError, "args", tag .. "args not a table")
  t.raises(function() p:map(square, 5) end, TypeError, "iterable", tag .. "map of a number")
  t.raises(function() p:map(square, { 1 }, 0) end, ValueError, "Chunksize", tag .. "chunksize 0")
  t.raises(function() p:join() end, ValueError, "Pool is still running", tag .. "join before close")
  -- an imap still reading its input when the pool closes gets all of it
  local fin = 0
  local finite = function() if fin < 600 then fin = fin + 1; return fin end end
  local lazy = p:imap(function(x) return -x end, finite)
  local lp, lv = lazy:next(10)
  p:close()
  t.is(fin, 600, tag .. "close() reads the rest of an open imap's input")
  local lsum, lcount = lv, 1
  for _, v in lazy do lsum, lcount = lsum + v, lcount + 1 end
  t.ok(lp == 1 and lcount == 600 and lsum == -(600 * 601 // 2), tag .. "and all its results come")
  t.raises(function() p:apply_async(square, { 1 }) end, ValueError, "Pool not running", tag .. "apply_async after close")
  t.raises(function() p:map(square, { 1 }) end, ValueError, "Pool not running", tag .. "map after close")
  p:join()
  t.ok(slow:ready(), tag .. "join returns after the work")

  t.raises(function() P(0) end, ValueError, "Number of processes must be at least 1", tag .. "(0)")
  t.raises(function() P(-2) end, ValueError, "at least 1", tag .. "(-2)")
  t.raises(function() P("x") end, TypeError, "processes", tag .. "processes not a number")
  t.raises(function() P{ processes = 1, maxtasksperchild = 0 } end, ValueError, "maxtasksperchild", tag .. "maxtasksperchild 0")
  t.raises(function() P(1, 5) end, TypeError, "initializer", tag .. "initializer not callable")

  -- terminate() with an imap still reading: its unread part fails
  do
    local tp = P(2)
    local cnt = 0
    local it = tp:imap(function(x) return x end, function() cnt = cnt + 1; return cnt end)
    t.is(select(2, it:next(10)), 1, tag .. "imap before terminate")
    tp:terminate()
    local ok, e
    for _ = 1, 10000 do
      ok, e = pcall(it.next, it, 10)
      if not ok then break end
    end
    t.ok(not ok and isinstance(e, pool.WorkerLostError), tag .. "after terminate an endless imap ends in WorkerLostError")
    tp:join()
  end

  -- with(...) terminates on exit; initializer; Pool{...}
  local q
  do
    local pp <close> = with(P{ processes = 2, initializer = function(v) _G.POOL_INIT = v end, initargs = { "set" } })
    t.is(pp:apply(function() return _G.POOL_INIT end), "set", tag .. "initializer ran in the worker")
    q = pp
  end
  t.is(q._state, "TERMINATE", tag .. "with() terminates on exit")
  q:join()
  t.ok(true, tag .. "join after terminate")
end

-- Process pool specifics
do
  local p = Pool(2)
  local pid = p:apply(os.getpid)
  t.ok(pid ~= os.getpid(), "Pool: tasks run in another process")
  -- a result that cannot be pickled fails that task only
  local co = p:apply_async(function() return coroutine.create(print) end)
  t.raises(function() co:get(10) end, TypeError, "pickle", "unpicklable result -> TypeError")
  t.is(p:apply(square, { 3 }), 9, "the pool goes on after an unpicklable result")
  -- an argument that cannot be pickled fails at submission
  t.raises(function() p:apply_async(square, { coroutine.create(print) }) end, TypeError, "pickle",
    "unpicklable argument -> TypeError at apply_async")
  t.is(p:apply(square, { 4 }), 16, "and the pool goes on")
  t.raises(function() p:map(square, { 1, 2, coroutine.create(print) }, 3) end, TypeError, "pickle",
    "an unpicklable map item -> TypeError at map")
  t.raises(function() p:map(print, { 1, 2 }, 1, 5) end, TypeError, "callback", "map_async callback not callable")
  t.is(p:map(square, { 5 })[1], 25, "and the pool goes on after it")
  -- globals are not shared
  COUNTER = 0
  p:map(function() COUNTER = (COUNTER or 0) + 1 end, { 1, 2, 3 })
  t.is(COUNTER, 0, "workers do not change the parent's globals")
  t.like(tostring(p), "state=RUN", "tostring(pool)")
  p:terminate()
  p:join()
end

t.done()
