-- apply vs apply_async: apply waits and returns the function's result;
-- apply_async returns at once an AsyncResult whose get() gives it.
local Pool = require("multiprocessing").Pool
local sleep = require("time").sleep

local function work(x)
  sleep(0.2)
  return x * x
end

if __name__ == "__main__" then
  local p = Pool(2)
  local r = p:apply(work, { 3 })
  print("apply returned", r)
  local ar = p:apply_async(work, { 4 })
  print("apply_async returned", tostring(ar), "ready:", ar:ready())
  print("get() returned", ar:get())
  print("ready:", ar:ready(), "successful:", ar:successful())
  p:close()
  p:join()
end
