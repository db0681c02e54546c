-- The notes' greenlet example: test1 and test2 hand control to each
-- other with switch.  Bounded to 3 rounds (the original loops forever)
-- and 0.1 s sleeps instead of 0.5 s.
local greenlet = require("greenlet").greenlet
local time = require "time"

local ROUNDS = 3
local gr1, gr2

local function test1()
  for _ = 1, ROUNDS do
    print("---A---")
    gr2:switch()
    time.sleep(0.1)
  end
end

local function test2()
  for _ = 1, ROUNDS do
    print("---B---")
    gr1:switch()
    time.sleep(0.1)
  end
end

gr1 = greenlet(test1)
gr2 = greenlet(test2)
gr1:switch()
