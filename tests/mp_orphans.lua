-- A parent killed with SIGKILL: its daemonic children die with it,
-- forked from the main thread or from another thread; its non-daemonic
-- ones are orphaned and go on (as in Python); nothing is left in
-- /dev/shm.
local t = require "tests.tap"

local function shm_entries()
  local p = io.popen("ls -A /dev/shm 2>/dev/null")
  local s = p:read("a")
  p:close()
  return s
end

local function alive(pid)
  local f = io.open("/proc/" .. pid .. "/stat")
  if not f then return false end
  local s = f:read("a") or ""
  f:close()
  local state = s:match("%) (%a)")
  return state ~= nil and state ~= "Z" and state ~= "X"
end

local before = shm_entries()
local script = t.tmpname(".lua")
local out = os.tmpname()
local f = assert(io.open(script, "w"))
f:write([[
  local mp = require "multiprocessing"
  local threading = require "threading"
  local time = require "time"
  local q = mp.Queue()
  q:put("a queue exists")
  local function nap() time.sleep(30) end
  local ps = {
    mp.Process{target = nap, daemon = true},
    mp.Process{target = nap},
  }
  for _, p in ipairs(ps) do p:start() end
  local th = threading.Thread{target = function()   -- forked from a thread
    for _, daemon in ipairs { true, false } do
      local p = mp.Process{target = nap, daemon = daemon}
      p:start()
      ps[#ps + 1] = p
    end
  end}
  th:start(); th:join()
  for _, p in ipairs(ps) do io.write(p.pid, "\n") end
  io.write("ready\n")
  io.stdout:flush()
  time.sleep(30)
]])
f:close()
os.execute(("%s %s > %s 2>/dev/null & echo $! > %s.pid"):format(t.mtlua, script, out, out))
local pf = io.open(out .. ".pid")
local ppid = pf and pf:read("n")
if pf then pf:close() end
local deadline = os.time() + 10
local text = ""
repeat
  os.execute("sleep 0.05")
  local o = io.open(out)
  text = o and o:read("a") or ""
  if o then o:close() end
until text:find("ready") or os.time() > deadline
local pids = {}
for pid in text:gmatch("(%d+)\n") do pids[#pids + 1] = tonumber(pid) end
t.is(#pids, 4, "four children started")
for _, pid in ipairs(pids) do t.ok(alive(pid), "child " .. pid .. " runs") end
local daemons = { pids[1], pids[3] }
local others = { pids[2], pids[4] }
os.execute("kill -9 " .. tostring(ppid))
local all_gone
for _ = 1, 40 do
  os.execute("sleep 0.05")
  all_gone = true
  for _, pid in ipairs(daemons) do if alive(pid) then all_gone = false end end
  if all_gone then break end
end
t.ok(all_gone, "no daemonic child outlives its SIGKILLed parent")
for _, pid in ipairs(others) do
  t.ok(alive(pid), "non-daemonic child " .. pid .. " goes on after its parent's SIGKILL")
end
os.execute("kill -9 " .. table.concat(others, " ") .. " 2>/dev/null")
for _ = 1, 40 do
  if not alive(others[1]) and not alive(others[2]) then break end
  os.execute("sleep 0.05")
end
t.is(shm_entries(), before, "nothing new in /dev/shm")
os.remove(script); os.remove(out); os.remove(out .. ".pid")
t.done()
