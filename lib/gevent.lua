-- gevent.lua: gevent's API on the hub of lua_bindings/hub.c.  One hub
-- per OS thread; Greenlet is a greenlet whose parent is the hub.
-- The same functions are reachable as coroutine.spawn, coroutine.sleep...
local H = require "_hub"
local gmod = require "greenlet"
local threading = require "threading"

local greenlet, getcurrent = gmod.greenlet, gmod.getcurrent
local started = gmod._started
local schedule, schedule_throw, hub_switch, timer = H.schedule, H.schedule_throw, H.switch, H.timer
local pack, unpack = table.pack, table.unpack
local rawget, rawset, type, tostring, select, pcall, error = rawget, rawset, type, tostring, select, pcall, error
local monotonic = require("time").monotonic

threading._THIS_FILES["@mtlua/gevent.lua"] = true
threading._THIS_FILES["@mtlua/gevent/pool.lua"] = true

local M = {}
M.greenlet = greenlet
M.getcurrent = getcurrent
M.GreenletExit = gmod.GreenletExit
M.get_hub = H.get_hub
M.sleep = H.sleep

local LoopExit = class("LoopExit", Exception)
C_register = nil
M.LoopExit = LoopExit
require("_greenlet")._register("gevent.LoopExit", LoopExit)
local BlockingSwitchOutError = class("BlockingSwitchOutError", AssertionError)
require("_greenlet")._register("gevent.BlockingSwitchOutError", BlockingSwitchOutError)
M.BlockingSwitchOutError = BlockingSwitchOutError

----------------------------------------------------------------- Timeout

local Timeout = class("Timeout", BaseException)
M.Timeout = Timeout

function Timeout:__init__(seconds, exception)
  if type(seconds) == "table" and getmetatable(seconds) == nil then
    seconds, exception = seconds.seconds or seconds[1], seconds.exception or seconds[2]
  end
  if seconds ~= nil and type(seconds) ~= "number" then
    raise(TypeError("Timeout() argument 'seconds' must be a number or nil, not " .. type(seconds)))
  end
  BaseException.__init__(self, seconds)
  self.message = seconds and (seconds .. " second" .. (seconds == 1 and "" or "s")) or nil
  self.seconds = seconds
  self.exception = exception
  self.pending = false
end

function Timeout:start()
  if self.pending then raise(AssertionError("timer is already started")) end
  if self.seconds == nil then return self end
  local exc = self.exception
  if exc == nil then exc = self
  elseif type(exc) == "string" then exc = Timeout(self.seconds, nil); exc.message = self.exception end
  self._timer = timer(math.max(self.seconds, 0), getcurrent(), exc, true)
  self.pending = true
  return self
end

function Timeout.start_new(seconds, exception)
  return Timeout(seconds, exception):start()
end

function Timeout:cancel()
  if self._timer then self._timer:cancel(); self._timer = nil end
  self.pending = false
end
Timeout.close = Timeout.cancel

function Timeout:__enter__()
  if not self.pending then self:start() end
  return self
end

function Timeout:__exit__()
  self:cancel()
end

function Timeout:__tostring()
  if rawget(self, "traceback") then return BaseException.__tostring(self) end
  return ("<Timeout at %p seconds=%s%s>"):format(self, tostring(self.seconds),
    self.pending and " pending" or "")
end

-- with_timeout(seconds, f, ...): f(...) or raise Timeout.
function M.with_timeout(seconds, f, ...)
  local t = Timeout(seconds):start()
  local r = pack(pcall(f, ...))
  t:cancel()
  if not r[1] then error(r[2], 0) end
  return unpack(r, 2, r.n)
end

-- The current greenlet waits for a schedule() or 'timeout' seconds.
-- Returns the value it was woken with, or TIMED_OUT.
local TIMED_OUT = setmetatable({}, { __name = "timed out" })
M._TIMED_OUT = TIMED_OUT
local function wait_for_wake(timeout)
  local t
  if timeout ~= nil then
    if timeout < 0 then timeout = 0 end
    t = timer(timeout, getcurrent(), TIMED_OUT)
  end
  local ok, v = pcall(hub_switch)
  if t then t:cancel() end
  if not ok then error(v, 0) end
  return v
end
M._wait_for_wake = wait_for_wake

local function remove_item(list, item)
  for i = #list, 1, -1 do
    if list[i] == item then table.remove(list, i) return end
  end
end
M._remove_item = remove_item

