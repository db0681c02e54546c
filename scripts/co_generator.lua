-- The notes' generator example: work1 and work2 take turns, each
-- resumed by main in a loop (Python's next() is a call of the function
-- coroutine.wrap makes).  Bounded to 3 rounds, 0.1 s sleeps.
local time = require "time"

local function work1()
  while true do
    print("work1")
    coroutine.yield()
    time.sleep(0.1)
  end
end

local function work2()
  while true do
    print("work2")
    coroutine.yield()
    time.sleep(0.1)
  end
end

local function main()
  local w1 = coroutine.wrap(work1)
  local w2 = coroutine.wrap(work2)
  for _ = 1, 3 do
    w1()
    w2()
  end
end

if __name__ == "__main__" then
  main()
end
