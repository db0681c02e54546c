-- A Manager's dict, list and Namespace shared by worker processes, and
-- a counter in shared memory under a process-shared Lock.
local mp = require "multiprocessing"

local function worker(d, l, ns, counter, n)
  d[n] = n * n
  l:append(n)
  for _ = 1, 1000 do
    local _ <close> = with(counter:get_lock())
    counter.value = counter.value + 1
  end
  if n == 1 then ns.note = "written by worker 1" end
end

if __name__ == "__main__" then
  local m <close> = with(mp.Manager())
  local d, l, ns = m:dict(), m:list(), m:Namespace()
  local counter = mp.Value("i", 0)
  local ps = {}
  for n = 1, 4 do
    ps[n] = mp.Process{target = worker, args = {d, l, ns, counter, n}}
    ps[n]:start()
  end
  for _, p in ipairs(ps) do p:join() end
  local squares = {}
  for n = 1, 4 do squares[n] = d[n] end
  print("squares:", table.concat(squares, " "))
  print("list length:", #l)
  print("namespace:", ns.note)
  print("counter:", counter.value)
end
