-- 多进程: a Process running a function (the notes' first example).
-- The notes' loops never end; this port runs 3 rounds in each process
-- and joins, so it terminates.  The notes sleep 1 s a round; 0.2 s here.
local mp = require "multiprocessing"
local time = require "time"

local ROUNDS, INTERVAL = 3, 0.2

local function test()
  -- This function will be run by a separate process
  for _ = 1, ROUNDS do
    print("Hello from the child process")
    time.sleep(INTERVAL)
  end
end

if __name__ == "__main__" then
  -- Create a new process
  local p = mp.Process{target = test}
  -- Start the process
  p:start()
  for _ = 1, ROUNDS do
    print("Hello from the main process")
    time.sleep(INTERVAL)
  end
  p:join()
end