local function opt_timeout(timeout, fname)
  if type(timeout) == "table" then timeout = timeout.timeout end
  if timeout ~= nil and type(timeout) ~= "number" then
    raise(TypeError(fname .. "() argument 'timeout' must be a number or nil, not " .. type(timeout)))
  end
  return timeout
end
M._opt_timeout = opt_timeout

---------------------------------------------------------------- Greenlet

local Greenlet = class("Greenlet", greenlet)
M.Greenlet = Greenlet

local function repr(v)
  if type(v) == "string" then
    return "'" .. v:gsub("\\", "\\\\"):gsub("'", "\\'"):gsub("\n", "\\n") .. "'"
  elseif type(v) == "table" then
    if isinstance(v, BaseException) and getmetatable(v) ~= nil and rawget(v, "args") then return tostring(v) end
    return "<table>"
  elseif v == nil then return "None"
  elseif v == true then return "True"
  elseif v == false then return "False"
  end
  return tostring(v)
end

local report_error
local msghandler = require("_threading").msghandler
local THIS_FILES, local_name_of = threading._THIS_FILES, H.local_name_of

-- The name a Greenlet's tostring shows for its function: the name the
-- spawning code knows it by, found once per function (a walk of the
-- caller's locals cost 7% of a spawn) -- stable, as a Python function's
-- __name__ is.  Functions without a name found are looked up each time.
local hints = setmetatable({}, { __mode = "k" })
local function hint_of(run)
  local hint = hints[run]
  if hint == nil then
    hint = local_name_of(run, THIS_FILES)
    if hint == nil then return false end
    if type(run) == "function" then hints[run] = hint end
  end
  return hint
end
local ginit, GKEY = gmod._init, gmod._KEY
local EMPTY_ARGS = { n = 0 }   -- shared by every Greenlet spawned without arguments

-- A Greenlet is done once _ok is set: true (returned, GreenletExit or
-- killed before it started) or false (raised).  One field for both
-- keeps a spawned Greenlet's instance within 8 hash slots.
local function is_ready(g)
  return rawget(g, "_ok") ~= nil
end

-- _links holds the one callback most Greenlets get (joinall's), or a
-- list of them marked by LINKS: no table per Greenlet for one link.
local LINKS = {}

local function add_link(g, callback)
  local links = rawget(g, "_links")
  if links == nil then rawset(g, "_links", callback)
  elseif getmetatable(links) == LINKS then links[#links + 1] = callback
  else rawset(g, "_links", setmetatable({ links, callback }, LINKS)) end
end

-- Calls (or, for a greenlet, schedules) one link with the finished g.
local function fire_link(g, l, report)
  if type(l) == "table" and isinstance(l, greenlet) then schedule(l, g)
  else
    local lok, lerr = pcall(l, g)
    if not lok and report then report(g, lerr) end
  end
end

local function fire_links(g, links, report)
  if getmetatable(links) ~= LINKS then return fire_link(g, links, report) end
  for i = 1, #links do fire_link(g, links[i], report) end
end

local function check_run(run)
  if type(run) ~= "function" and not (getmetatable(run) and getmetatable(run).__call) then
    raise(TypeError("Greenlet() argument 'run' must be callable, not " .. type(run)))
  end
end

-- the run of every Greenlet: the hub starts it with the Greenlet itself.
-- Its fields are read and written raw: a missing one would go through
-- Greenlet's __getattr__ and a new one through greenlet's __newindex.
local GreenletExit = gmod.GreenletExit
local function bootstrap(self)
  if rawget(self, "_killed_early") then return end
  local args = rawget(self, "args")
  local ok, v = xpcall(rawget(self, "_run"), msghandler, unpack(args, 1, args.n))
  if ok or isinstance(v, GreenletExit) then
    ok = true
    rawset(self, "value", v)
  else
    rawset(self, "exception", v)
    report_error(self, v)
  end
  rawset(self, "_ok", ok)
  local links = rawget(self, "_links")
  if links then
    rawset(self, "_links", nil)
    fire_links(self, links, report_error)
  end
  if not ok and (isinstance(v, KeyboardInterrupt) or isinstance(v, SystemExit)) then
    schedule_throw(gmod._getmain(), v)
  end
end

function Greenlet:__init__(run, ...)
  if run == nil then
    local method = getmetatable(self)._run
    if method == nil then raise(TypeError("Greenlet() needs a function to run")) end
    local me = self
    run = function(...) return method(me, ...) end
  else
    check_run(run)
  end
  greenlet.__init__(self, bootstrap, H.get_hub())
  self._run = run
  self.args = select("#", ...) == 0 and EMPTY_ARGS or pack(...)
  self._hint = hint_of(run)
end

-- spawn's Greenlet, made in one step: the instance table is sized at
-- once for the fields it gets over its life (the nil ones too), and the
-- class and __init__ chains are skipped.
local function new_greenlet(run, ...)
  check_run(run)
  local self = setmetatable({
    [GKEY] = false, _run = run, _scheduled = true,
    args = select("#", ...) == 0 and EMPTY_ARGS or pack(...),
    _hint = hint_of(run),
    _ok = nil, value = nil, _links = nil,
  }, Greenlet)
  ginit(self, bootstrap, H.get_hub())
  return self
end

function Greenlet:__getattr__(key)
  if key == "started" then return started(self) or rawget(self, "_scheduled") == true end
  if key == "dead" then
    return rawget(self, "_ok") ~= nil
        or gmod.greenlet.__getattr__(self, "dead") == true
  end
  if key == "name" then
    return "Greenlet-" .. tostring(self):match("0x%x+")
  end
  return greenlet.__getattr__(self, key)
end

function Greenlet:__tostring()
  local parts = {}
  local args = self.args
  for i = 1, args.n do parts[i] = repr(args[i]) end
  local fname = threading._describe_function(self._run, self._hint or nil)
  return ("<Greenlet at %s: %s(%s)>"):format(("%p"):format(self), fname, table.concat(parts, ", "))
end

report_error = function(self, err)
  if isinstance(err, SystemExit) then return end
  io.stderr:write(threading._format_error(err), "\n", tostring(self), " failed with ",
    isinstance(err, BaseException) and type(err) == "table" and getmetatable(err).__name__ or "error",
    "\n\n")
  io.stderr:flush()
end

function Greenlet:start()
  if not rawget(self, "_scheduled") then
    self._scheduled = true
    schedule(self, self)
  end
end

function Greenlet:start_later(seconds)
  if not rawget(self, "_scheduled") then
    self._scheduled = true
    self._start_timer = timer(seconds, self, self)
  end
end

function Greenlet.spawn(cls_or_f, ...)
  local g = Greenlet(cls_or_f, ...)
  g._scheduled = true
  schedule(g, g)
  return g
end

function Greenlet:ready() return rawget(self, "_ok") ~= nil end
function Greenlet:successful() return rawget(self, "_ok") == true end

function Greenlet:link(callback)
  if self:ready() then
    local me = self
    M.spawn(function() callback(me) end)
    return
  end
  add_link(self, callback)
end

function Greenlet:unlink(callback)
  local links = rawget(self, "_links")
  if links == nil then return end
  if getmetatable(links) == LINKS then remove_item(links, callback)
  elseif rawequal(links, callback) then self._links = nil end
end

function Greenlet:join(timeout)
  if is_ready(self) then return true end
  timeout = opt_timeout(timeout, "join")
  local cur = getcurrent()
  if cur == self then raise(RuntimeError("cannot join the current greenlet (it would wait for itself)")) end
  add_link(self, cur)
  local deadline = timeout and monotonic() + timeout
  while not is_ready(self) do
    local ok, v = pcall(wait_for_wake, deadline and deadline - monotonic())
    if not ok then self:unlink(cur) error(v, 0) end
    if v == TIMED_OUT then break end
  end
  if not is_ready(self) then self:unlink(cur) end   -- else bootstrap took the links
  return is_ready(self)
end

function Greenlet:get(block, timeout)
  if type(block) == "table" then block, timeout = block.block, block.timeout end
  if block == nil then block = true end
  if not self:ready() then
    if not block then raise(Timeout()) end
    self:join(timeout)
    if not self:ready() then raise(Timeout(timeout)) end
  end
  if self._ok or rawget(self, "_killed_early") then return self.value end
  error(self.exception, 0)
end

function Greenlet:kill(exception, block, timeout)
  if type(exception) == "table" and getmetatable(exception) == nil then
    exception, block, timeout = exception.exception, exception.block, exception.timeout
  end
  if block == nil then block = true end
  if exception == nil then exception = gmod.GreenletExit end
  if type(exception) == "table" and issubclass(exception, BaseException) then exception = exception() end
  if self:ready() then return end
  if not started(self) then   -- never ran: it never will
    self._killed_early = true
    self.value = exception
    self._ok = true
    if rawget(self, "_start_timer") then self._start_timer:cancel() end
    local links = rawget(self, "_links")
    self._links = nil
    if links then fire_links(self, links, nil) end
    return
  end
  if getcurrent() == self then error(exception, 0) end
  schedule_throw(self, exception)
  if block then self:join(timeout) end
end

------------------------------------------------------------ module level

function M.spawn(f, ...)
  local g = new_greenlet(f, ...)
  schedule(g, g)
  return g
end

function M.spawn_later(seconds, f, ...)
  local g = Greenlet(f, ...)
  g:start_later(seconds)
  return g
end

function M.spawn_raw(f, ...)
  local g = greenlet(f, H.get_hub())
  schedule(g, nil)
  return g
end

-- M.sleep is H.sleep itself (set above): a Lua wrapper costs a call
-- per sleep; its second argument (gevent's 'ref') is ignored.

-- joinall(greenlets, timeout?, raise_error?) -> the finished ones.
-- One link per unfinished greenlet counts them down; the caller is
-- woken once, when the last one ends (or the first one fails, with
-- raise_error), not once per greenlet.
function M.joinall(list, timeout, raise_error)
  if type(timeout) == "table" then timeout, raise_error = timeout.timeout, timeout.raise_error end
  timeout = opt_timeout(timeout, "joinall")
  local pending, failed = 0, false
  local cur = getcurrent()
  local function on_done(g)
    pending = pending - 1
    if raise_error and not g:successful() then failed = true end
    if pending == 0 or failed then schedule(cur, true) end
  end
  local linked = {}
  for i = 1, #list do
    local g = list[i]
    if not is_ready(g) then
      if g == cur then raise(RuntimeError("cannot join the current greenlet (it would wait for itself)")) end
      add_link(g, on_done)
      pending = pending + 1
      linked[pending] = g
    elseif raise_error and not g:successful() then
      failed = true
    end
  end
  if pending > 0 and not failed then
    local deadline = timeout and monotonic() + timeout
    while pending > 0 and not failed do
      local ok, v = pcall(wait_for_wake, deadline and math.max(deadline - monotonic(), 0))
      if not ok then
        for i = 1, #linked do linked[i]:unlink(on_done) end
        error(v, 0)
      end
      if v == TIMED_OUT then break end
    end
  end
  if pending > 0 then for i = 1, #linked do linked[i]:unlink(on_done) end end
  local done = {}
  for i = 1, #list do
    local g = list[i]
    if is_ready(g) then
      done[#done + 1] = g
      if raise_error and not g:successful() then error(g.exception, 0) end
    end
  end
  return done
end

function M.killall(list, exception, block, timeout)
  if type(exception) == "table" and getmetatable(exception) == nil then
    exception, block, timeout = exception.exception, exception.block, exception.timeout
  end
  if block == nil then block = true end
  for i = 1, #list do list[i]:kill(exception, false) end
  if block then M.joinall(list, timeout) end
end

-- wait(objects?, timeout?): without objects, until the hub has nothing
-- left to do; else until they are ready (returns the ready ones).
function M.wait(objects, timeout, count)
  if type(objects) == "number" then objects, timeout = nil, objects end
  if objects == nil then
    local t = timeout and timer(timeout, getcurrent(), TIMED_OUT)
    local ok, v = pcall(hub_switch)
    if t then t:cancel() end
    if not ok and not isinstance(v, LoopExit) then error(v, 0) end
    return ok == false or v ~= TIMED_OUT
  end
  local deadline = timeout and monotonic() + timeout
  local ready = {}
  for i = 1, #objects do
    local o = objects[i]
    if o.join then o:join(deadline and math.max(deadline - monotonic(), 0))
    elseif o.wait then o:wait(deadline and math.max(deadline - monotonic(), 0)) end
    if (o.ready and o:ready()) or (o.is_set and o:is_set()) then ready[#ready + 1] = o end
    if count and #ready >= count then break end
  end
  return ready
end

-- idle(): returns once the hub has no ready greenlet left.
function M.idle()
  repeat H.sleep(0) until H.pending() == 0
end

M.Timeout = Timeout
M.signal_handler = nil

-- submodules, both fields and modules
local lazy = { monkey = true, queue = true, event = true, lock = true, pool = true, socket = true }
setmetatable(M, { __index = function(t, k)
  if lazy[k] then
    local mod = require("gevent." .. k)
    rawset(t, k, mod)
    return mod
  end
end })

return M
