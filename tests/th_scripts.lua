-- The ports of the notes' 多线程 examples (scripts/th_*.lua): each runs
-- to its end with the output the notes describe.
local t = require "tests.tap"

local lines = t.lines

local count = t.count

do
  local out, err, status = t.run("scripts/th_sing_dance.lua", 30)
  local l = lines(out)
  t.is(status, 0, "sing/dance exits 0")
  t.is(count(l, "Singing..."), 5, "five Singing lines")
  t.is(count(l, "Dancing..."), 5, "five Dancing lines")
  t.is(l[#l], "Main thread is over.", "main ends last")
  -- interleaved: both threads run at once, so the first two lines differ
  t.ok(l[1] ~= l[2], "sing and dance interleave")
  t.is(err, "", "nothing on stderr")
end

do
  local out, _, status = t.run("scripts/th_enumerate.lua", 30)
  t.is(status, 0, "enumerate exits 0")
  t.like(out, "^%[<_MainThread%(MainThread, started %d+%)>, <Thread%(Thread%-1 %(dance%), started %d+%)>",
    "enumerate prints like Python's list")
  local n = select(2, out:gsub("<Thread%(Thread%-%d %(dance%), started %d+%)>", ""))
  t.is(n, 5, "five dance threads listed")
  t.like(out, "threads:\t6", "active_count is 6")
end

do
  local out, _, status = t.run("scripts/th_args.lua", 30)
  t.is(status, 0, "args exits 0")
  t.is(out, table.concat({
    "John is 18 and dancing", "John is 19 and dancing", "John is 20 and dancing",
    "Alice is 18 and dancing", "Alice is 19 and dancing", "Alice is 20 and dancing", ""}, "\n"),
    "args and kwargs reach the target")
end

do
  local out, _, status = t.run("scripts/th_mythread.lua", 30)
  t.is(status, 0, "MyThread exits 0")
  t.is(out, table.concat({
    "Thread Thread-0 started", "Thread Thread-1 started", "Thread Thread-2 started",
    "Thread Thread-0 finished", "Thread Thread-1 finished", "Thread Thread-2 finished",
    "Main thread finished", ""}, "\n"), "subclass run() output in order")
end

do
  local out, _, status = t.run("scripts/th_mutex.lua", 60)
  t.is(status, 0, "mutex exits 0")
  local unsafe = tonumber(out:match("without a lock: (%d+) of"))
  t.ok(unsafe and unsafe <= 2000000, "unsafe total never exceeds the work done")
  t.like(out, "with a lock:    2000000 of 2000000", "with the lock the total is exact")
  t.like(out, "second acquire with timeout:\tfalse", "Lock is not reentrant (timeout → false)")
end

do
  local out, _, status = t.run("scripts/th_rlock.lua", 30)
  t.is(status, 0, "rlock exits 0")
  t.like(out, "total:\t80000", "RLock-protected total exact")
  t.like(out, "Lock taken again by its owner:\tfalse", "Lock not reentrant")
  t.like(out, "RLock taken again by its owner:\ttrue", "RLock reentrant")
end

do
  local out, _, status = t.run("scripts/th_barrier.lua", 30)
  t.is(status, 0, "barrier exits 0")
  local l = lines(out)
  t.is(l[1], "server: started", "server starts before the barrier opens")
  t.is(l[2], "client: server is ready", "client passes the barrier after")
  t.is(l[#l], "done", "both ends finish")
end

t.done()
