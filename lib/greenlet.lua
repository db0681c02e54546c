-- greenlet.lua: greenlet 2's API on Lua coroutines (lua_bindings/coroutine.c
-- does the switching).  require "greenlet" ->
-- { greenlet=, getcurrent=, GreenletExit=, error= }.
local C = require "_greenlet"

local M = {}

local greenlet = class("greenlet")
M.greenlet = greenlet

local GreenletExit = class("GreenletExit", BaseException)
C._register("greenlet.GreenletExit", GreenletExit)
M.GreenletExit = GreenletExit

local gerror = class("error", Exception)
C._register("greenlet.error", gerror)
M.error = gerror

-- greenlet(run, parent) or greenlet{run=, parent=}.  Without run, the
-- (subclass's) run method is called.
function greenlet:__init__(run, parent)
  if type(run) == "table" and getmetatable(run) == nil then
    run, parent = run.run or run[1], run.parent or run[2]
  end
  if run == nil then
    local cls = getmetatable(self)
    local method = cls.run
    if method == nil then raise(TypeError("greenlet() argument 'run' must be callable, not nil")) end
    local me = self
    run = function(...) return method(me, ...) end
  end
  C.init(self, run, parent)
end

greenlet.switch = C.switch
greenlet.throw = C.throw
greenlet.is_active = C.is_active
greenlet.__tostring = C.tostring
greenlet.__newindex = C.newindex
greenlet.__getattr__ = C.getattr
C._setclass(greenlet)   -- a fast __index for greenlet itself

M.getcurrent = C.getcurrent
M._started = C.started
M._getmain = C.getmain
M._init = C.init   -- for gevent's spawn fast path
M._KEY = C.KEY

return M
