-- 参数传递: args and kwargs of a Process.  The notes write
-- kwargs={"m", 20} (a Python set, an error there); the intended
-- keyword argument is m=20, which reaches the target as one table
-- after the positional arguments.
local mp = require "multiprocessing"

local function test(name, age, kwargs)
  print(("name=%s age=%d m=%d"):format(name, age, kwargs.m))
end

if __name__ == "__main__" then
  local p = mp.Process{target = test, args = {"jiao", 21}, kwargs = {m = 20}}
  p:start()
  p:join()
end
