-- 变量: 进程里面的全局变量是不共享的 -- globals are not shared between
-- processes: the child works on its own copy of the parent's universe.
local mp = require "multiprocessing"

counter = 0

local function work()
  for _ = 1, 5 do counter = counter + 1 end
  print("child: counter = " .. counter)
end

if __name__ == "__main__" then
  local p = mp.Process{target = work}
  p:start()
  p:join()
  print("parent: counter = " .. counter)
end
