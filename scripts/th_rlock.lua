-- RLock: a lock its owner may take again (the Lock would block).
local threading = require "threading"

local mutex = threading.RLock()
local total = 0

local function add(n)
  mutex:acquire()
  total = total + n
  mutex:release()
end

local function add_twice(n)
  mutex:acquire()        -- held while add() takes it again: fine for an RLock
  add(n)
  add(n)
  mutex:release()
end

if __name__ == "__main__" then
  local threads = {}
  for i = 1, 4 do
    threads[i] = threading.Thread{target=function()
      for _ = 1, 10000 do add_twice(1) end
    end}
    threads[i]:start()
  end
  for _, t in ipairs(threads) do t:join() end
  print("total:", total)
  local lock = threading.Lock()
  lock:acquire()
  print("Lock taken again by its owner:", lock:acquire(false))
  print("RLock taken again by its owner:", mutex:acquire(false))
  mutex:release()
end
