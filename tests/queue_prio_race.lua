-- queue: PriorityQueue with a __lt that lets other threads run in the
-- middle of a put or get (its own process, so the races happen often).
local t = require "tests.tap"
local queue = require "queue"
local threading = require "threading"
local sleep = require("time").sleep
local PriorityQueue = queue.PriorityQueue

local function spawn(f, ...)
  local th = threading.Thread{target=f, args=table.pack(...)}
  th:start()
  return th
end

-- PriorityQueue whose __lt lets other threads run mid-operation: the heap
-- must come out whole and ordered (put and get start over when the queue
-- changed during their comparisons)
local Slow = class("Slow")
function Slow.__lt(a, b)
  if (a.v + b.v) % 7 < 1 then sleep(0.0002) end   -- lets other threads run
  return a.v < b.v
end

for round = 1, 3 do
  local q = PriorityQueue()
  local th, N = {}, 150
  for k = 1, 3 do
    th[k] = spawn(function()
      for i = 1, N do q:put(setmetatable({v = (i * 37 + k * 11) % 1000 + k / 10}, Slow)) end
    end)
  end
  for _, x in ipairs(th) do x:join(30) end
  t.is(q:qsize(), 3 * N, "round " .. round .. ": racing puts with a GIL-releasing __lt, none lost")
  local moved = {}
  for k = 1, 2 do
    th[k] = spawn(function()
      local mine = {}
      for _ = 1, N do mine[#mine + 1] = q:get{timeout = 10}.v end
      moved[k] = mine
    end)
  end
  for k = 1, 2 do th[k]:join(30) end
  local sorted = true
  for k = 1, 2 do   -- each getter sees its items in increasing order
    for i = 2, #(moved[k] or {}) do sorted = sorted and moved[k][i - 1] <= moved[k][i] end
  end
  t.ok(sorted and #(moved[1] or {}) == N and #(moved[2] or {}) == N,
       "round " .. round .. ": racing gets, each sees ascending items")
  local last, ordered = -1, true
  while not q:empty() do
    local v = q:get().v
    ordered = ordered and v >= last
    last = v
  end
  t.ok(ordered, "round " .. round .. ": the rest drains in order, the heap stayed a heap")
end

t.done()
