-- multiprocessing/synchronize.lua: the process-shared Lock, RLock,
-- Semaphore, BoundedSemaphore, Condition, Event, Barrier, and Value /
-- Array / RawValue / RawArray (re-exported by multiprocessing).
--
-- The objects are C (lua_bindings/mpsync.c: robust process-shared state
-- in anonymous shared memory); this file adds what is plain Lua on top,
-- as CPython's synchronize.py does on _multiprocessing.SemLock:
-- Condition's delegation to its lock and wait_for, and Barrier, which is
-- threading's Barrier with its state in a shared Array and a shared
-- Condition.  Every object works across fork and can be passed (pickled)
-- to a running process while its sender lives.
local _sync = require "_mpsync"
local threading = require "threading"

local M = {}
local rawget, rawset, next, type, tostring, getmetatable = rawget, rawset, next, type, tostring, getmetatable

M.Lock, M.RLock = _sync.Lock, _sync.RLock
M.Semaphore, M.BoundedSemaphore = _sync.Semaphore, _sync.BoundedSemaphore
M.Event, M.Condition = _sync.Event, _sync.Condition
M.Value, M.Array = _sync.Value, _sync.Array
M.BrokenBarrierError = threading.BrokenBarrierError

------------------------------------------------------------- Condition

local Condition = _sync.Condition

function Condition:acquire(...) return self._lock:acquire(...) end
function Condition:release() return self._lock:release() end
function Condition:__enter__()
  self._lock:__enter__()
  return self
end
function Condition:__exit__() self._lock:release() end
Condition.wait_for = threading.Condition.wait_for   -- generic: calls self:wait
Condition.notifyAll = Condition.notify_all
function Condition:__tostring()
  return ("<Condition(%s, %d)>"):format(tostring(self._lock), self:_n_waiting())
end

----------------------------------------------------- RawValue, RawArray

-- Shared memory without a lock (Python's sharedctypes.RawValue/RawArray).
function M.RawValue(typecode, init)
  if type(typecode) == "table" then typecode, init = typecode[1], typecode[2] end
  return _sync.Value(typecode, init, { lock = false })
end

function M.RawArray(typecode, size_or_initializer)
  if type(typecode) == "table" then
    typecode, size_or_initializer = typecode[1], typecode[2]
  end
  return _sync.Array(typecode, size_or_initializer, { lock = false })
end

--------------------------------------------------------------- Barrier

-- threading.Barrier's algorithm, unchanged; its _state and _count live
-- in a shared Array (read and written through __getattr__/__newindex),
-- its Condition is this module's.
local TBarrier = threading.Barrier
local Barrier = class("Barrier", TBarrier)
M.Barrier = Barrier
_sync.register_class("multiprocessing.Barrier", Barrier)

local SHARED = { _state = 1, _count = 2 }

function Barrier:__init__(parties, action, timeout)
  rawset(self, "_shared", _sync.Array("q", 2, { lock = false }))
  TBarrier.__init__(self, parties, action, timeout)
  rawset(self, "_cond", _sync.Condition(_sync.Lock()))
end

function Barrier:__getattr__(key)
  local i = SHARED[key]
  if i then return rawget(self, "_shared")[i] end
  return TBarrier.__getattr__(self, key)
end

function Barrier:__newindex(key, value)
  local i = SHARED[key]
  if i then rawget(self, "_shared")[i] = value
  else rawset(self, key, value) end
end

-- Passed by its fields (the shared array and condition reduce themselves).
local function fields_of(obj)
  local f = {}
  for k, v in next, obj do f[k] = v end
  return f
end
M._fields_of = fields_of

function Barrier:__reduce__()
  local cls = getmetatable(self)
  return _sync.rebuild_instance, { cls == Barrier and "multiprocessing.Barrier" or cls, fields_of(self) }
end

return M
