-- The socket ports in scripts/sock_*.lua run to their end with the output
-- they describe; the echo servers serve 200 concurrent clients.
local t = require "tests.tap"

do
  local out, err, status = t.run("scripts/sock_barrier.lua", 30)
  t.is(status, 0, "sock_barrier exits 0")
  t.is(out, table.concat({
    "server: started",
    'server: got "hello 1"', 'client: server replied "HELLO 1"',
    'server: got "hello 2"', 'client: server replied "HELLO 2"',
    'server: got "hello 3"', 'client: server replied "HELLO 3"',
    "done", ""}, "\n"), "the client talks to the server only after the barrier")
  t.is(err, "", "sock_barrier: nothing on stderr")
end

do
  local out, err, status = t.run("scripts/sock_echo_threads.lua 200 5", 60)
  t.is(status, 0, "sock_echo_threads exits 0")
  t.is(out, "echo server: 200 of 200 clients served, 5 round trips each, 200 handler threads\n",
    "threaded echo server serves 200 concurrent clients")
  t.is(err, "", "sock_echo_threads: nothing on stderr")
end

t.done()
