-- 继承的方式创建: a Thread subclass overriding run().
local sleep = require("time").sleep
local threading = require "threading"

local MyThread = class("MyThread", threading.Thread)

function MyThread:__init__(name)
  threading.Thread.__init__(self)
  self.name = name
end

function MyThread:run()
  print(("Thread %s started"):format(self.name))
  sleep(0.4)            -- the notes sleep(2)
  print(("Thread %s finished"):format(self.name))
end

if __name__ == "__main__" then
  local threads = {}
  for i = 0, 2 do
    local thread = MyThread(("Thread-%d"):format(i))
    threads[#threads + 1] = thread
    thread:start()
    sleep(0.05)         -- keeps the "started" lines in order for the test
  end
  for _, thread in ipairs(threads) do
    thread:join()
  end
  print("Main thread finished")
end
