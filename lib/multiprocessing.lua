-- multiprocessing.lua: Python's multiprocessing on fork(), built on
-- "_multiprocessing" (lua_bindings/multiprocessing.c: fork, wait,
-- kill, Pipe) and "_shm" (lua_bindings/shm.c: the shared-memory
-- queues), the way CPython's is built on os.fork and _multiprocessing.
--
-- For other modules: M._register_after_fork(fn): fn() runs in every
-- child a Process forks, before its body (e.g. to forget the parent's
-- pools).  M._exit_function() joins this process's children (run at
-- exit).  A child never returns into its parent's code and does not
-- run the parent's exit handlers (a parent's pool must not be torn down
-- by its children): it joins its own threads and children, flushes
-- stdio and calls _exit, as CPython's Process._bootstrap does.
local _mp = require "_multiprocessing"
local _shm = require "_shm"
local threading = require "threading"
local queue = require "queue"

local M = {}
local type, pairs, rawget, rawset, tostring = type, pairs, rawget, rawset, tostring
local getmetatable, xpcall, pcall = getmetatable, xpcall, pcall
local unpack = table.unpack
local getpid = os.getpid

--------------------------------------------------------------- errors

local ProcessError = class("ProcessError", Exception)
local BufferTooShort = class("BufferTooShort", ProcessError)
local AuthenticationError = class("AuthenticationError", ProcessError)
M.ProcessError, M.BufferTooShort = ProcessError, BufferTooShort
M.AuthenticationError = AuthenticationError
-- M.TimeoutError is pool's (one class for both modules, as in Python),
-- fetched lazily below so that neither module loads the other early.
_shm.register_class("multiprocessing.ProcessError", ProcessError)
_shm.register_class("multiprocessing.AuthenticationError", AuthenticationError)
_shm.register_class("multiprocessing.BufferTooShort", BufferTooShort)

local function check(cond, cls, msg)
  if not cond then raise(cls(msg)) end
end

local function is_callable(f)
  if type(f) == "function" then return true end
  local mt = getmetatable(f)
  return type(mt) == "table" and rawget(mt, "__call") ~= nil
end

local function plain_table(v)
  return type(v) == "table" and getmetatable(v) == nil
end

--------------------------------------------------------------- queues

M.Queue, M.JoinableQueue, M.SimpleQueue = _shm.Queue, _shm.JoinableQueue, _shm.SimpleQueue
M.Empty, M.Full = queue.Empty, queue.Full
M.Pipe = _mp.Pipe
M.Connection = _mp.Connection
-- pickle finds rebuild functions by name here too
M._rebuild_queue = _shm.rebuild_queue

-- Process-shared Lock, RLock, Semaphore, BoundedSemaphore, Condition,
-- Event, Barrier, Value, Array, RawValue, RawArray:
-- lib/multiprocessing/synchronize.lua and lua_bindings/mpsync.c.
local synchronize = require "multiprocessing.synchronize"
for _, name in ipairs { "Lock", "RLock", "Semaphore", "BoundedSemaphore", "Condition",
                        "Event", "Barrier", "Value", "Array", "RawValue", "RawArray",
                        "BrokenBarrierError" } do
  M[name] = synchronize[name]
end

------------------------------------------------------------ processes

local _children = {}          -- started, not yet reaped Process objects
local _counter = 0            -- for default names: Process-N
local _current_process        -- this process's Process object
local _parent_process         -- a stand-in for the parent (in a child)
local _after_fork = {}        -- M._register_after_fork's functions

local Process = class("Process")
M.Process = Process

local SIGNAMES = {}
local function exitcode_name(code)
  if type(code) == "number" and code < 0 then
    local name = SIGNAMES[-code]
    if name == nil then
      name = _mp.signal_name(-code) or false
      SIGNAMES[-code] = name
    end
    if name then return "-" .. name end
  end
  return tostring(code)
end

