-- gevent.queue: Queue(maxsize) for greenlets; a get/put that times out
-- raises queue.Empty/queue.Full (the classes of the queue module).
local gevent = require "gevent"
local H = require "_hub"
local ev = require "gevent.event"
local stdq = require "queue"
local M = { Empty = stdq.Empty, Full = stdq.Full }

local Queue = class("Queue")
M.Queue = Queue
function Queue:__init__(maxsize)
  if type(maxsize) == "table" then maxsize = maxsize.maxsize end
  if maxsize ~= nil and math.type(maxsize) ~= "integer" then
    raise(TypeError("Queue() argument 'maxsize' must be an integer or nil"))
  end
  self.maxsize = (maxsize and maxsize > 0) and maxsize or nil
  self._items, self._first, self._last = {}, 1, 0
  self._getters = { _waiters = {} }
  self._putters = { _waiters = {} }
end
function Queue:qsize() return self._last - self._first + 1 end
Queue.__len = Queue.qsize
function Queue:empty() return self:qsize() == 0 end
function Queue:full() return self.maxsize ~= nil and self:qsize() >= self.maxsize end

local function block_args(block, timeout, fname)
  if type(block) == "table" then block, timeout = block.block, block.timeout end
  if block == nil then block = true end
  if timeout ~= nil and timeout < 0 then raise(ValueError("'timeout' must be a non-negative number")) end
  return block, timeout
end

local function wake_first(side)
  local w = side._waiters[1]
  if w then H.schedule(w, true) end
end

function Queue:put(item, block, timeout)
  block, timeout = block_args(block, timeout, "put")
  if self:full() then
    if not block then raise(M.Full()) end
    local me = self
    if not ev._wait_until(self._putters, function() return not me:full() end, timeout) then
      raise(M.Full())
    end
  end
  self._last = self._last + 1
  self._items[self._last] = item
  wake_first(self._getters)
  if not self:full() then wake_first(self._putters) end
end
function Queue:put_nowait(item) return self:put(item, false) end

function Queue:get(block, timeout)
  block, timeout = block_args(block, timeout, "get")
  if self:qsize() == 0 then
    if not block then raise(M.Empty()) end
    local me = self
    if not ev._wait_until(self._getters, function() return me:qsize() > 0 end, timeout) then
      raise(M.Empty())
    end
  end
  local i = self._first
  local item = self._items[i]
  self._items[i] = nil
  self._first = i + 1
  wake_first(self._putters)
  if self:qsize() > 0 then wake_first(self._getters) end
  return item
end
function Queue:get_nowait() return self:get(false) end
function Queue:peek() return self._items[self._first] end

M.JoinableQueue = Queue
return M
