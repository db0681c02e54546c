-- The queue ports (scripts/queue_basics.lua, scripts/producer_consumer.lua):
-- each runs to its end with the output the notes (or Python) give.
local t = require "tests.tap"

local lines = t.lines

do
  local out, err, status = t.run("scripts/queue_basics.lua", 30)
  t.is(status, 0, "queue_basics exits 0")
  t.is(out, table.concat({
    "False",
    "True",
    "The queue is full! now we have 3 items in the queue",
    "The queue is full! now we have 3 items in the queue",
    "The queue is full! now we have 3 items in the queue",
    "1", "2", "3", ""}, "\n"), "queue_basics prints exactly the notes' output")
  t.is(err, "", "queue_basics: nothing on stderr")
end

do
  local out, err, status = t.run("scripts/producer_consumer.lua", 30)
  local l = lines(out)
  t.is(status, 0, "producer_consumer exits 0")
  t.is(err, "", "producer_consumer: nothing on stderr")
  local produced, consumed, by = {}, {}, {}
  local processed_at
  for i, line in ipairs(l) do
    local n = line:match("^Produced (%d+)$")
    if n then produced[#produced + 1] = tonumber(n) end
    local who, m = line:match("^(consumer%-%d) consumed (%d+)$")
    if who then
      consumed[#consumed + 1] = tonumber(m)
      by[who] = (by[who] or 0) + 1
    end
    if line == "All items processed" then processed_at = i end
  end
  t.is(table.concat(produced, ","), "1,2,3,4,5,6,7,8,9,10", "ten items produced in order")
  table.sort(consumed)
  t.is(table.concat(consumed, ","), "1,2,3,4,5,6,7,8,9,10", "each consumed exactly once")
  t.ok(by["consumer-1"] and by["consumer-2"], "both consumers took work")
  t.is(processed_at, #l - 1, "join returned after every item was consumed")
  t.like(l[#l], "^consumer%-1 handled %d+, consumer%-2 handled %d+, total 10$",
         "the nil sentinels ended both consumers")
end

t.done()
