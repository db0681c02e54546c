-- The GIL's cost while another thread exists but waits (here: on an
-- Event): the loop of gil_overhead under mtlua with that thread alive,
-- against Debian's plain lua5.4 running the bare loop.  Nobody asks for
-- the GIL, so nothing should slow the loop (no hook: vm_glue/threads.c).
local ok, threading = pcall(require, "threading")
local idle, ev
if ok then
  ev = threading.Event()
  idle = threading.Thread{target = function() ev:wait() end}
  idle:start()
end
local t0 = os.clock()
local x = 0
for i = 1, 30000000 do x = x + i % 7 end
print((os.clock() - t0))
if ok then ev:set(); idle:join() end
