-- gevent.lock: Semaphore, BoundedSemaphore, RLock for greenlets.
local gevent = require "gevent"
local H = require "_hub"
local ev = require "gevent.event"
local getcurrent = gevent.getcurrent
local M = {}

local Semaphore = class("Semaphore")
M.Semaphore = Semaphore
function Semaphore:__init__(value)
  if value == nil then value = 1 end
  if math.type(value) ~= "integer" then raise(TypeError("Semaphore() argument 'value' must be an integer")) end
  if value < 0 then raise(ValueError("semaphore initial value must be >= 0")) end
  self.counter = value
  self._waiters = {}
end
local function available(self) return self.counter > 0 end
function Semaphore:locked() return self.counter <= 0 end
function Semaphore:acquire(blocking, timeout)
  if type(blocking) == "table" then blocking, timeout = blocking.blocking, blocking.timeout end
  if blocking == nil then blocking = true end
  if self.counter > 0 then self.counter = self.counter - 1 return true end
  if not blocking then return false end
  if not ev._wait_until(self, available, timeout) then return false end
  self.counter = self.counter - 1
  return true
end
function Semaphore:release()
  self.counter = self.counter + 1
  local w = self._waiters[1]
  if w then H.schedule(w, true) end
  return self.counter
end
function Semaphore:__enter__() self:acquire() return self end
function Semaphore:__exit__() self:release() end
function Semaphore:wait(timeout)
  if self.counter > 0 then return self.counter end
  ev._wait_until(self, available, timeout)
  return self.counter
end

local BoundedSemaphore = class("BoundedSemaphore", Semaphore)
M.BoundedSemaphore = BoundedSemaphore
function BoundedSemaphore:__init__(value)
  Semaphore.__init__(self, value)
  self._initial = self.counter
end
function BoundedSemaphore:release()
  if self.counter >= self._initial then raise(ValueError("Semaphore released too many times")) end
  return Semaphore.release(self)
end

local RLock = class("RLock")
M.RLock = RLock
function RLock:__init__() self._block = Semaphore(1); self._owner = nil; self._count = 0 end
function RLock:acquire(blocking, timeout)
  local me = getcurrent()
  if self._owner == me then self._count = self._count + 1 return true end
  if not self._block:acquire(blocking, timeout) then return false end
  self._owner, self._count = me, 1
  return true
end
function RLock:release()
  if self._owner ~= getcurrent() then raise(RuntimeError("cannot release un-acquired lock")) end
  self._count = self._count - 1
  if self._count == 0 then self._owner = nil; self._block:release() end
end
function RLock:locked() return self._block:locked() end
function RLock:__enter__() self:acquire() return self end
function RLock:__exit__() self:release() end

return M
