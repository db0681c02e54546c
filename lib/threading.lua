-- threading.lua: Python's threading module, built on the C primitives
-- of "_threading" (lua_bindings/threading.c) the way CPython's
-- threading.py is built on _thread.
local _t = require "_threading"

local M = {}
local rawget, rawset, type, select, pairs, tostring = rawget, rawset, type, select, pairs, tostring
local getmetatable, setmetatable = getmetatable, setmetatable
local monotonic = require("time").monotonic
local unpack = table.unpack

local Lock, RLock = _t.Lock, _t.RLock
M.Lock, M.RLock = Lock, RLock
M._allocate_lock = Lock
M.TIMEOUT_MAX = _t.TIMEOUT_MAX
M.ThreadError = RuntimeError
M.get_ident, M.get_native_id = _t.get_ident, _t.get_native_id
M.setswitchinterval, M.getswitchinterval = _t.setswitchinterval, _t.getswitchinterval

local function is_callable(f)
  if type(f) == "function" then return true end
  local mt = getmetatable(f)
  return type(mt) == "table" and rawget(mt, "__call") ~= nil
end

local function check_type(fname, arg, value, expected, ok)
  if not ok then
    raise(TypeError(("%s() argument '%s' must be %s, not %s"):format(
      fname, arg, expected, type(value))))
  end
end

