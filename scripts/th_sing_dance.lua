-- 多线程: the notes' first example, sing and dance in two threads.
-- Python: from time import sleep; import threading
local sleep = require("time").sleep
local threading = require "threading"

local function sing()
  for i = 1, 5 do
    print("Singing...")
    sleep(0.2)          -- the notes sleep(1); shortened so the tour is quick
  end
end

local function dance()
  for i = 1, 5 do
    print("Dancing...")
    sleep(0.2)
  end
end

if __name__ == "__main__" then
  local t1 = threading.Thread{target=sing}
  local t2 = threading.Thread{target=dance}
  t1:start()   -- start the thread
  t2:start()
  t1:join()    -- wait for the thread to finish
  t2:join()
  print("Main thread is over.")
end
