-- pool: the ports of the notes' examples print what they should.
local t = require "tests.tap"

local out, err, status = t.run("scripts/pool_basic.lua", 30)
t.ok(status == 0, "pool_basic.lua exits 0")
local count, pids, nums = 0, {}, {}
for pid, num in out:gmatch("pid = (%d+), num = (%d+)\n") do
  count = count + 1
  pids[pid] = true
  nums[tonumber(num)] = (nums[tonumber(num)] or 0) + 1
end
t.is(count, 50, "50 'pid = %d, num = %d' lines")
local each = true
for i = 0, 9 do if nums[i] ~= 5 then each = false end end
t.ok(each, "each of the 10 tasks printed 5 times")
local npids = 0
for _ in pairs(pids) do npids = npids + 1 end
t.ok(npids >= 2 and npids <= 3, "on the pool's (at most 3) workers")
t.like(out, "All done\n$", "All done, last")
t.is(err, "", "nothing on stderr")

out, err, status = t.run("scripts/pool_apply.lua", 30)
t.ok(status == 0, "pool_apply.lua exits 0")
t.like(out, "^apply returned\t9\n", "apply returns the result")
t.like(out, "apply_async returned\t<pool.AsyncResult pending>\tready:\tfalse\n", "apply_async returns an AsyncResult at once")
t.like(out, "get%(%) returned\t16\nready:\ttrue\tsuccessful:\ttrue\n$", "whose get() returns the result")

out, err, status = t.run("scripts/pool_manager_queue.lua", 30)
t.ok(status == 0, "pool_manager_queue.lua exits 0")
local read = {}
for c in out:gmatch("Read from queue:\t(.)\n") do read[#read + 1] = c end
t.is(table.concat(read), "Hello World", "the reader read Hello World from the writer")
t.like(out, "^Writer waiting\nReader waiting\n", "writer first, then reader")
t.like(out, "Main process end\n$", "Main process end")

-- Manager is a context manager, JoinableQueue included
out, err, status = t.run_source([[
  local mp = require "multiprocessing"
  local m <close> = with(mp.Manager())
  local q = m:JoinableQueue()
  local p <close> = with(mp.Pool(2))
  p:apply(function(q) q:put(42) end, { q })
  print(q:get(), mp.Pool == require("pool").Pool, mp.TimeoutError == require("pool").TimeoutError)
]], 20)
t.is(out, "42\ttrue\ttrue\n", "Manager():JoinableQueue() reaches a worker; one Pool and TimeoutError class")
t.done()
