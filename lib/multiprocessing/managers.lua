-- multiprocessing/managers.lua: Manager() / SyncManager (re-exported by
-- multiprocessing).
--
-- CPython's manager is a server process that owns the objects and
-- proxies that talk to it over a socket.  Here there is no server:
--  * Queue, JoinableQueue, Lock, RLock, Semaphore, BoundedSemaphore,
--    Condition, Event, Barrier, Value and Array ARE the process-shared
--    objects of multiprocessing (shared memory, robust locks): they
--    already work from any process, forked or reached by pickling
--    (through a queue, a pipe, a pool task), so the manager hands them
--    out as they are.  They live as long as some process holds them;
--    shutdown() does not revoke them.
--  * dict(), list() and Namespace() are proxies of a table kept pickled
--    in a shared "box" (_mpsync: a growable shared segment under a
--    robust process-shared lock).  Every operation is atomic: it takes
--    the lock, reads the table, changes it, writes it back.  Reads are
--    served from a per-process copy while the box's version is unchanged.
--    Values come back as copies (mutating a table read from a proxy does
--    not change the shared one: assign it back), as with Python proxies.
--    After shutdown(), using them raises ConnectionRefusedError.
-- The memory goes away with the last process that maps it, however the
-- processes end; a process that did not inherit a proxy can open it only
-- while the manager's creator lives (as with a Python manager server).
local _sync = require "_mpsync"
local pickle = require "pickle"
local sync = require "multiprocessing.synchronize"

local M = {}
local type, pairs, next, rawget, rawset, select = type, pairs, next, rawget, rawset, select
local tostring, getmetatable, pcall, error = tostring, getmetatable, pcall, error
local Box = _sync._SharedBox

------------------------------------------------------------ the boxes

local cache = setmetatable({}, { __mode = "k" })   -- box -> {v=, t=}

local function box_of(proxy)
  return rawget(proxy, "_box")
end

-- The current table (shared with the cache: never hand it out).
local function snapshot(proxy)
  local box = box_of(proxy)
  local v = box:version()
  local c = cache[box]
  if c and c.v == v then return c.t end
  box:acquire()
  local ok, t = pcall(box.read, box)
  box:release()
  if not ok then error(t, 0) end
  cache[box] = { v = v, t = t }
  return t
end

local function copy(v)
  if type(v) == "table" then return pickle.loads(pickle.dumps(v)) end
  return v
end

-- fn(t, ...) changes the table t in place; the box holds the result.
local function modify(proxy, fn, ...)
  local box = box_of(proxy)
  box:acquire()
  local ok, r = pcall(function(...)
    local t = box:read()
    local r = fn(t, ...)
    box:write(t)
    return r
  end, ...)
  box:release()
  if not ok then error(r, 0) end
  return r
end

