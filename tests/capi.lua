-- The C API (vm_glue/mtlua.h): runs the host program tests/c/test_capi.c
-- (built by `make test`) and relays its TAP.
local t = require "tests.tap"
local bin = t.build .. "/test_capi"
local f = io.open(bin)
if not t.ok(f ~= nil, "test_capi is built") then t.done() end
f:close()
local p = io.popen("timeout -k 2 60 " .. bin .. " 2>&1")
local out = p:read("a")
local ok = p:close()
local n = 0
for line in out:gmatch("[^\n]+") do
  local good, name = line:match("^(n?o?t? ?ok) %d+ %- (.*)$")
  if good then n = n + 1; t.ok(good == "ok", "C API: " .. name)
  elseif not line:match("^1%.%.") then t.diag(line) end
end
t.ok(n >= 15, "every C test ran")
t.ok(ok, "the host program exits 0")
t.done()
