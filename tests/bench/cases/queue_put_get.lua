-- put+get pair in one thread (never waits: the fast paths)
local queue = require "queue"
local clock = require("time").perf_counter
local q = queue.Queue()
local N = 1000000
local t0 = clock()
for i = 1, N do q:put(i); q:get() end
print((clock() - t0))
