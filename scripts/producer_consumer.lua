-- Producer/consumer with threads: a producer puts work on a bounded
-- queue (it waits whenever the queue is full), two consumers take it.
-- q:join() waits until every item was marked done; then one nil per
-- consumer ends its loop, as None does in Python.
local threading = require "threading"
local queue = require "queue"
local sleep = require("time").sleep

local q = queue.Queue(2)
local done = {}   -- per consumer: how many items it handled

local function producer(n)
  for i = 1, n do
    q:put(i)
    print(("Produced %d"):format(i))
  end
end

local function consumer(name)
  local count = 0
  while true do
    local item = q:get()
    if item == nil then break end   -- the sentinel
    print(("%s consumed %d"):format(name, item))
    sleep(0.01)   -- some work
    count = count + 1
    q:task_done()
  end
  q:task_done()   -- the sentinel counts as a task too
  done[name] = count
end

local consumers = {}
for i = 1, 2 do
  local c = threading.Thread{target=consumer, args={"consumer-" .. i}}
  c:start()
  consumers[i] = c
end
local p = threading.Thread{target=producer, args={10}}
p:start()
p:join()

q:join()   -- every item put so far has been processed
print("All items processed")
for _ = 1, #consumers do q:put(nil) end
for _, c in ipairs(consumers) do c:join() end
print(("consumer-1 handled %d, consumer-2 handled %d, total %d"):format(
  done["consumer-1"], done["consumer-2"], done["consumer-1"] + done["consumer-2"]))
