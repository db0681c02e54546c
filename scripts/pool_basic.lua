-- The notes' Pool example: 10 tasks on 3 worker processes.
-- (Python: sleeps of random.random(); shortened here to keep it brisk.)
local Pool = require("multiprocessing").Pool
local sleep = require("time").sleep

local function worker(num)
  for i = 0, 4 do
    print(("pid = %d, num = %d"):format(os.getpid(), num))
    io.stdout:flush()
    sleep(math.random() * 0.08)
  end
end

if __name__ == "__main__" then
  local p = Pool(3)
  for i = 0, 9 do
    p:apply_async(worker, { i })   -- add a task
  end
  p:close()   -- no more tasks from now on
  p:join()    -- wait for every worker; close() must come first, else an error
  print("All done")
end
