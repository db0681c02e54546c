-- 获取线程数量: threading.enumerate() lists the live threads.
local sleep = require("time").sleep
local threading = require "threading"

local function dance()
  sleep(0.2)
end

if __name__ == "__main__" then
  for i = 1, 5 do
    local t1 = threading.Thread{target=dance}   -- a thread that runs dance
    t1:start()
  end
  print(threading.enumerate())
  print("threads:", threading.active_count())
end
