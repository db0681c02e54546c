-- 进程间通信: task1 puts five values, task2 gets them, each in its own
-- process.  The notes' task2 loops forever; here it stops after the
-- five values so that the port terminates, and it naps instead of
-- spinning while the queue is empty.  Sleeps are random() * 0.2 s
-- instead of random() * 1 s.
local mp = require "multiprocessing"
local time = require "time"

local Process, Queue = mp.Process, mp.Queue

local function task1(q)
  for _, value in ipairs({"a", "b", "c", "d", "e"}) do
    print("Task1 is putting value:  " .. value)
    time.sleep(math.random() * 0.2)
    q:put(value)
  end
end

local function task2(q)
  local got = 0
  while got < 5 do
    if not q:empty() then
      local value = q:get()
      print("task2 is get value:  " .. value)
      got = got + 1
      time.sleep(math.random() * 0.2)
    else
      time.sleep(0.01)
    end
  end
end

if __name__ == "__main__" then
  local q = Queue()
  local p1 = Process{target = task1, args = {q}}
  local p2 = Process{target = task2, args = {q}}
  p1:start()
  p2:start()
  p1:join()
  p2:join()
  print("Done")
end
