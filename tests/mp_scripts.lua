-- The ports of the notes' 多进程 examples (scripts/mp_*.lua): each runs
-- to its end with the output the notes describe.
local t = require "tests.tap"

local lines = t.lines

local count = t.count

do
  local out, err, status = t.run("scripts/mp_process.lua", 30)
  local l = lines(out)
  t.is(status, 0, "mp_process exits 0")
  t.is(count(l, "Hello from the child process"), 3, "three child lines")
  t.is(count(l, "Hello from the main process"), 3, "three main lines")
  t.is(#l, 6, "no line lost or doubled through a pipe")
  t.is(err, "", "mp_process: nothing on stderr")
end

do
  local out, err, status = t.run("scripts/mp_myprocess.lua", 30)
  local l = lines(out)
  t.is(status, 0, "mp_myprocess exits 0 (the parent joined its children)")
  for _, name in ipairs({"p1", "p2"}) do
    t.is(count(l, "Process " .. name .. " is running"), 3, name .. " runs three rounds")
    t.is(count(l, "Process " .. name .. " is done"), 3, name .. " is done three times")
  end
  t.is(#l, 12, "twelve lines")
  t.is(err, "", "mp_myprocess: nothing on stderr")
end

do
  local out, err, status = t.run("scripts/mp_args.lua", 30)
  t.is(status, 0, "mp_args exits 0")
  t.is(out, "name=jiao age=21 m=20\n", "args and kwargs reach the target")
  t.is(err, "", "mp_args: nothing on stderr")
end

do
  local out, _, status = t.run("scripts/mp_globals.lua", 30)
  t.is(status, 0, "mp_globals exits 0")
  t.is(out, "child: counter = 5\nparent: counter = 0\n", "globals are not shared")
end

do
  local out, err, status = t.run("scripts/mp_queue_basics.lua", 30)
  t.is(status, 0, "mp_queue_basics exits 0")
  local full = "The queue is full! now we have 3 items in the queue\n"
  t.is(out, "False\nTrue\n" .. full .. full .. full .. "1\n2\n3\n", "the notes' output exactly")
  t.is(err, "", "mp_queue_basics: nothing on stderr")
end

do
  local out, err, status = t.run("scripts/mp_queue_ipc.lua", 30)
  local l = lines(out)
  t.is(status, 0, "mp_queue_ipc exits 0")
  local got, put = {}, {}
  for _, line in ipairs(l) do
    local v = line:match("^task2 is get value:  (%a)$")
    if v then got[#got + 1] = v end
    v = line:match("^Task1 is putting value:  (%a)$")
    if v then put[#put + 1] = v end
  end
  t.is(table.concat(put), "abcde", "task1 puts a..e")
  t.is(table.concat(got), "abcde", "task2 gets a..e in order")
  t.is(l[#l], "Done", "Done last")
  t.is(err, "", "mp_queue_ipc: nothing on stderr")
end

t.done()
