-- 进程间通信IPC / 基础使用: multiprocessing.Queue(3).  Prints what the
-- notes' Python prints (booleans as Python writes them).
local multiprocessing = require "multiprocessing"

local function py(b) return b and "True" or "False" end

local q = multiprocessing.Queue(3) -- 3 is the maximum number of items that can be stored in the queue
q:put(1)
q:put(2)
print(py(q:full())) -- False
q:put(3)
print(py(q:full())) -- True

if not pcall(q.put, q, 4, {timeout = 1}) then -- This will raise a Full exception
  print(("The queue is full! now we have %d items in the queue"):format(q:qsize()))
end

if not pcall(q.put_nowait, q, 4) then -- This will raise a Full exception
  print(("The queue is full! now we have %d items in the queue"):format(q:qsize()))
end

if not pcall(q.put, q, 4, {block = false}) then -- This will raise a Full exception
  print(("The queue is full! now we have %d items in the queue"):format(q:qsize()))
end

if not q:empty() then
  for _ = 1, q:qsize() do
    print(q:get()) -- get also takes a timeout, and has get_nowait
  end
end
