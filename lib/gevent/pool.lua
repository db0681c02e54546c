-- gevent.pool: Group (a set of greenlets) and Pool(size) (a Group that
-- waits for a free slot before spawning).
local gevent = require "gevent"
local lock = require "gevent.lock"
local M = {}

local Group = class("Group")
M.Group = Group
function Group:__init__(...) self.greenlets = {}; for _, g in ipairs({...}) do self:add(g) end end
function Group:add(g)
  self.greenlets[g] = true
  local me = self
  g:link(function(done) me:discard(done) end)
end
function Group:discard(g) self.greenlets[g] = nil end
function Group:__len() local n = 0 for _ in pairs(self.greenlets) do n = n + 1 end return n end
function Group:_wait_slot() end
function Group:spawn(f, ...)
  self:_wait_slot()
  local g = gevent.spawn(f, ...)
  self:add(g)
  return g
end
function Group:join(timeout, raise_error)
  local list = {}
  for g in pairs(self.greenlets) do list[#list + 1] = g end
  gevent.joinall(list, timeout, raise_error)
  return next(self.greenlets) == nil
end
function Group:kill(exception, block, timeout)
  local list = {}
  for g in pairs(self.greenlets) do list[#list + 1] = g end
  gevent.killall(list, exception, block, timeout)
end
-- map(f, iterable) -> results in order, with .n
function Group:map(f, iterable)
  local gs = {}
  for i = 1, (iterable.n or #iterable) do gs[i] = self:spawn(f, iterable[i]) end
  local out = { n = #gs }
  for i = 1, #gs do out[i] = gs[i]:get() end
  return out
end
function Group:apply(f, args) return self:spawn(f, table.unpack(args or {})):get() end
function Group:apply_async(f, args, callback)
  local g = self:spawn(f, table.unpack(args or {}))
  if callback then g:link(function(done) if done:successful() then callback(done.value) end end) end
  return g
end
-- imap_unordered(f, iterable): for i, result in ... (in completion order)
function Group:imap_unordered(f, iterable)
  local q = require("gevent.queue").Queue()
  local n = iterable.n or #iterable
  local me = self
  gevent.spawn(function()
    for i = 1, n do
      local g = me:spawn(f, iterable[i])
      g:link(function(done) q:put({ i, done }) end)
    end
  end)
  local got = 0
  return function()
    if got >= n then return nil end
    got = got + 1
    local item = q:get()
    return item[1], item[2]:get()
  end
end
M.Group = Group

local Pool = class("Pool", Group)
M.Pool = Pool
function Pool:__init__(size)
  Group.__init__(self)
  if size ~= nil and (math.type(size) ~= "integer" or size < 1) then
    raise(ValueError("Pool() argument 'size' must be a positive integer or nil"))
  end
  self.size = size
  if size then self._sem = lock.Semaphore(size) end
end
function Pool:_wait_slot()
  if self._sem then self._sem:acquire() end
end
function Pool:add(g)
  Group.add(self, g)
end
function Pool:discard(g)
  if self.greenlets[g] and self._sem then self._sem:release() end
  Group.discard(self, g)
end
function Pool:free_count()
  if not self.size then return math.huge end
  return self._sem.counter
end
function Pool:full() return self:free_count() <= 0 end

return M
