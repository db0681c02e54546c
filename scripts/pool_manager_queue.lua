-- Communicating with pool workers: a queue from Manager().
local mp = require "multiprocessing"
local Manager, Pool = mp.Manager, mp.Pool
local sleep = require("time").sleep

local function reader(q)
  print("Reader waiting")
  for i = 1, q:qsize() do
    print("Read from queue:", q:get())
  end
end

local function writer(q)
  print("Writer waiting")
  for c in ("Hello World"):gmatch(".") do
    q:put(c)
  end
end

if __name__ == "__main__" then
  local q = Manager():Queue()
  local po = Pool()
  po:apply_async(writer, { q })
  sleep(1)
  po:apply_async(reader, { q })
  po:close()
  po:join()
  print("Main process end")
end
