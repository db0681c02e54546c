-- prelude.lua: the globals of every mtlua state: class, isinstance,
-- with, raise, the exception classes and __name__.
-- Run once by mtlua_openlibs with the C helpers as arguments.
local register_class, c_with = ...

local rawget, rawset, rawequal = rawget, rawset, rawequal
local getmetatable, setmetatable = getmetatable, setmetatable
local type, select, error, tostring = type, select, error, tostring
local pack = table.pack

-- Every class made by class(): class -> true (weak, so classes die).
local is_class = setmetatable({}, { __mode = "k" })
-- class -> set of its subclasses, to hand down metamethods added later.
local subclasses = setmetatable({}, { __mode = "k" })
-- Classes by __name__, for pickle: the receiver's class of that name.
local by_name = setmetatable({}, { __mode = "v" })

-- Metamethod events Lua reads with rawget from the metatable: a
-- subclass must hold its own copy of those its bases define.
local EVENTS = {}
for e in ([[__tostring __eq __lt __le __close __call __add __sub __mul
  __div __mod __pow __unm __idiv __band __bor __bxor __shl __shr __bnot
  __concat __len __gc __pairs __newindex __name __mode]]):gmatch("%S+") do
  EVENTS[e] = true
end

local function each_subclass(cls, fn)
  local subs = subclasses[cls]
  if subs then for sub in pairs(subs) do fn(sub) end end
end

-- Python's __getattr__(self, key): runs only when the class chain has
-- no such key, so methods keep their speed everywhere else.  (Assigning
-- __index on a class replaces method lookup: define __getattr__.)
local function index_with(cls)
  return function(self, key)
    local v = cls[key]
    if v ~= nil then return v end
    local getter = cls.__getattr__
    if getter then return getter(self, key) end
    return nil
  end
end

local function hand_down(cls, key, value, old)
  each_subclass(cls, function(sub)
    local cur = rawget(sub, key)
    if cur == nil or rawequal(cur, old) then
      rawset(sub, key, value)
      hand_down(sub, key, value, old)
    end
  end)
end

local function use_getattr(cls)
  if rawequal(rawget(cls, "__index"), cls) then
    rawset(cls, "__index", index_with(cls))
  end
  each_subclass(cls, use_getattr)
end

local function close_by_exit(self, err)
  return self:__exit__(err)
end

local function class_newindex(cls, key, value)
  local old = rawget(cls, key)
  rawset(cls, key, value)
  if key == "__getattr__" then use_getattr(cls) end
  if key == "__exit__" and rawget(cls, "__close") == nil then
    rawset(cls, "__close", close_by_exit)
    hand_down(cls, "__close", close_by_exit, nil)
  end
  if EVENTS[key] then hand_down(cls, key, value, old) end
end

local function new_instance(cls, ...)
  local self = setmetatable({}, cls)
  local init = cls.__init__
  if init then init(self, ...) end
  return self
end

local function class_tostring(cls)
  return "<class '" .. tostring(rawget(cls, "__name__")) .. "'>"
end

function class(name, base)
  if type(name) ~= "string" then
    error("class() argument 'name' must be a string", 2)
  end
  if base ~= nil and not is_class[base] then
    error("class() argument 'base' must be a class made by class()", 2)
  end
  local cls = { __name__ = name, super = base }
  cls.__index = cls
  if base then
    for key in pairs(EVENTS) do
      local v = rawget(base, key)
      if v ~= nil then cls[key] = v end
    end
    if base.__getattr__ then cls.__index = index_with(cls) end
    subclasses[base] = subclasses[base] or setmetatable({}, { __mode = "k" })
    subclasses[base][cls] = true
  end
  setmetatable(cls, {
    __index = base, __call = new_instance, __newindex = class_newindex,
    __tostring = class_tostring, __name = "class",
  })
  is_class[cls] = true
  by_name[name] = cls
  return cls
end

local function class_of(v)
  if type(v) ~= "table" then return nil end
  local mt = getmetatable(v)
  if is_class[mt] then return mt end
  return nil
end

local Exception, RuntimeError, BaseException

local function is_subclass(cls, target)
  while cls do
    if rawequal(cls, target) then return true end
    cls = rawget(cls, "super")
  end
  return false