function Process:__init__(group, target, name, args, kwargs, daemon)
  if plain_table(group) then
    local t = group
    group, target, name = t.group, t.target or t[2], t.name or t[3]
    args, kwargs = t.args or t[4], t.kwargs or t[5]
    daemon = t.daemon
    if daemon == nil then daemon = t[6] end
    if group == nil then group = t[1] end
  end
  check(group == nil, AssertionError, "group argument must be None for now")
  if target ~= nil and not is_callable(target) then
    raise(TypeError("Process() argument 'target' must be callable, not " .. type(target)))
  end
  if args ~= nil and type(args) ~= "table" then
    raise(TypeError("Process() argument 'args' must be a table, not " .. type(args)))
  end
  if kwargs ~= nil and type(kwargs) ~= "table" then
    raise(TypeError("Process() argument 'kwargs' must be a table, not " .. type(kwargs)))
  end
  _counter = _counter + 1
  local parent = M.current_process()
  local identity = {}
  for i = 1, #parent._identity do identity[i] = parent._identity[i] end
  identity[#identity + 1] = _counter
  self._identity = identity
  self._target, self._args, self._kwargs = target, args or {}, kwargs
  self._parent_pid = getpid()
  self._parent_name = parent.name
  if name ~= nil then
    self.name = tostring(name)
  else
    self.name = getmetatable(self).__name__ .. "-" .. table.concat(identity, ":")
  end
  if daemon == nil then daemon = parent.daemon end
  self.daemon = daemon and true or false
  self._started = false
  self._closed = false
end

function Process:run()
  local target = self._target
  if target == nil then return end
  local args = self._args
  local n = args.n or #args
  if self._kwargs ~= nil then
    local a = { unpack(args, 1, n) }
    a[n + 1] = self._kwargs
    return target(unpack(a, 1, n + 1))
  end
  return target(unpack(args, 1, n))
end

local function check_closed(self)
  check(not rawget(self, "_closed"), ValueError, "process object is closed")
end

-- The exit code a child leaves with after 'err' escaped its body.
local function report_child_error(name, err)
  if isinstance(err, SystemExit) then
    local code = err.code
    if code == nil then return 0 end
    if math.type(code) == "integer" then return code end
    io.stderr:write(tostring(code), "\n")
    return 1
  end
  io.stderr:write("Process ", tostring(name), ":\n", threading._format_error(err), "\n")
  return 1
end

-- Ends the child: joins its threads and its own children, flushes,
-- _exit.  Never returns.
local function child_exit(code)
  pcall(threading._shutdown)
  pcall(M._exit_function)
  io.stdout:flush()
  io.stderr:flush()
  _mp._exit(code)
end

-- In the child, right after fork: forget the parent's children (their
-- pidfds too) and run the after-fork functions.
local function child_reset(proc)
  for p in pairs(_children) do
    local fd = rawget(p, "_pidfd")
    if fd then _mp.close_fd(fd) end
  end
  _children = {}
  _counter = 0
  _parent_process = M._ParentProcess(_current_process)
  _current_process = proc
  for i = 1, #_after_fork do pcall(_after_fork[i]) end
end

local function bootstrap(self)
  local code = 0
  local ok, err = xpcall(function()
    child_reset(self)
    rawset(self, "pid", getpid())
    self:run()
  end, threading.msghandler or require("_threading").msghandler)
  if not ok then code = report_child_error(self.name, err) end
  child_exit(code)
end