-- Python-call form: f{a, b, k=v} is f(a, b, k=v).  Returns the values
-- of the named parameters in order.
local function call_form(t, names)
  local out = {}
  for i, name in ipairs(names) do
    local v = t[name]
    if v == nil then v = t[i] end
    out[i] = v
  end
  return unpack(out, 1, #names)
end
M._call_form = call_form

local function plain_table(v)
  return type(v) == "table" and getmetatable(v) == nil
end

----------------------------------------------------------------- names

local THIS_FILES = { ["@mtlua/threading.lua"] = true, ["@mtlua/prelude.lua"] = true }
M._THIS_FILES = THIS_FILES   -- other front ends (gevent) add their files

-- The name the code that made the Thread knows 'target' by: one of its
-- locals or upvalues (the cheap part, done at creation).
local function local_name_of(target)
  local level = 2
  while true do
    local info = debug.getinfo(level, "Sf")
    if info == nil then return nil end
    if not THIS_FILES[info.source] and info.what ~= "C" then
      local i = 1
      while true do
        local name, value = debug.getlocal(level, i)
        if name == nil then break end
        if value == target and name:sub(1, 1) ~= "(" then return name end
        i = i + 1
      end
      i = 1
      while true do
        local name, value = debug.getupvalue(info.func, i)
        if name == nil then break end
        if value == target then return name end
        i = i + 1
      end
      return nil
    end
    level = level + 1
  end
end
M._local_name_of = local_name_of

-- The rest, done only when the name is first read: a global, else
-- where the function was defined.
local function describe_function(target, hint)
  if hint then return hint end
  for k, v in pairs(_G) do
    if v == target and type(k) == "string" then return k end
  end
  if type(target) == "function" then
    local info = debug.getinfo(target, "S")
    if info.what == "C" then return "?" end
    return info.short_src .. ":" .. info.linedefined
  end
  return tostring(target)
end
M._describe_function = describe_function

local counters = {}
local function newname(template)
  local n = (counters[template] or 0) + 1
  counters[template] = n
  return n
end
M._newname = newname

---------------------------------------------------------------- Thread

local _active = {}       -- ident -> running Thread
local _seq = 0           -- start order, for enumerate()
local _main_thread
local _dangling = setmetatable({}, { __mode = "k" })

local Thread = class("Thread")
M.Thread = Thread

function Thread:__init__(group, target, name, args, kwargs, daemon)
  if plain_table(group) then
    group, target, name, args, kwargs, daemon = call_form(group,
      { "group", "target", "name", "args", "kwargs", "daemon" })
  end
  if group ~= nil then
    raise(ValueError("Thread() argument 'group' must be nil for now"))
  end
  if target ~= nil then check_type("Thread", "target", target, "callable", is_callable(target)) end
  if args ~= nil then check_type("Thread", "args", args, "a table", type(args) == "table") end
  if kwargs ~= nil then check_type("Thread", "kwargs", kwargs, "a table", type(kwargs) == "table") end
  if name ~= nil then
    rawset(self, "name", tostring(name))
  else
    self._name_number = newname("Thread-%d")
    if target ~= nil then self._target_hint = local_name_of(target) or false end
  end
  self._target, self._args, self._kwargs = target, args or {}, kwargs
  if daemon == nil then
    local cur = M.current_thread()
    daemon = cur ~= nil and cur.daemon or false
  end
  self.daemon = daemon and true or false
  self._initialized = true
  self._started = false
  self._is_stopped = false
  _dangling[self] = true
end

-- 'name' is formatted when first read (Thread{} stays cheap).
function Thread:__getattr__(key)
  if key == "native_id" then
    local h = rawget(self, "_handle")
    if h == nil then return nil end
    local id = h:native_id()
    rawset(self, "native_id", id)
    return id
  end
  if key == "name" and rawget(self, "_name_number") then
    local name = "Thread-" .. self._name_number
    local target = rawget(self, "_target")
    if target ~= nil then
      name = name .. " (" .. describe_function(target, rawget(self, "_target_hint") or nil) .. ")"
    end
    rawset(self, "name", name)
    return name
  end
  return nil
end

local function report_thread_error(self, err)
  local cls = isinstance(err, BaseException) and getmetatable(err) or nil
  if cls ~= nil and isinstance(err, SystemExit) then return end
  local args = {
    exc_type = cls, exc_value = err,
    exc_traceback = type(err) == "table" and rawget(err, "traceback") or nil,
    thread = self,
  }
  local ok, herr = xpcall(M.excepthook, _t.msghandler, args)
  if not ok then
    io.stderr:write("Exception in threading.excepthook:\n", M._format_error(herr), "\n")
    io.stderr:flush()
  end
end

local function bootstrap(self)
  local ok, err = xpcall(self.run, _t.msghandler, self)
  if not ok then report_thread_error(self, err) end
  self._is_stopped = true
  _active[self.ident] = nil
end

function Thread:run()
  local target = self._target
  if target ~= nil then
    local args = self._args
    local n = args.n or #args
    if self._kwargs ~= nil then
      n = n + 1
      local a = { unpack(args, 1, n - 1) }
      a[n] = self._kwargs
      target(unpack(a, 1, n))
    else
      target(unpack(args, 1, n))
    end
  end
end

local function check_initialized(self)
  if type(self) ~= "table" or not rawget(self, "_initialized") then
    raise(RuntimeError("thread.__init__() not called"))
  end
end

function Thread:start()
  check_initialized(self)
  if self._started then raise(RuntimeError("threads can only be started once")) end
  self._started = true
  _seq = _seq + 1
  self._seq = _seq
  -- sets _handle and ident and registers in _active, all before the new
  -- thread can run; native_id is read lazily (__getattr__)
  _t.start(bootstrap, self, _active)
end

function Thread:join(timeout)
  check_initialized(self)
  if not self._started then raise(RuntimeError("cannot join thread before it is started")) end
  if self == M.current_thread() then raise(RuntimeError("cannot join current thread")) end
  if type(timeout) == "table" then timeout = timeout.timeout end
  if timeout ~= nil and type(timeout) ~= "number" then
    check_type("join", "timeout", timeout, "a number or nil", false)
  end
  if self._handle then self._handle:join(timeout) end
end

function Thread:is_alive()
  check_initialized(self)
  if not self._started or self._is_stopped then return false end
  if self._handle and self._handle:done() then
    self._is_stopped = true
    return false
  end
  return true
end

function Thread:getName() return self.name end
function Thread:setName(name) self.name = tostring(name) end
function Thread:isDaemon() return self.daemon end
function Thread:setDaemon(d)
  if self._started then raise(RuntimeError("cannot set daemon status of active thread")) end
  self.daemon = d and true or false
end

function Thread:__tostring()
  local status = "initial"
  if rawget(self, "_started") then status = "started" end
  if rawget(self, "_initialized") and not self:is_alive() and self._started then
    status = "stopped"
  end
  if self.daemon then status = status .. " daemon" end
  if self.ident ~= nil then status = status .. " " .. self.ident end
  return ("<%s(%s, %s)>"):format(getmetatable(self).__name__, self.name, status)
end

-- The main thread, and threads made by the host (mtlua_gil_ensure).
local _MainThread = class("_MainThread", Thread)
function _MainThread:__init__()
  Thread.__init__(self, { name = "MainThread", daemon = false })
  self._started = true
  self.ident, self.native_id = _t.main_ident()
  _active[self.ident] = self
  _seq = _seq + 1
  self._seq = _seq
end
function _MainThread:is_alive() return not self._is_stopped end

local _DummyThread = class("_DummyThread", Thread)
function _DummyThread:__init__()
  Thread.__init__(self, { name = "Dummy-" .. newname("Dummy-%d"), daemon = true })
  self._started = true
  self.ident, self.native_id = _t.get_ident(), _t.get_native_id()
  _active[self.ident] = self
  _seq = _seq + 1
  self._seq = _seq
end
function _DummyThread:is_alive() return true end
function _DummyThread:join() raise(RuntimeError("cannot join a dummy thread")) end

function M.current_thread()
  local t = _active[_t.get_ident()]
  if t == nil and _main_thread ~= nil then t = _DummyThread() end
  return t
end
M.currentThread = M.current_thread

function M.main_thread() return _main_thread end

local list_mt = {
  __tostring = function(list)
    local parts = {}
    for i = 1, #list do parts[i] = tostring(list[i]) end
    return "[" .. table.concat(parts, ", ") .. "]"
  end,
}

function M.enumerate()
  local list = {}
  for _, t in pairs(_active) do
    if t:is_alive() then list[#list + 1] = t end
  end
  table.sort(list, function(a, b) return a._seq < b._seq end)
  return setmetatable(list, list_mt)
end

function M.active_count() return #M.enumerate() end
M.activeCount = M.active_count

function M._format_error(e)
  if isinstance(e, BaseException) and type(e) == "table" then
    local tb = rawget(e, "traceback")
    return (tb and tb .. "\n" or "") .. tostring(e)
  end
  return tostring(e)
end

function M.excepthook(args)
  local thread = args.thread
  local name = thread and thread.name or _t.get_ident()
  io.stderr:write("Exception in thread ", tostring(name), ":\n",
    M._format_error(args.exc_value), "\n")
  io.stderr:flush()
end
M.__excepthook__ = M.excepthook

-- Run at exit (mtlua_close): wait for every non-daemon thread.
function M._shutdown()
  if _main_thread then _main_thread._is_stopped = true end
  while true do
    local pending
    for _, t in pairs(_active) do
      if not t.daemon and t ~= _main_thread and t:is_alive()
          and t ~= M.current_thread() then
        pending = t
        break
      end
    end
    if pending == nil then return end
    pending:join()
  end
end

-- In a forked child only the forking thread goes on.
function M._after_fork()
  local cur = M.current_thread()
  for _, t in pairs(_active) do
    if t ~= cur then
      t._is_stopped = true
      if t._handle then t._handle:_mark_done() end
    end
  end
  _active = {}
  if cur then
    cur.ident, cur.native_id = _t.get_ident(), _t.get_native_id()
    _active[cur.ident] = cur
  end
  _main_thread = cur
end

------------------------------------------------------------- Condition

local function remove_item(list, item)
  for i = 1, #list do
    if list[i] == item then table.remove(list, i) return true end
  end
  return false
end

local Condition = class("Condition")
M.Condition = Condition

function Condition:__init__(lock)
  if lock == nil then lock = RLock() end
  self._lock = lock
  self._waiters = {}
end

function Condition:acquire(...) return self._lock:acquire(...) end
function Condition:release() return self._lock:release() end
function Condition:__enter__() self._lock:__enter__() return self end
function Condition:__exit__() return self._lock:release() end
Condition.__close = Condition.__exit__

function Condition:_release_save()
  local lock = self._lock
  if lock._release_save then return lock:_release_save() end
  lock:release()
end

function Condition:_acquire_restore(saved)
  local lock = self._lock
  if lock._acquire_restore then return lock:_acquire_restore(saved) end
  lock:acquire()
end

function Condition:_is_owned()
  local lock = self._lock
  if lock._is_owned then return lock:_is_owned() end
  if lock:acquire(false) then
    lock:release()
    return false
  end
  return true
end

local function wait_on(waiter, timeout)
  if timeout == nil then return waiter:acquire() end
  if timeout > 0 then return waiter:acquire(true, timeout) end
  return waiter:acquire(false)
end

function Condition:wait(timeout)
  if type(timeout) == "table" then timeout = timeout.timeout end
  if timeout ~= nil and type(timeout) ~= "number" then
    check_type("wait", "timeout", timeout, "a number or nil", false)
  end
  if not self:_is_owned() then raise(RuntimeError("cannot wait on un-acquired lock")) end
  local waiter = Lock()
  waiter:acquire()
  local waiters = self._waiters
  waiters[#waiters + 1] = waiter
  local saved = self:_release_save()
  local ok, gotit = pcall(wait_on, waiter, timeout)
  self:_acquire_restore(saved)
  if not (ok and gotit) then remove_item(waiters, waiter) end
  if not ok then error(gotit, 0) end
  return gotit
end

function Condition:wait_for(predicate, timeout)
  if type(timeout) == "table" then timeout = timeout.timeout end
  local endtime
  local waittime = timeout
  local result = predicate()
  while not result do
    if waittime ~= nil then
      if endtime == nil then
        endtime = monotonic() + waittime
      else
        waittime = endtime - monotonic()
        if waittime <= 0 then break end
      end
    end
    self:wait(waittime)
    result = predicate()
  end
  return result
end

function Condition:notify(n)
  if n == nil then n = 1 end
  if type(n) == "table" then n = n.n or 1 end
  if not self:_is_owned() then raise(RuntimeError("cannot notify on un-acquired lock")) end
  local waiters = self._waiters
  while waiters[1] ~= nil and n > 0 do
    local waiter = table.remove(waiters, 1)
    if pcall(waiter.release, waiter) then n = n - 1 end
  end
end

function Condition:notify_all()
  self:notify(#self._waiters)
end
Condition.notifyAll = Condition.notify_all

function Condition:__tostring()
  return ("<Condition(%s, %d)>"):format(tostring(self._lock), #self._waiters)
end

------------------------------------------------------------- Semaphore

local Semaphore = class("Semaphore")
M.Semaphore = Semaphore

function Semaphore:__init__(value)
  if plain_table(value) then value = call_form(value, { "value" }) end
  if value == nil then value = 1 end
  if math.type(value) ~= "integer" then
    check_type("Semaphore", "value", value, "an integer", false)
  end
  if value < 0 then raise(ValueError("semaphore initial value must be >= 0")) end
  self._cond = Condition(Lock())
  self._value = value
end

function Semaphore:acquire(blocking, timeout)
  if type(blocking) == "table" then blocking, timeout = blocking.blocking, blocking.timeout
  elseif type(timeout) == "table" then timeout = timeout.timeout end
  if blocking == nil then blocking = true end
  if not blocking and timeout ~= nil then
    raise(ValueError("can't specify timeout for non-blocking acquire"))
  end
  local rc = false
  local endtime
  local cond = self._cond
  local _ <close> = with(cond)
  while self._value == 0 do
    if not blocking then return false end
    if timeout ~= nil then
      if endtime == nil then
        endtime = monotonic() + timeout
      else
        timeout = endtime - monotonic()
        if timeout <= 0 then return false end
      end
    end
    cond:wait(timeout)
  end
  self._value = self._value - 1
  rc = true
  return rc
end

function Semaphore:__enter__() self:acquire() return self end
function Semaphore:__exit__() self:release() end

local function check_n(n)
  if n == nil then return 1 end
  if type(n) == "table" then n = n.n or 1 end
  if math.type(n) ~= "integer" then check_type("release", "n", n, "an integer", false) end
  if n < 1 then raise(ValueError("n must be one or more")) end
  return n
end

function Semaphore:release(n)
  n = check_n(n)
  local _ <close> = with(self._cond)
  self._value = self._value + n
  for _ = 1, n do self._cond:notify() end
end

function Semaphore:__tostring()
  return ("<%s at %s: value=%d>"):format(getmetatable(self).__name__,
    tostring(rawget(self, "_cond")):match("0x%x+") or "?", self._value)
end

local BoundedSemaphore = class("BoundedSemaphore", Semaphore)
M.BoundedSemaphore = BoundedSemaphore

function BoundedSemaphore:__init__(value)
  Semaphore.__init__(self, value)
  self._initial_value = self._value
end

function BoundedSemaphore:release(n)
  n = check_n(n)
  local _ <close> = with(self._cond)
  if self._value + n > self._initial_value then
    raise(ValueError("Semaphore released too many times"))
  end
  self._value = self._value + n
  for _ = 1, n do self._cond:notify() end
end

----------------------------------------------------------------- Event

-- In C (lua_bindings/threading.c): a flag and a list of waiters.
local Event = _t.Event
M.Event = Event

--------------------------------------------------------------- Barrier

local BrokenBarrierError = class("threading.BrokenBarrierError", RuntimeError)
M.BrokenBarrierError = BrokenBarrierError

local Barrier = class("Barrier")
M.Barrier = Barrier

function Barrier:__init__(parties, action, timeout)
  if plain_table(parties) then
    parties, action, timeout = call_form(parties, { "parties", "action", "timeout" })
  end
  if math.type(parties) ~= "integer" then
    check_type("Barrier", "parties", parties, "an integer", false)
  end
  if parties < 1 then raise(ValueError("parties must be > 0")) end
  if action ~= nil then check_type("Barrier", "action", action, "callable", is_callable(action)) end
  self._cond = Condition(Lock())
  self._action = action
  self._timeout = timeout
  self._parties = parties
  self._state = 0     -- 0 filling, 1 draining, -1 resetting, -2 broken
  self._count = 0
end

function Barrier:__getattr__(key)
  if key == "parties" then return self._parties end
  if key == "n_waiting" then return self._state == 0 and self._count or 0 end
  if key == "broken" then return self._state == -2 end
  return nil
end

function Barrier:_break()
  self._state = -2
  self._cond:notify_all()
end

function Barrier:_enter()
  while self._state == -1 or self._state == 1 do self._cond:wait() end
  if self._state < 0 then raise(BrokenBarrierError()) end
end

function Barrier:_release()
  local ok, err = pcall(function()
    if self._action then self._action() end
    self._state = 1
    self._cond:notify_all()
  end)
  if not ok then
    self:_break()
    error(err, 0)
  end
end

function Barrier:_wait(timeout)
  if not self._cond:wait_for(function() return self._state ~= 0 end, timeout) then
    self:_break()
    raise(BrokenBarrierError())
  end
  if self._state < 0 then raise(BrokenBarrierError()) end
end

function Barrier:_exit()
  if self._count == 0 and (self._state == -1 or self._state == 1) then
    self._state = 0
    self._cond:notify_all()
  end
end

function Barrier:wait(timeout)
  if type(timeout) == "table" then timeout = timeout.timeout end
  if timeout == nil then timeout = self._timeout end
  if timeout ~= nil and timeout < 0 then timeout = 0 end
  local _ <close> = with(self._cond)
  self:_enter()
  local index = self._count
  self._count = self._count + 1
  local ok, err = pcall(function()
    if index + 1 == self._parties then self:_release()
    else self:_wait(timeout) end
  end)
  self._count = self._count - 1
  self:_exit()
  if not ok then error(err, 0) end
  return index
end

function Barrier:reset()
  local _ <close> = with(self._cond)
  if self._count > 0 then
    if self._state == 0 or self._state == -2 then self._state = -1 end
  else
    self._state = 0
  end
  self._cond:notify_all()
end

function Barrier:abort()
  local _ <close> = with(self._cond)
  self:_break()
end

function Barrier:__tostring()
  if self._state == -2 then return "<Barrier broken>" end
  return ("<Barrier waiters=%d/%d>"):format(self.n_waiting, self._parties)
end

----------------------------------------------------------------- Timer

local Timer = class("Timer", Thread)
M.Timer = Timer

function Timer:__init__(interval, fn, args, kwargs)
  if plain_table(interval) then
    interval, fn, args, kwargs = call_form(interval, { "interval", "function", "args", "kwargs" })
  end
  if type(interval) ~= "number" then check_type("Timer", "interval", interval, "a number", false) end
  check_type("Timer", "function", fn, "callable", is_callable(fn))
  Thread.__init__(self)
  self.interval = interval
  self["function"] = fn
  self.args = args or {}
  self.kwargs = kwargs
  self.finished = Event()
end

function Timer:cancel() self.finished:set() end

function Timer:run()
  self.finished:wait(self.interval)
  if not self.finished:is_set() then
    local args = self.args
    local n = args.n or #args
    if self.kwargs ~= nil then
      local a = { unpack(args, 1, n) }
      a[n + 1] = self.kwargs
      self["function"](unpack(a, 1, n + 1))
    else
      self["function"](unpack(args, 1, n))
    end
  end
  self.finished:set()
end

----------------------------------------------------------------- local

-- Fields of a Local are per thread: each thread sees its own.
local Local = class("Local")
M.Local = Local
M["local"] = Local

local local_dicts = setmetatable({}, { __mode = "k" })   -- obj -> {thread -> dict}

local function local_dict(self)
  local per = local_dicts[self]
  if per == nil then
    per = setmetatable({}, { __mode = "k" })
    local_dicts[self] = per
  end
  local key = M.current_thread()
  local d = per[key]
  if d == nil then
    d = {}
    per[key] = d
    local cls = getmetatable(self)
    local init = cls.__init__
    if init ~= Local.__init__ and rawget(self, "_local_args") then
      local a = rawget(self, "_local_args")
      init(self, unpack(a, 1, a.n))
    end
  end
  return d
end

function Local:__init__(...)
  rawset(self, "_local_args", table.pack(...))
  local_dict(self)
end

function Local:__getattr__(key)
  return local_dict(self)[key]
end

function Local:__newindex(key, value)
  local_dict(self)[key] = value
end

--------------------------------------------------------------- startup

_main_thread = _MainThread()
-- M._shutdown is run by the runtime at exit (vm_glue/state.c), before
-- the exit handlers, as CPython does

return M
