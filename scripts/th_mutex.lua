-- 互斥锁: a global counter updated by two threads.  Without the lock
-- updates are lost (a thread is switched out between reading and
-- writing the counter); with it the total is exact.
local threading = require "threading"

local N = 1000000
counter = 0

local function add_unsafe()
  for i = 1, N do
    counter = counter + 1
  end
end

local mutex = threading.Lock()
local function add_safe()
  for i = 1, N do
    mutex:acquire()
    counter = counter + 1
    mutex:release()
  end
end

local function run_two(fn)
  counter = 0
  local t1, t2 = threading.Thread{target=fn}, threading.Thread{target=fn}
  t1:start(); t2:start()
  t1:join(); t2:join()
  return counter
end

if __name__ == "__main__" then
  threading.setswitchinterval(1e-6)   -- switch as often as possible
  local unsafe = run_two(add_unsafe)
  print(("without a lock: %d of %d (%s)"):format(unsafe, 2 * N,
    unsafe < 2 * N and "updates lost" or "none lost this time"))
  local safe = run_two(add_safe)
  print(("with a lock:    %d of %d"):format(safe, 2 * N))
  -- acquire(blocking=true, timeout=-1): the timeout is in seconds
  mutex:acquire()
  print("second acquire with timeout:", mutex:acquire{timeout=0.1})
  mutex:release()
end