function M._register_after_fork(fn)
  _after_fork[#_after_fork + 1] = fn
end

-- Reaps children that have ended (as Python's _cleanup).
local function cleanup()
  for p in pairs(_children) do
    if p:_poll() ~= nil then _children[p] = nil end
  end
end

function Process:start()
  check_closed(self)
  check(not self._started, AssertionError, "cannot start a process twice")
  check(self._parent_pid == getpid(), AssertionError,
    "can only start a process object created by current process")
  check(not M.current_process().daemon, AssertionError,
    "daemonic processes are not allowed to have children")
  cleanup()
  self._started = true
  -- only daemonic children die with their parent (however it dies), as
  -- in Python; the others are orphaned and go on
  local pid = _mp.fork(self.daemon)
  if pid == 0 then bootstrap(self) end   -- never returns
  self.pid = pid
  self._pidfd = _mp.pidfd(pid)
  _children[self] = true
end

function Process:_reaped(code)
  rawset(self, "exitcode", code)
  local fd = rawget(self, "_pidfd")
  if fd then
    _mp.close_fd(fd)
    self._pidfd = nil
  end
  _children[self] = nil
  return code
end

-- The exit code if it has ended (reaping it), else nil; never blocks.
function Process:_poll()
  local code = rawget(self, "exitcode")
  if code ~= nil or not self._started or rawget(self, "_parent_pid") ~= getpid() then
    return code
  end
  code = _mp.wait(self.pid, self._pidfd, 0)
  if code ~= nil then self:_reaped(code) end
  return code
end

-- exitcode is computed while unreaped: reading it polls, as in Python.
function Process:__getattr__(key)
  if key == "exitcode" and rawget(self, "_started") and self ~= _current_process then
    return self:_poll()
  elseif key == "ident" then
    return rawget(self, "pid")
  elseif key == "sentinel" then
    check_closed(self)
    return rawget(self, "_pidfd")
  end
  return nil
end

function Process:join(timeout)
  check_closed(self)
  check(self._parent_pid == getpid(), AssertionError, "can only join a child process")
  check(self._started, AssertionError, "can only join a started process")
  if type(timeout) == "table" then timeout = timeout.timeout end
  if timeout ~= nil and type(timeout) ~= "number" then
    raise(TypeError("join() argument 'timeout' must be a number or nil, not " .. type(timeout)))
  end
  if rawget(self, "exitcode") ~= nil then return end
  local code = _mp.wait(self.pid, self._pidfd, timeout)
  if code ~= nil then self:_reaped(code) end
end

function Process:is_alive()
  check_closed(self)
  if self == _current_process then return true end
  check(self._parent_pid == getpid(), AssertionError, "can only test a child process")
  if not self._started then return false end
  return self:_poll() == nil
end

local function signal(self, sig)
  check_closed(self)
  if self._started and self:_poll() == nil then _mp.kill(self.pid, sig) end
end

function Process:terminate() signal(self, _mp.SIGTERM) end
function Process:kill() signal(self, _mp.SIGKILL) end

function Process:close()
  if rawget(self, "_closed") then return end
  if self._started then
    if self:_poll() == nil then
      raise(ValueError("Cannot close a process while it is still running. "
        .. "You should first call join() or terminate()."))
    end
  end
  self._closed = true
end

function Process:__tostring()
  local status, exitcode
  local cls = getmetatable(self).__name__
  if self == _current_process then status = "started"
  elseif rawget(self, "_closed") then status = "closed"
  elseif rawget(self, "_parent_pid") ~= getpid() then status = "unknown"
  elseif not rawget(self, "_started") then status = "initial"
  else
    exitcode = self:_poll()
    status = exitcode ~= nil and "stopped" or "started"
  end
  local info = { cls, ("name='%s'"):format(self.name) }
  if rawget(self, "pid") and self ~= _current_process then
    info[#info + 1] = "pid=" .. tostring(rawget(self, "pid"))
  end
  info[#info + 1] = "parent=" .. tostring(rawget(self, "_parent_pid") or "None")
  info[#info + 1] = status
  if exitcode ~= nil then info[#info + 1] = "exitcode=" .. exitcode_name(exitcode) end
  if self.daemon then info[#info + 1] = "daemon" end
  return "<" .. table.concat(info, " ") .. ">"
end

-- The main process, and a child's view of its parent.
local _MainProcess = class("_MainProcess", Process)
function _MainProcess:__init__()
  self._identity = {}
  self.name = "MainProcess"
  self.daemon = false
  self._started = true
  self._closed = false
  self._parent_pid = nil
  self.pid = getpid()
end
function _MainProcess:is_alive() return true end

local _ParentProcess = class("_ParentProcess", Process)
M._ParentProcess = _ParentProcess
function _ParentProcess:__init__(parent)
  self._identity = parent and parent._identity or {}
  self.name = parent and parent.name or "MainProcess"
  self.daemon = false
  self._closed = false
  self.pid = os.getppid()
  self._parent_pid = parent and rawget(parent, "_parent_pid") or nil
end
function _ParentProcess:is_alive() return os.getppid() == self.pid end
function _ParentProcess:join(timeout)
  local deadline = timeout and require("time").monotonic() + timeout
  while self:is_alive() do
    if deadline and require("time").monotonic() >= deadline then return end
    require("time").sleep(0.01)
  end
end
function _ParentProcess:__tostring()
  return ("<_ParentProcess name='%s' parent=%s unknown>"):format(self.name, tostring(self.pid))
end

_current_process = _MainProcess()

function M.current_process() return _current_process end
function M.parent_process() return _parent_process end

function M.active_children()
  cleanup()
  local list = {}
  for p in pairs(_children) do list[#list + 1] = p end
  table.sort(list, function(a, b) return a.pid < b.pid end)
  return setmetatable(list, {
    __tostring = function(l)
      local parts = {}
      for i = 1, #l do parts[i] = tostring(l[i]) end
      return "[" .. table.concat(parts, ", ") .. "]"
    end,
  })
end

function M.cpu_count()
  local n = os.cpu_count()
  if n == nil then raise(NotImplementedError("cannot determine number of cpus")) end
  return n
end

function M.get_start_method(allow_none) return "fork" end
function M.get_all_start_methods() return { "fork" } end
function M.set_start_method(method, force)
  if type(method) == "table" then method, force = method[1] or method.method, method.force end
  if method ~= "fork" and not (method == nil and force) then
    raise(ValueError(("start method %s is not supported: mtlua always forks"):format(
      type(method) == "string" and ("'" .. method .. "'") or tostring(method))))
  end
end
function M.get_context(method)
  if method ~= nil and method ~= "fork" then
    raise(ValueError("cannot find context for '" .. tostring(method) .. "'"))
  end
  return M
end
function M.freeze_support() end

-- At exit (and at the end of a child): terminate the daemonic children,
-- then join every child, as CPython's util._exit_function.
function M._exit_function()
  for p in pairs(_children) do
    if p.daemon and p:_poll() == nil then _mp.kill(p.pid, _mp.SIGTERM) end
  end
  for p in pairs(_children) do
    if p:_poll() == nil then p:join() end
  end
end
_mp.atexit(M._exit_function)

-- Manager(): lib/multiprocessing/managers.lua (no server process: the
-- shared objects travel by themselves; dict/list/Namespace are proxies
-- of a table in shared memory).
local managers = require "multiprocessing.managers"
M.Manager, M.SyncManager = managers.Manager, managers.SyncManager

-- The Pool lives in pool (issue 5); reachable here once it exists.
local LAZY = { Pool = true, ThreadPool = true, TimeoutError = true }
setmetatable(M, { __index = function(t, k)
  if LAZY[k] then
    local ok, pool = pcall(require, "pool")
    local v = ok and type(pool) == "table" and pool[k] or nil
    if v == nil and k == "TimeoutError" then   -- no pool module: our own
      v = class("TimeoutError", ProcessError)
    end
    rawset(t, k, v)
    return v
  end
  return nil
end })

return M