local function new_box(manager, init)
  local box = Box()
  box:acquire()
  local ok, err = pcall(box.write, box, init)
  box:release()
  if not ok then error(err, 0) end
  manager._boxes[#manager._boxes + 1] = box
  return box
end

local function reduce_as(qualname)
  return function(self)
    return _sync.rebuild_instance, { qualname, { _box = box_of(self) } }
  end
end

local function proxy_tostring(self)
  return ("<%s object, typeid '%s' at %s>"):format(getmetatable(self).__name__,
    getmetatable(self)._typeid, tostring(box_of(self)):match("0x%x+") or "?")
end

------------------------------------------------------------ DictProxy

local DictProxy = class("DictProxy")
M.DictProxy = DictProxy
DictProxy._typeid = "dict"
_sync.register_class("multiprocessing.DictProxy", DictProxy)
DictProxy.__reduce__ = reduce_as("multiprocessing.DictProxy")
DictProxy.__tostring = proxy_tostring

function DictProxy:__init__(box) rawset(self, "_box", box) end

-- d[k]: nil when absent (Lua's way; d:get(k, default) as Python's get)
function DictProxy:__getattr__(key)
  return copy(snapshot(self)[key])
end

-- d[k] = v (v = nil deletes the key)
function DictProxy:__newindex(key, value)
  if key == nil then raise(TypeError("dict proxy: key must not be nil")) end
  modify(self, function(t) t[key] = value end)
end

function DictProxy:get(key, default)
  local v = snapshot(self)[key]
  if v == nil then return default end
  return copy(v)
end

function DictProxy:__len()
  local n = 0
  for _ in next, snapshot(self) do n = n + 1 end
  return n
end

function DictProxy:keys()
  local list = {}
  for k in next, snapshot(self) do list[#list + 1] = k end
  return list
end

function DictProxy:values()
  local list = {}
  for _, v in next, snapshot(self) do list[#list + 1] = copy(v) end
  return list
end

function DictProxy:items()
  local list = {}
  for k, v in next, snapshot(self) do list[#list + 1] = { k, copy(v) } end
  return list
end

-- pairs(d): over a copy taken when the loop starts
function DictProxy:__pairs()
  return next, self:copy(), nil
end

function DictProxy:copy()
  return copy(snapshot(self))
end

function DictProxy:pop(key, ...)
  local has_default = select("#", ...) > 0
  local default = ...
  return modify(self, function(t)
    local v = t[key]
    if v == nil then
      if has_default then return default end
      raise(KeyError(key))
    end
    t[key] = nil
    return v
  end)
end

function DictProxy:setdefault(key, default)
  return modify(self, function(t)
    if t[key] == nil then t[key] = default end
    return t[key]
  end)
end

function DictProxy:update(other)
  if type(other) == "table" and getmetatable(other) == DictProxy then other = other:copy() end
  if type(other) ~= "table" then
    raise(TypeError("update() argument must be a table, not " .. type(other)))
  end
  modify(self, function(t) for k, v in pairs(other) do t[k] = v end end)
end

function DictProxy:clear()
  modify(self, function(t) for k in pairs(t) do t[k] = nil end end)
end

------------------------------------------------------------ ListProxy

-- The box holds {n = length, [1..n] = items}: nil items are kept.
local ListProxy = class("ListProxy")
M.ListProxy = ListProxy
ListProxy._typeid = "list"
_sync.register_class("multiprocessing.ListProxy", ListProxy)
ListProxy.__reduce__ = reduce_as("multiprocessing.ListProxy")
ListProxy.__tostring = proxy_tostring

function ListProxy:__init__(box) rawset(self, "_box", box) end

-- l[i] (1-based; nil out of range, so that ipairs ends)
function ListProxy:__getattr__(i)
  if math.type(i) ~= "integer" then return nil end
  local t = snapshot(self)
  if i < 1 or i > t.n then return nil end
  return copy(t[i])
end

local function check_index(t, i, what)
  if math.type(i) ~= "integer" then
    raise(TypeError(what .. ": list indices must be integers, not " .. (math.type(i) or type(i))))
  end
  if i < 1 or i > t.n then raise(IndexError(what .. ": list index out of range")) end
end

function ListProxy:__newindex(i, value)
  modify(self, function(t)
    check_index(t, i, "list assignment")
    t[i] = value
  end)
end

function ListProxy:__len() return snapshot(self).n end

function ListProxy:append(value)
  modify(self, function(t)
    t.n = t.n + 1
    t[t.n] = value
  end)
end

function ListProxy:extend(items)
  if type(items) == "table" and getmetatable(items) == ListProxy then items = items:copy() end
  if type(items) ~= "table" then
    raise(TypeError("extend() argument must be a table, not " .. type(items)))
  end
  modify(self, function(t)
    for i = 1, items.n or #items do t[t.n + i] = items[i] end
    t.n = t.n + (items.n or #items)
  end)
end

function ListProxy:insert(i, value)
  modify(self, function(t)
    if math.type(i) ~= "integer" then raise(TypeError("insert(): index must be an integer")) end
    if i < 1 then i = 1 elseif i > t.n + 1 then i = t.n + 1 end
    for j = t.n, i, -1 do t[j + 1] = t[j] end
    t[i] = value
    t.n = t.n + 1
  end)
end

-- pop(i = #l): removes and returns item i
function ListProxy:pop(i)
  return modify(self, function(t)
    if t.n == 0 then raise(IndexError("pop from empty list")) end
    if i == nil then i = t.n end
    check_index(t, i, "pop")
    local v = t[i]
    for j = i, t.n - 1 do t[j] = t[j + 1] end
    t[t.n] = nil
    t.n = t.n - 1
    return v
  end)
end

function ListProxy:index(value)
  local t = snapshot(self)
  for i = 1, t.n do if t[i] == value then return i end end
  raise(ValueError("list.index(x): x not in list"))
end

function ListProxy:count(value)
  local t, c = snapshot(self), 0
  for i = 1, t.n do if t[i] == value then c = c + 1 end end
  return c
end

function ListProxy:remove(value)
  modify(self, function(t)
    for i = 1, t.n do
      if t[i] == value then
        for j = i, t.n - 1 do t[j] = t[j + 1] end
        t[t.n] = nil
        t.n = t.n - 1
        return
      end
    end
    raise(ValueError("list.remove(x): x not in list"))
  end)
end

function ListProxy:sort(lt)
  modify(self, function(t)
    local a = {}
    for i = 1, t.n do a[i] = t[i] end
    table.sort(a, lt)
    for i = 1, t.n do t[i] = a[i] end
  end)
end

-- copy(): a plain array table (with .n)
function ListProxy:copy()
  return copy(snapshot(self))
end

function ListProxy:clear()
  modify(self, function(t)
    for i = 1, t.n do t[i] = nil end
    t.n = 0
  end)
end

------------------------------------------------------- NamespaceProxy

local NamespaceProxy = class("NamespaceProxy")
M.NamespaceProxy = NamespaceProxy
NamespaceProxy._typeid = "Namespace"
_sync.register_class("multiprocessing.NamespaceProxy", NamespaceProxy)
NamespaceProxy.__reduce__ = reduce_as("multiprocessing.NamespaceProxy")

function NamespaceProxy:__init__(box) rawset(self, "_box", box) end

function NamespaceProxy:__getattr__(key)
  return copy(snapshot(self)[key])
end

function NamespaceProxy:__newindex(key, value)
  modify(self, function(t) t[key] = value end)
end

function NamespaceProxy:__pairs()
  return next, copy(snapshot(self)), nil
end

function NamespaceProxy:__tostring()
  local names = {}
  for k in next, snapshot(self) do names[#names + 1] = tostring(k) end
  table.sort(names)
  local t = snapshot(self)
  for i, k in ipairs(names) do
    local v = t[k]
    names[i] = k .. "=" .. (type(v) == "string" and ("'" .. v .. "'") or tostring(v))
  end
  return "Namespace(" .. table.concat(names, ", ") .. ")"
end

---------------------------------------------------------- SyncManager

local mp   -- multiprocessing, fetched when first needed (it loads us lazily)
local function mpmod()
  mp = mp or require "multiprocessing"
  return mp
end

local SyncManager = class("SyncManager")
M.SyncManager = SyncManager

function SyncManager:__init__()
  self._boxes = {}
  self._state = "initial"
end

function SyncManager:start()
  if self._state == "started" then raise(mpmod().ProcessError("Already started server")) end
  if self._state == "shutdown" then raise(mpmod().ProcessError("Manager has shut down")) end
  self._state = "started"
  self._pid = os.getpid()
  return self
end

-- Closes dict/list/Namespace proxies for every process; the shared
-- objects it handed out (queues, locks...) stay usable.
function SyncManager:shutdown()
  if self._state ~= "started" or self._pid ~= os.getpid() then return end
  for _, box in ipairs(self._boxes) do box:close() end
  self._boxes = {}
  self._state = "shutdown"
end

function SyncManager:__enter__()
  if self._state == "initial" then self:start() end
  return self
end

function SyncManager:__exit__() self:shutdown() end

function SyncManager:__tostring()
  return ("<SyncManager %s>"):format(self._state)
end

local function check_started(self)
  if type(self) ~= "table" or getmetatable(self) == nil or self._state == nil then
    raise(TypeError("expected a Manager (did you call with '.' instead of ':'?)"))
  end
  if self._state ~= "started" then
    raise(mpmod().ProcessError("Manager is not started (state: " .. self._state .. ")"))
  end
end

local function handing_out(name, make)
  SyncManager[name] = function(self, ...)
    check_started(self)
    return make(...)
  end
end

handing_out("Queue", function(...) return mpmod().Queue(...) end)
handing_out("JoinableQueue", function(...) return mpmod().JoinableQueue(...) end)
handing_out("Lock", function() return sync.Lock() end)
handing_out("RLock", function() return sync.RLock() end)
handing_out("Semaphore", function(...) return sync.Semaphore(...) end)
handing_out("BoundedSemaphore", function(...) return sync.BoundedSemaphore(...) end)
handing_out("Condition", function(...) return sync.Condition(...) end)
handing_out("Event", function() return sync.Event() end)
handing_out("Barrier", function(...) return sync.Barrier(...) end)
-- Manager().Value(typecode, value, lock=True) / Array(typecode, sequence, lock=True)
handing_out("Value", function(...) return sync.Value(...) end)
handing_out("Array", function(...) return sync.Array(...) end)

local function plain_copy(v, what)
  if v == nil then return {} end
  local mt = type(v) == "table" and getmetatable(v)
  if mt == DictProxy or mt == ListProxy then return v:copy() end
  if type(v) ~= "table" then
    raise(TypeError(what .. "() argument must be a table, not " .. type(v)))
  end
  return copy(v)
end

function SyncManager:dict(init)
  check_started(self)
  return DictProxy(new_box(self, plain_copy(init, "dict")))
end

function SyncManager:list(init)
  check_started(self)
  local t = plain_copy(init, "list")
  t.n = t.n or #t
  return ListProxy(new_box(self, t))
end

function SyncManager:Namespace(init)
  check_started(self)
  return NamespaceProxy(new_box(self, plain_copy(init, "Namespace")))
end

-- multiprocessing.Manager(): a started SyncManager
function M.Manager()
  return SyncManager():start()
end

return M