end

function isinstance(value, cls)
  if not is_class[cls] then
    if type(cls) == "table" then   -- an array of classes, as Python's tuple
      for i = 1, #cls do
        if isinstance(value, cls[i]) then return true end
      end
      return false
    end
    error("isinstance() arg 2 must be a class or an array of classes", 2)
  end
  local vc = class_of(value)
  if vc then return is_subclass(vc, cls) end
  -- a plain error value (a string from error()...) is a RuntimeError
  return rawequal(cls, Exception) or rawequal(cls, RuntimeError)
      or rawequal(cls, BaseException)
end

function issubclass(cls, base)
  return is_class[cls] ~= nil and is_subclass(cls, base)
end

-- with(obj): in C (vm_glue/prelude.c), it is on the hot path of locks.
with = c_with

function raise(e, msg)
  if is_class[e] then
    if msg == nil then e = e() else e = e(msg) end
  end
  if class_of(e) then
    if rawget(e, "traceback") == nil then
      e.traceback = debug.traceback(nil, 2)
    end
    error(e, 0)
  end
  error(e, 2)
end

------------------------------------------------------------ exceptions

BaseException = class("BaseException")

function BaseException:__init__(...)
  self.args = pack(...)
  self.message = (...)
end

function BaseException:__tostring()
  local name = getmetatable(self).__name__
  local m = self.message
  if m == nil then return name end
  return name .. ": " .. tostring(m)
end

function BaseException:with_traceback(tb)
  self.traceback = tb
  return self
end

local function exception(name, base, qualname)
  local cls = class(name, base)
  register_class(qualname or name, cls)
  return cls
end

register_class("BaseException", BaseException)
Exception = exception("Exception", BaseException)
RuntimeError = exception("RuntimeError", Exception)
NotImplementedError = exception("NotImplementedError", RuntimeError)
RecursionError = exception("RecursionError", RuntimeError)
ValueError = exception("ValueError", Exception)
TypeError = exception("TypeError", Exception)
AssertionError = exception("AssertionError", Exception)
AttributeError = exception("AttributeError", Exception)
EOFError = exception("EOFError", Exception)
StopIteration = exception("StopIteration", Exception)
ArithmeticError = exception("ArithmeticError", Exception)
ZeroDivisionError = exception("ZeroDivisionError", ArithmeticError)
OverflowError = exception("OverflowError", ArithmeticError)
LookupError = exception("LookupError", Exception)
KeyError = exception("KeyError", LookupError)
IndexError = exception("IndexError", LookupError)
MemoryError = exception("MemoryError", Exception)

OSError = exception("OSError", Exception)
function OSError:__init__(...)
  BaseException.__init__(self, ...)
  local n = select("#", ...)
  local errno, strerror = ...
  if n >= 2 and math.type(errno) == "integer" then
    self.errno, self.strerror = errno, strerror
    self.message = "[Errno " .. errno .. "] " .. tostring(strerror)
  end
end
TimeoutError = exception("TimeoutError", OSError)
ConnectionError = exception("ConnectionError", OSError)
BrokenPipeError = exception("BrokenPipeError", ConnectionError)
ConnectionRefusedError = exception("ConnectionRefusedError", ConnectionError)
ConnectionResetError = exception("ConnectionResetError", ConnectionError)
ConnectionAbortedError = exception("ConnectionAbortedError", ConnectionError)
FileNotFoundError = exception("FileNotFoundError", OSError)
PermissionError = exception("PermissionError", OSError)
InterruptedError = exception("InterruptedError", OSError)
BlockingIOError = exception("BlockingIOError", OSError)

KeyboardInterrupt = exception("KeyboardInterrupt", BaseException)
SystemExit = exception("SystemExit", BaseException)
function SystemExit:__init__(code, ...)
  BaseException.__init__(self, code, ...)
  self.code = code
end
GeneratorExit = exception("GeneratorExit", BaseException)

_G.BaseException, _G.Exception, _G.RuntimeError = BaseException, Exception, RuntimeError

__name__ = "__main__"

-- for the C side and pickle
return { is_class = is_class, by_name = by_name, class_of = class_of }
