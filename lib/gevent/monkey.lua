-- gevent.monkey: patch_all() makes the blocking waits of this process
-- (time.sleep, threading's locks, conditions, events, joins, queue
-- waits, socket I/O) switch greenlets instead of blocking the thread,
-- when called inside a greenlet of a thread that has a hub.  Every such
-- wait goes through the runtime's mt_wait, so nothing is replaced:
-- functions fetched before patching are cooperative as well.
local H = require "_hub"
local M = {}

function M.patch_all(...)
  require "gevent"
  H.get_hub()
  H.patch()
  return true
end
M.patch_time = M.patch_all
M.patch_thread = M.patch_all
M.patch_socket = M.patch_all
M.patch_queue = M.patch_all

function M.is_module_patched(name) return H.is_patched() end
M.is_anything_patched = H.is_patched

return M
