-- greenlet semantics: switches both ways, parents, throw, GreenletExit,
-- dead/active, getcurrent, threads, <close> on collection, pcall, yields.
local t = require "tests.tap"
local gm = require "greenlet"
local greenlet, getcurrent = gm.greenlet, gm.getcurrent
local main = getcurrent()

t.ok(coroutine.greenlet == greenlet and coroutine.getcurrent == getcurrent, "coroutine.greenlet/getcurrent")
t.ok(gm.GreenletExit and gm.error, "module table")
t.is(main.dead, false, "main not dead")

local log = {}
local g1, g2
g1 = greenlet(function(a, b)
  log[#log + 1] = "g1 " .. a .. b
  local x = g2:switch("x")
  log[#log + 1] = "g1 got " .. x
  return "r1", "r2"
end)
g2 = greenlet(function(v)
  log[#log + 1] = "g2 " .. v
  g1:switch("y")
  log[#log + 1] = "never"
end)
local r1, r2 = g1:switch("a", "b")
t.is(table.concat(log, ";"), "g1 ab;g2 x;g1 got y", "switch values both ways")
t.is(r1 .. r2, "r1r2", "run's values go to the parent")
t.ok(g1.dead and not g2.dead and g2:is_active() and not g1:is_active(), "dead/active")
t.ok(g1.parent == main, "default parent is the creator")

-- parent chain: values go to the parent, not the switcher
local p = greenlet(function() local v = getcurrent().parent; return "p got " .. tostring(coroutine.running() ~= nil) end)
local child = greenlet(function() return "from child" end, nil)
local outer = greenlet(function()
  local c = greenlet(function() return "to outer" end)
  return "outer got " .. c:switch()
end)
t.is(outer:switch(), "outer got to outer", "parent receives the return values")
t.raises(function() main.parent = nil end, TypeError, nil, "parent must be a greenlet")
local a = greenlet(function() end)
local b = greenlet(function() end, a)
t.raises(function() a.parent = b end, ValueError, "cyclic", "parent cycle -> ValueError")

-- throw
local caught
local g = greenlet(function()
  local ok, e = pcall(main.switch, main, "ready")
  caught = e
  error(e, 0)
end)
g:switch()
local res = g:throw()
t.ok(isinstance(caught, gm.GreenletExit), "throw default GreenletExit")
t.ok(isinstance(res, gm.GreenletExit) and g.dead, "GreenletExit returned quietly to the parent")
local g3 = greenlet(function() main:switch() end)
g3:switch()
local e = t.raises(function() g3:throw(ValueError("boom")) end, ValueError, "boom", "other exceptions reach the parent")
local g4 = greenlet(function() return 1 end)
t.ok(isinstance(g4:throw(), gm.GreenletExit) and g4.dead, "throw into an unstarted greenlet kills it")
t.is(g1:switch("again"), "again", "switching to a dead greenlet goes to its parent")

-- errors
t.raises(function() greenlet(42) end, TypeError, "callable", "greenlet(42) -> TypeError")
local bad = greenlet(function() coroutine.yield(1) end)
t.raises(function() bad:switch() end, Exception, "across a greenlet", "plain yield in run is refused")
local bad0 = greenlet(function() coroutine.yield() end)
t.raises(function() bad0:switch() end, Exception, "across a greenlet", "a plain yield of no values too")
do   -- yields of no values inside a plain coroutine in a greenlet stay in it
  local got = {}
  local g0 = greenlet(function()
    local co = coroutine.wrap(function()
      coroutine.yield()
      main:switch("from co")
      coroutine.yield()
      return "co end"
    end)
    got[#got + 1] = select("#", co())
    got[#got + 1] = select("#", co())
    got[#got + 1] = co()
    return "g0 end"
  end)
  t.is(g0:switch(), "from co", "a switch between two plain yields of nothing")
  t.is(g0:switch(), "g0 end", "the greenlet ends")
  t.is(table.concat(got, ","), "0,0,co end", "the plain yields went to the coroutine's caller")
end

-- a plain coroutine inside a greenlet is not a switch, and a switch inside it works
local seq = {}
local gc = greenlet(function()
  local co = coroutine.wrap(function()
    local v = main:switch("sw")
    seq[#seq + 1] = v
    coroutine.yield("plain")
    return "end"
  end)
  local c1 = co()
  seq[#seq + 1] = c1
  local c2 = co()
  seq[#seq + 1] = c2
  local ok, v = pcall(function() return main:switch("in pcall") end)
  seq[#seq + 1] = v
  table.sort({ 3, 1, 2 }, function(x, y) main:switch("in sort") return x < y end)
  return "done"
end)
local out = { gc:switch() }
local r = gc:switch("back")
t.is(out[1], "sw", "switch from inside a plain coroutine")
t.is(r, "in pcall", "plain yield stays inside the coroutine")
local n = 0
while not gc.dead do r = gc:switch("s" .. n) n = n + 1 end
t.is(table.concat(seq, ","), "back,plain,end,s0", "values through coroutine, pcall")
t.is(r, "done", "switch from a C call without continuation (table.sort) works (pinned)")

-- getcurrent
local seen
greenlet(function() seen = getcurrent() end):switch()
t.ok(seen ~= main and isinstance(seen, greenlet), "getcurrent inside")
t.ok(getcurrent() == main, "getcurrent in main")

-- <close> runs when a suspended greenlet is collected
local closed = false
do
  local gz = greenlet(function()
    local x <close> = setmetatable({}, { __close = function() closed = true end })
    main:switch()
  end)
  gz:switch()
end
collectgarbage(); collectgarbage()
t.ok(closed, "collected suspended greenlet is unwound")

-- another thread's greenlet
local threading = require "threading"
local other, err
local th = threading.Thread{ target = function()
  other = greenlet(function() end)
end }
th:start(); th:join(5)
local ok, e2 = pcall(function() other:switch() end)
t.ok(not ok and isinstance(e2, gm.error), "switch into another thread's greenlet -> greenlet.error")
th = threading.Thread{ target = function()
  local m = getcurrent()
  local x = greenlet(function(v) return v * 2 end)
  err = x:switch(21)
end }
th:start(); th:join(5)
t.is(err, 42, "greenlets in another thread")

-- threads that used greenlets and a hub end: their state is freed;
-- objects they leave behind stay safe to use and to collect
local left = {}
local tl = {}
for k = 1, 8 do
  tl[k] = threading.Thread{ target = function()
    local gevent = require "gevent"
    local gs = {}
    for i = 1, 20 do gs[i] = gevent.spawn(function() gevent.sleep(0.001) return i end) end
    gevent.joinall(gs, 5)
    local susp = greenlet(function() getcurrent().parent:switch() end)
    susp:switch()                        -- left suspended
    left[k] = { gs[20], susp, getcurrent(), gevent.Timeout(5):start() }
  end }
  tl[k]:start()
end
for k = 1, 8 do tl[k]:join(10) end
local okleft = #left == 8
for k = 1, 8 do
  local l = left[k]
  if not (l and l[1].value == 20 and l[3].dead and not pcall(l[2].switch, l[2])) then okleft = false end
  if l then l[4]:cancel() end
end
t.ok(okleft, "objects of ended threads: values kept, main dead, switching refused")
left = nil
collectgarbage(); collectgarbage()
t.ok(true, "... and collected without harm")

-- stress: many greenlets ping-pong
local count = 0
local gs = {}
for i = 1, 200 do gs[i] = greenlet(function() for _ = 1, 50 do count = count + 1; main:switch() end end) end
for _ = 1, 50 do for i = 1, 200 do gs[i]:switch() end end
t.is(count, 10000, "200 greenlets x 50 switches")

-- greenlets are found from their instance tables through a small cache:
-- tables made where collected greenlets' instances were are not greenlets
do
  local bad = 0
  for round = 1, 200 do
    local g = greenlet(function(x) return x + 1 end)
    if g:switch(round) ~= round + 1 then bad = bad + 1 end
    g = nil
    collectgarbage()
    for _ = 1, 4 do
      local ok, e = pcall(greenlet.switch, {})
      if ok or not isinstance(e, TypeError) then bad = bad + 1 end
    end
  end
  t.is(bad, 0, "plain tables in the place of collected greenlets are refused (TypeError)")
  local sub = class("Sub", greenlet)
  function sub:switch(...) return "overridden", ... end
  local s = sub(function() end)
  t.is(select(1, s:switch()), "overridden", "a subclass's own switch method is used")
  t.ok(rawget(greenlet(function() end), "switch") ~= nil and rawget(s, "switch") == nil,
       "only instances of greenlet itself carry switch")
end
-- A greenlet main switched to is kept alive by main's pending switch
-- (not by the trampoline): collections while it runs, after the last
-- reference to it went, and between greenlets main does not see.
do
  local fine = true
  for i = 1, 100 do
    local g = greenlet(function()
      collectgarbage(); collectgarbage()
      local junk = {}
      for k = 1, 50 do junk[k] = {k} end
      main:switch(i)
      collectgarbage()
    end)
    if g:switch() ~= i then fine = false end
    g = nil
    collectgarbage(); collectgarbage()
  end
  t.ok(fine, "collections inside greenlets main switched to")
  local a, b
  a = greenlet(function()
    for k = 1, 1000 do b:switch(); if k % 100 == 0 then collectgarbage() end end
    main:switch("a done")
  end)
  b = greenlet(function() while true do a:switch() end end)
  t.is(a:switch(), "a done", "two greenlets switching to each other, collecting")
  a, b = nil, nil
  collectgarbage(); collectgarbage()
end

t.done()
