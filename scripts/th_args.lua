-- 传递参数: args are unpacked into the call; kwargs arrive as one table
-- after the positional arguments (Python's **kwargs).
local threading = require "threading"

local function dance(name, age)
  if type(name) == "table" then   -- called with kwargs only
    name, age = name.name, name.age
  end
  print(("%s is %d and dancing"):format(name, age))
end

if __name__ == "__main__" then
  local threads = {}
  for i = 0, 2 do
    local t = threading.Thread{target=dance, args={"John", i + 18}}
    t:start()
    t:join()            -- one at a time, so the output order is fixed
  end
  for i = 0, 2 do
    local t = threading.Thread{target=dance, kwargs={name="Alice", age=i + 18}}
    t:start()
    t:join()
  end
end
