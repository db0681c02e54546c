-- 队列 (the notes' Queue example, from the 多进程 part) on the thread
-- queue: a queue of at most 3 items; full(), then three ways to fail to
-- put a 4th item (a timeout, put_nowait, a non-blocking put), each
-- raising queue.Full; then the items come back in order.
local queue = require "queue"

local function py(b) return b and "True" or "False" end   -- print as the notes do

local q = queue.Queue(3) -- 3 is the maximum number of items that can be stored in the queue
q:put(1)
q:put(2)
print(py(q:full())) -- False
q:put(3)
print(py(q:full())) -- True

local ok = pcall(q.put, q, 4, {timeout=1}) -- This will raise a Full exception
if not ok then
  print(("The queue is full! now we have %d items in the queue"):format(q:qsize()))
end

ok = pcall(q.put_nowait, q, 4) -- This will raise a Full exception
if not ok then
  print(("The queue is full! now we have %d items in the queue"):format(q:qsize()))
end

ok = pcall(q.put, q, 4, {block=false}) -- This will raise a Full exception
if not ok then
  print(("The queue is full! now we have %d items in the queue"):format(q:qsize()))
end

if not q:empty() then
  for _ = 1, q:qsize() do
    print(q:get()) -- get also takes a timeout, and there is get_nowait
  end
end
