-- gevent.socket: the socket module whose blocking calls always switch
-- greenlets, with or without monkey.patch_all().  Its socket class is a
-- subclass of socket.socket flagged _gevent: lua_bindings/socket.c then
-- passes force=1 to the hub's fd wait, so a greenlet waiting on a read
-- lets the others run (in the main greenlet too: it waits on the hub).
-- Sockets it accepts or creates (accept, dup, create_connection,
-- create_server, socketpair) are gevent sockets as well.
local _socket = require "socket"

local M = {}
for k, v in pairs(_socket) do M[k] = v end

local socket = class("gevent.socket.socket", _socket.socket)
socket._gevent = true
socket._accept_class = socket
-- The methods are copied in: a method call then finds its function one
-- table down the chain instead of two (four lookups per echo round
-- trip).  A method later assigned on socket.socket itself therefore
-- does not reach gevent sockets; define it on this class too.
for k, v in pairs(_socket.socket) do
  if type(v) == "function" and rawget(socket, k) == nil then rawset(socket, k, v) end
end
M.socket = socket

local bound = _socket._bind_class(socket)
M.create_connection = bound.create_connection
M.create_server = bound.create_server
M.socketpair = bound.socketpair
M._bind_class = nil

return M
