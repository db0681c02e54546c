-- gevent.event: Event and AsyncResult for greenlets of one hub.
local gevent = require "gevent"
local H = require "_hub"
local getcurrent, wait_for_wake, remove_item = gevent.getcurrent, gevent._wait_for_wake, gevent._remove_item
local monotonic = require("time").monotonic
local M = {}

local function wake_all(waiters, value)
  for i = 1, #waiters do H.schedule(waiters[i], value) end
end

-- waits while not done(); returns done()
local function wait_until(self, done, timeout)
  timeout = gevent._opt_timeout(timeout, "wait")
  if done(self) then return true end
  local cur = getcurrent()
  local waiters = self._waiters
  waiters[#waiters + 1] = cur
  local deadline = timeout and monotonic() + timeout
  while not done(self) do
    local ok, v = pcall(wait_for_wake, deadline and math.max(deadline - monotonic(), 0))
    if not ok then remove_item(waiters, cur) error(v, 0) end
    if v == gevent._TIMED_OUT then break end
  end
  remove_item(waiters, cur)
  return done(self)
end

local Event = class("Event")
M.Event = Event
function Event:__init__() self._flag = false; self._waiters = {} end
function Event:is_set() return self._flag end
Event.isSet, Event.ready = Event.is_set, Event.is_set
function Event:set()
  self._flag = true
  local w = self._waiters
  self._waiters = {}
  wake_all(w, true)
end
function Event:clear() self._flag = false end
local function flag(self) return self._flag end
function Event:wait(timeout) return wait_until(self, flag, timeout) end
function Event:__tostring() return ("<Event %s>"):format(self._flag and "set" or "unset") end

local AsyncResult = class("AsyncResult")
M.AsyncResult = AsyncResult
function AsyncResult:__init__() self._done = false; self._waiters = {} end
function AsyncResult:ready() return self._done end
function AsyncResult:successful() return self._done and self.exception == nil end
local function finish(self)
  self._done = true
  local w = self._waiters
  self._waiters = {}
  wake_all(w, true)
end
function AsyncResult:set(value) self.value = value; finish(self) end
function AsyncResult:set_exception(e) self.exception = e; finish(self) end
local function done(self) return self._done end
function AsyncResult:wait(timeout)
  wait_until(self, done, timeout)
  return self.value
end
function AsyncResult:get(block, timeout)
  if type(block) == "table" then block, timeout = block.block, block.timeout end
  if block == nil then block = true end
  if not self._done then
    if not block then raise(gevent.Timeout()) end
    if not wait_until(self, done, timeout) then raise(gevent.Timeout(timeout)) end
  end
  if self.exception ~= nil then error(self.exception, 0) end
  return self.value
end
function AsyncResult:get_nowait() return self:get(false) end
M._wait_until = wait_until

return M
