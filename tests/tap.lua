-- tap.lua: a small TAP producer for the suite (run by prove).
--   local t = require "tests.tap"
--   t.ok(cond, name); t.is(got, want, name); t.like(str, pattern, name)
--   t.raises(fn, Class, pattern?, name) ; t.run(args) ; t.run_source(src)
--   t.lines, t.count, t.count_socket_fds, t.spawn_process, t.join_processes
-- Every test file ends with t.done(), which prints the plan.
local M = {}
local count, failed = 0, 0

local function diag(msg)
  for line in tostring(msg):gmatch("[^\n]+") do io.stdout:write("# ", line, "\n") end
end
M.diag = diag

function M.ok(cond, name)
  count = count + 1
  io.stdout:write(cond and "ok " or "not ok ", count, " - ", name or "", "\n")
  io.stdout:flush()
  if not cond then failed = failed + 1 end
  return cond
end

local function show(v)
  if type(v) == "string" then return ("%q"):format(v) end
  return tostring(v)
end

function M.is(got, want, name)
  local ok = got == want
  if not M.ok(ok, name) then diag("got:  " .. show(got)); diag("want: " .. show(want)) end
  return ok
end

function M.like(got, pattern, name)
  local ok = type(got) == "string" and got:find(pattern) ~= nil
  if not M.ok(ok, name) then diag("got:  " .. show(got)); diag("want match: " .. pattern) end
  return ok
end

-- fn must raise an instance of cls (and, if given, a message matching pattern)
function M.raises(fn, cls, pattern, name)
  local ok, err = pcall(fn)
  local good = not ok and isinstance(err, cls)
  if good and pattern then good = tostring(err):find(pattern) ~= nil end
  if not M.ok(good, name or ("raises " .. tostring(cls))) then
    diag(ok and "no error raised" or ("raised: " .. tostring(err)))
  end
  return err
end

-- The mtlua binary under test (MTLUA_BUILD from the Makefile).
M.build = os.getenv("MTLUA_BUILD") or "build"
M.mtlua = M.build .. "/mtlua"

local function slurp(path)
  local f = io.open(path, "rb")
  if not f then return "" end
  local s = f:read("a")
  f:close()
  return s
end

-- Runs `mtlua args...` (a shell string) with a time limit; returns
-- stdout, stderr, exit status.
function M.run(args, limit, stdin)
  local out, err = os.tmpname(), os.tmpname()
  local cmd = ("timeout -k 2 %d %s %s >%s 2>%s"):format(limit or 60, M.mtlua, args, out, err)
  if stdin then cmd = cmd .. " <" .. stdin else cmd = cmd .. " </dev/null" end
  local _, _, status = os.execute(cmd)
  local o, e = slurp(out), slurp(err)
  os.remove(out); os.remove(err)
  return o, e, status
end

-- A fresh temporary file name ending in suffix (os.tmpname creates the
-- file it names: that one is removed, not left in /tmp).
function M.tmpname(suffix)
  local base = os.tmpname()
  os.remove(base)
  return base .. (suffix or "")
end

-- Runs a Lua source text as a script; returns stdout, stderr, status.
function M.run_source(src, limit, args)
  local path = M.tmpname(".lua")
  local f = assert(io.open(path, "w"))
  f:write(src)
  f:close()
  local o, e, s = M.run(path .. " " .. (args or ""), limit)
  os.remove(path)
  return o, e, s
end

-- Small helpers several test files share.
function M.lines(s)
  local out = {}
  for l in s:gmatch("[^\n]+") do out[#out + 1] = l end
  return out
end

function M.count(list, value)
  local n = 0
  for _, v in ipairs(list) do if v == value then n = n + 1 end end
  return n
end

-- Sockets open in this process (for fd-leak checks).
function M.count_socket_fds()
  local p = io.popen("ls -l /proc/" .. os.getpid() .. "/fd | grep -c socket:")
  local n = tonumber(p:read("a"))
  p:close()
  return n
end

-- A started multiprocessing.Process running fn(...).
function M.spawn_process(fn, ...)
  local p = require("multiprocessing").Process{target = fn, args = table.pack(...)}
  p:start()
  return p
end

-- Joins processes (20 s each at most, killing stragglers); one check
-- that all exited 0.
function M.join_processes(ps, what)
  local ok = true
  for _, p in ipairs(ps) do
    p:join(20)
    if p.exitcode ~= 0 then ok = false end
    if p.exitcode == nil then p:kill(); p:join() end
  end
  M.ok(ok, what .. ": children exit 0")
end

function M.done()
  io.stdout:write("1..", count, "\n")
  io.stdout:flush()
  os.exit(failed == 0 and 0 or 1)
end

return M
