-- 多进程: the MyProcess subclass of the notes.  The notes' run() loops
-- forever; here it runs 3 rounds (0.2 s instead of 1 s) so the port
-- terminates; the parent's exit joins both children, as Python's does.
local mp = require "multiprocessing"
local time = require "time"

local ROUNDS, INTERVAL = 3, 0.2

local MyProcess = class("MyProcess", mp.Process)

function MyProcess:__init__(name)
  MyProcess.super.__init__(self)
  self.name = name
end

function MyProcess:run()
  for _ = 1, ROUNDS do
    print(("Process %s is running"):format(self.name))
    time.sleep(INTERVAL)
    print(("Process %s is done"):format(self.name))
  end
end

if __name__ == "__main__" then
  local p1 = MyProcess("p1")
  local p2 = MyProcess("p2")

  p1:start()
  p2:start()
end
