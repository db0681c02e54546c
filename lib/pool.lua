-- pool.lua: Python's multiprocessing.pool -- Pool (worker processes),
-- ThreadPool (worker threads), AsyncResult, MapResult, IMapIterator,
-- WorkerLostError.  The process back end's plumbing (fork, a socket and
-- a result ring per worker, the I/O thread that never lets the pool
-- hang, packed map chunks) is lua_bindings/pool.c; see its top comment.
--
-- Beyond Python: functions travel by value (pickle), so closures and
-- functions made after the pool work; a worker that dies mid-task fails
-- exactly that task with WorkerLostError and is replaced; terminate()
-- fails what is pending instead of leaving get() waiting forever.
local _pool = require "_pool"
local _t = require "_threading"
local threading = require "threading"

local M = {}
local type, select, pairs, tostring, rawget, getmetatable = type, select, pairs, tostring, rawget, getmetatable
local xpcall, pcall, error = xpcall, pcall, error
local unpack, pack, move = table.unpack, table.pack, table.move
local pack_chunk, unpack_chunk, unpack_into = _pool.pack, _pool.unpack, _pool.unpack_into
local monotonic = require("time").monotonic

local EV_RESULT, EV_LOST, EV_EXITED, EV_CANCELLED = 1, 2, 3, 4

---------------------------------------------------------- exceptions

-- One class with multiprocessing (which re-exports it).
local TimeoutError = class("multiprocessing.TimeoutError", Exception)
M.TimeoutError = TimeoutError
local WorkerLostError = class("pool.WorkerLostError", Exception)
M.WorkerLostError = WorkerLostError

----------------------------------------------------------- helpers

local function is_callable(f)
  if type(f) == "function" then return true end
  local mt = getmetatable(f)
  return type(mt) == "table" and mt.__call ~= nil
end

local function plain_table(v)
  return type(v) == "table" and getmetatable(v) == nil
end

local function type_error(fname, arg, value, expected)
  raise(TypeError(("%s() argument '%s' must be %s, not %s"):format(
    fname, arg, expected, type(value))))
end

local function check_callable(fname, arg, f)
  if not is_callable(f) then type_error(fname, arg, f, "callable") end
end

local function check_table(fname, arg, v)
  if v ~= nil and type(v) ~= "table" then type_error(fname, arg, v, "a table or nil") end
end

-- Python-call form: f{a, b, k=v} is f(a, b, k=v).
local function call_form(t, names)
  local out = {}
  for i, name in ipairs(names) do
    local v = t[name]
    if v == nil then v = t[i] end
    out[i] = v
  end
  return unpack(out, 1, #names)
end

-- func(args..., kwds): kwargs come as one table after the positional
-- arguments (SPEC §1).
local function call(func, args, kwds)
  local n = args and (args.n or #args) or 0
  if kwds ~= nil then
    local a = move(args or {}, 1, n, 1, {})
    a[n + 1] = kwds
    return (func(unpack(a, 1, n + 1)))
  end
  if n == 0 then return (func()) end
  return (func(unpack(args, 1, n)))
end

local function run_chunk(func, items, star)
  local n = items.n or #items
  local out = { n = n }
  for i = 1, n do
    if star then
      local a = items[i]
      out[i] = (func(unpack(a, 1, a.n or #a)))
    else
      out[i] = (func(items[i]))
    end
  end
  return out
end

-- An iterable (array table honouring .n, or an iterator function) as
-- an array and its length.  A table is used as it is: its chunks are
-- packed before map returns, so later changes to it do not matter.
local function to_array(fname, iterable)
  if type(iterable) == "table" and not is_callable(iterable) then
    return iterable, iterable.n or #iterable
  end
  if is_callable(iterable) then
    local out, n = {}, 0
    for v in iterable do n = n + 1; out[n] = v end
    return out, n
  end
  type_error(fname, "iterable", iterable, "a table or an iterator function")
end

local function deadline_of(timeout)
  if type(timeout) == "table" then timeout = timeout.timeout end
  if timeout == nil then return nil end
  if type(timeout) ~= "number" then type_error("get", "timeout", timeout, "a number or nil") end
  if timeout < 0 then timeout = 0 end
  return monotonic() + timeout
end

local function report_callback_error(what, err)
  io.stderr:write("Exception in pool ", what, ":\n", threading._format_error(err), "\n")
  io.stderr:flush()
end

-- Waits on the pool's condition until done() or the deadline.
local function wait_until(cond, done, deadline)
  if done() then return true end
  cond:acquire()
  local ok, err = pcall(function()
    while not done() do
      local left
      if deadline then
        left = deadline - monotonic()
        if left <= 0 then return end
      end
      cond:wait(left)
    end
  end)
  cond:release()
  if not ok then error(err, 0) end
  return done()
end

--------------------------------------------------------- AsyncResult

local AsyncResult = class("pool.AsyncResult")
M.AsyncResult = AsyncResult
M.ApplyResult = AsyncResult

function AsyncResult:__init__(pool, callback, error_callback)
  self._pool = pool
  self._callback = callback
  self._error_callback = error_callback
  self._ready = false
end

function AsyncResult:ready() return self._ready end

function AsyncResult:successful()
  if not self._ready then raise(ValueError(tostring(self) .. " not ready")) end
  return self._ok
end

function AsyncResult:wait(timeout)
  local deadline = deadline_of(timeout)
  wait_until(self._pool._cond, function() return self._ready end, deadline)
end

function AsyncResult:get(timeout)
  if not self._ready then self:wait(timeout) end
  if not self._ready then raise(TimeoutError()) end
  if self._ok then return self._value end
  error(self._value, 0)
end

-- Runs on the result thread: callbacks first, then ready (as Python),
-- so a get() that returns sees the callback's effects.
function AsyncResult:_set(ok, value)
  self._ok, self._value = ok, value
  local cb = ok and self._callback or self._error_callback
  if cb ~= nil then
    local cok, cerr = xpcall(cb, _t.msghandler, value)
    if not cok then report_callback_error(ok and "callback" or "error_callback", cerr) end
  end
  self._ready = true
end

function AsyncResult:__tostring()
  return ("<pool.AsyncResult %s>"):format(self._ready and "ready" or "pending")
end

----------------------------------------------------------- MapResult

local MapResult = class("pool.MapResult", AsyncResult)
M.MapResult = MapResult

function MapResult:__init__(pool, n, nchunks, callback, error_callback)
  AsyncResult.__init__(self, pool, callback, error_callback)
  self._n = n
  self._left = nchunks
  self._failed = false
  if nchunks == 0 then self:_set(true, _pool.newarray(n)) end
end

function MapResult:_set_chunk(start, ok, values)
  if self._failed or self._ready then return end
  if not ok then
    self._failed = true
    return self:_set(false, values)
  end
  -- The array of results is made with the first of them, on the result
  -- thread while the workers compute: faulting in a large new table
  -- before the first chunk went out delayed them all.
  local out = self._out
  if out == nil then out = _pool.newarray(self._n); self._out = out end
  if type(values) == "string" then   -- a packed chunk from a worker process
    unpack_into(out, start, values)
  else
    for i = 1, values.n or #values do out[start + i - 1] = values[i] end
  end
  self._left = self._left - 1
  if self._left == 0 then self:_set(true, out) end
end

--------------------------------------------------------- IMapIterator

local IMapIterator = class("pool.IMapIterator")
M.IMapIterator = IMapIterator

-- The input is read lazily, as Python's task handler does, but from
-- the consumer's calls and with a bounded read-ahead (window items in
-- flight): an endless iterator works, and memory stays bounded.
function IMapIterator:__init__(pool, unordered, func, iterable, n, chunksize)
  self._pool = pool
  self._unordered = unordered
  self._values, self._errors, self._have = {}, {}, {}
  self._order = {}         -- unordered: positions as they came
  self._taken = 0          -- positions yielded so far
  self._chunk_len = {}     -- first position -> length of its chunk
  self._func, self._chunksize = func, chunksize
  self._src, self._srcn = iterable, n   -- n: a table's length; nil: a function
  self._read = 0           -- items read from the input so far
  self._n = nil            -- the input's length, once it is known
  self._window = math.max(4 * pool._processes * chunksize, 256)
  pool._lazy[self] = true
  self:_fill()
end

-- Reads and submits input until 'window' items are in flight (all of
-- it when window is nil) or the input ends.
function IMapIterator:_fill(window)
  window = window or self._window
  local pool, size = self._pool, self._chunksize
  if self._n == nil and pool._state == "TERMINATE" then
    self._n, self._cut = self._read, true   -- the rest is never read
  end
  while self._n == nil and self._read - self._taken < window do
    local chunk, k, src = { n = 0 }, 0, self._src
    if self._srcn then
      k = math.min(size, self._srcn - self._read)
      move(src, self._read + 1, self._read + k, 1, chunk)
    else
      local last = self._last
      while k < size do
        local v = src(nil, last)
        if v == nil then break end
        k = k + 1
        chunk[k], last = v, v
      end
      self._last = last
    end
    chunk.n = k
    local start = self._read + 1
    self._read = self._read + k
    if k < size then
      self._n = self._read
      pool._lazy[self] = nil
    end
    if k > 0 then
      self._chunk_len[start] = k
      pool:_submit_chunk(self, start, self._func, chunk, 1, k, false)
    end
  end
end

-- A failed chunk: each of its positions carries the error.
function IMapIterator:_set_chunk(start, ok, values)
  if ok and type(values) == "string" then values = unpack_chunk(values) end
  local count = ok and (values.n or #values) or self._chunk_len[start]
  local order = self._order
  for i = 1, count do
    local pos = start + i - 1
    if ok then self._values[pos] = values[i] else self._errors[pos] = values end
    self._have[pos] = true
    order[#order + 1] = pos
  end
end

function IMapIterator:_next_pos()
  if self._unordered then return self._order[self._taken + 1] end
  local pos = self._taken + 1
  if self._have[pos] then return pos end
  return nil
end

-- next(timeout?) -> position, value; nil once all were yielded;
-- multiprocessing.TimeoutError on timeout; a task's error is raised at
-- its position.
function IMapIterator:next(timeout)
  if self._n == nil then self:_fill() end
  if self._n ~= nil and self._taken >= self._n then
    if self._cut then raise(WorkerLostError("the pool was terminated before the task completed")) end
    return nil
  end
  local deadline = deadline_of(timeout)
  local pos
  wait_until(self._pool._cond, function()
    pos = self:_next_pos()
    return pos ~= nil
  end, deadline)
  if pos == nil then raise(TimeoutError()) end
  self._taken = self._taken + 1
  local err = self._errors[pos]
  if err ~= nil then self._errors[pos] = nil; error(err, 0) end
  local v = self._values[pos]
  self._values[pos] = nil
  return pos, v
end

function IMapIterator:__call()
  return self:next()
end

----------------------------------------------------------- the front end

-- Pool and ThreadPool share everything but how a task reaches a worker
-- and how its result comes back (_submit / _deliver).
local Base = class("pool.Pool_base")

function Base:_init_common(processes)
  self._state = "RUN"
  self._lazy = setmetatable({}, { __mode = "k" })   -- imaps still reading input
  self._cond = threading.Condition(threading.Lock())
  self._jobs = {}           -- job -> result object
  self._starts = {}         -- job -> first position (map chunks)
  self._nextjob = 0
  self._processes = processes
end

function Base:_check_running()
  if self._state ~= "RUN" then raise(ValueError("Pool not running")) end
end

function Base:_newjob(result, start)
  local job = self._nextjob + 1
  self._nextjob = job
  self._jobs[job] = result
  if start then self._starts[job] = start end
  return job
end

-- A result of job 'job' arrived (on the result thread).
function Base:_deliver(job, ok, value)
  local r = self._jobs[job]
  if r == nil then return end
  self._jobs[job] = nil
  local start = self._starts[job]
  if start then
    self._starts[job] = nil
    r:_set_chunk(start, ok, value)
  else
    r:_set(ok, value)
  end
end

function Base:_notify()
  local cond = self._cond
  cond:acquire()
  cond:notify_all()
  cond:release()
end

local APPLY_ARGS = { "func", "args", "kwds", "callback", "error_callback" }

function Base:apply_async(func, args, kwds, callback, error_callback)
  if plain_table(func) then
    func, args, kwds, callback, error_callback = call_form(func, APPLY_ARGS)
  end
  check_callable("apply_async", "func", func)
  check_table("apply_async", "args", args)
  check_table("apply_async", "kwds", kwds)
  if callback ~= nil then check_callable("apply_async", "callback", callback) end
  if error_callback ~= nil then check_callable("apply_async", "error_callback", error_callback) end
  self:_check_running()
  local r = AsyncResult(self, callback, error_callback)
  self:_submit(self:_newjob(r), 1, func, args, kwds)
  return r
end

function Base:apply(func, args, kwds)
  if plain_table(func) then func, args, kwds = call_form(func, APPLY_ARGS) end
  return self:apply_async(func, args, kwds):get()
end

local function default_chunksize(self, n)
  local chunksize, extra = n // (self._processes * 4), n % (self._processes * 4)
  if extra ~= 0 then chunksize = chunksize + 1 end
  return chunksize > 0 and chunksize or 1
end

local function check_chunksize(fname, chunksize)
  if chunksize ~= nil then
    if math.type(chunksize) ~= "integer" then type_error(fname, "chunksize", chunksize, "an integer") end
    if chunksize < 1 then raise(ValueError(("Chunksize must be 1+, not %d"):format(chunksize))) end
  end
end

-- Sends items[1..n] as chunks; 'target' receives them by position.
function Base:_submit_chunks(target, func, items, n, chunksize, star)
  for start = 1, n, chunksize do
    local stop = math.min(start + chunksize - 1, n)
    if target._chunk_len then target._chunk_len[start] = stop - start + 1 end
    self:_submit_chunk(target, start, func, items, start, stop, star)
  end
end

local MAP_ARGS = { "func", "iterable", "chunksize", "callback", "error_callback" }

function Base:_map_async(fname, star, func, iterable, chunksize, callback, error_callback)
  if plain_table(func) then
    func, iterable, chunksize, callback, error_callback = call_form(func, MAP_ARGS)
  end
  check_callable(fname, "func", func)
  check_chunksize(fname, chunksize)
  if callback ~= nil then check_callable(fname, "callback", callback) end
  if error_callback ~= nil then check_callable(fname, "error_callback", error_callback) end
  self:_check_running()
  local items, n = to_array(fname, iterable)
  if star then
    for i = 1, n do
      if type(items[i]) ~= "table" then
        raise(TypeError(("%s() item %d must be a table of arguments, not %s"):format(fname, i, type(items[i]))))
      end
    end
  end
  chunksize = chunksize or default_chunksize(self, n)
  local nchunks = n == 0 and 0 or (n + chunksize - 1) // chunksize
  local r = MapResult(self, n, nchunks, callback, error_callback)
  self:_submit_chunks(r, func, items, n, chunksize, star)
  return r
end

function Base:map_async(...) return self:_map_async("map_async", false, ...) end
function Base:starmap_async(...) return self:_map_async("starmap_async", true, ...) end
function Base:map(...) return self:_map_async("map", false, ...):get() end
function Base:starmap(...) return self:_map_async("starmap", true, ...):get() end

function Base:_imap(fname, unordered, func, iterable, chunksize)
  if plain_table(func) then func, iterable, chunksize = call_form(func, MAP_ARGS) end
  check_callable(fname, "func", func)
  check_chunksize(fname, chunksize)
  self:_check_running()
  local n
  if type(iterable) == "table" and not is_callable(iterable) then
    n = iterable.n or #iterable
  elseif not is_callable(iterable) then
    type_error(fname, "iterable", iterable, "a table or an iterator function")
  end
  return IMapIterator(self, unordered, func, iterable, n, chunksize or 1)
end

function Base:imap(...) return self:_imap("imap", false, ...) end
function Base:imap_unordered(...) return self:_imap("imap_unordered", true, ...) end

function Base:__enter__()
  self:_check_running()
  return self
end

function Base:__exit__()
  self:terminate()
end

-- close(): the imaps made before it still get all their input (as in
-- Python, where the task handler goes on feeding them), so it is read
-- now.  A collection first forgets the ones nobody holds any more (a
-- loop left with break over an endless iterator); an endless one still
-- held makes close() wait forever, where Python's join() would.
function Base:_drain_lazy()
  if next(self._lazy) == nil then return end
  collectgarbage()
  for it in pairs(self._lazy) do it:_fill(math.huge) end
end

function Base:join()
  if self._state == "RUN" then raise(ValueError("Pool is still running")) end
  self:_join()
end

function Base:__tostring()
  return ("<%s state=%s pool_size=%d>"):format(getmetatable(self).__name__,
    self._state, self._processes)
end

M.Pool_base = Base

------------------------------------------------------------ workers

-- A worker's traceback ends with the task: the frames below it (the
-- worker loop, and the parent's frames from before the fork) are cut at
-- the xpcall of worker_main, with the pool's own calling frames above it.
local function trim_traceback(tb)
  local lines = {}
  for line in tb:gmatch("[^\n]+") do lines[#lines + 1] = line end
  local cut = #lines + 1
  for i = 1, #lines - 1 do
    if lines[i]:find("in function 'xpcall'", 1, true) and lines[i + 1]:find("mtlua/pool.lua:", 1, true) then
      cut = i
      break
    end
  end
  while cut > 2 and (lines[cut - 1]:find("mtlua/pool.lua:", 1, true) or lines[cut - 1]:find("(...tail calls...)", 1, true)
      or lines[cut - 1]:find("in function '_pool.", 1, true)) do
    cut = cut - 1
  end
  return table.concat(lines, "\n", 1, cut - 1)
end

-- The worker's error handler keeps the traceback beside the error, so
-- that plain string errors travel with theirs too.
local last_traceback
local function worker_handler(e)
  local tb = type(e) == "table" and isinstance(e, BaseException) and rawget(e, "traceback") or nil
  if tb == nil then tb = debug.traceback(nil, 2) end
  last_traceback = trim_traceback(tb)
  return e
end

-- -> result, is_packed (a map chunk's results go packed, not pickled)
-- The functions this worker was given once (fid -> function, or the
-- error loading it gave).
local worker_funcs, worker_func_errors = {}, {}

local function task_func(f)
  if math.type(f) ~= "integer" then return f end
  local fn = worker_funcs[f]
  if fn == nil then error(worker_func_errors[f] or "pool: the task's function never reached this worker", 0) end
  return fn
end

-- A map over numbers runs in C, from packed chunk to packed results.
local function run_task(payload, extra, loads)
  local t = loads(payload)
  local func = task_func(t[2])
  if t[1] == 1 then return call(func, t[3], t[4]), false end
  if not t[4] and (extra:byte(1) == 68 or extra:byte(1) == 78) then return _pool.map_packed(func, extra), "raw" end
  local out = run_chunk(func, unpack_chunk(extra), t[4])
  return out, true
end

-- The error as it travels: {error, traceback}; an error that cannot be
-- pickled goes as its string.
local function pickle_error(dumps, err, tb)
  local ok, data = pcall(dumps, { err, tb })
  if ok then return data end
  return dumps({ tostring(err), tb })
end

-- The loop of a worker process (runs in the child; its return value is
-- the exit status).
local function worker_main(fd, pickle, initializer, initargs, maxtasks)
  local recv, send, dumps, loads = _pool.recv, _pool.send, pickle.dumps, pickle.loads
  if initializer ~= nil then
    initializer(unpack(initargs or {}, 1, initargs and (initargs.n or #initargs) or 0))
  end
  local done = 0
  while maxtasks == nil or done < maxtasks do
    local job, payload, extra = recv(fd)
    if job == nil then break end
    while job < 0 do   -- a function that tasks will name by id
      local lok, fn = pcall(loads, payload)
      if lok then worker_funcs[-job] = fn else worker_func_errors[-job] = fn end
      job, payload, extra = recv(fd)
      if job == nil then return 0 end
    end
    local ok, res, packed = xpcall(run_task, worker_handler, payload, extra, loads)
    local data
    if ok then
      local pok, pdata
      if packed == "raw" then pok, pdata = true, res
      elseif packed then pok, pdata = pcall(pack_chunk, res, 1, res.n)
      else pok, pdata = pcall(dumps, res) end
      if pok then
        data = pdata
      else
        ok = false
        local e = TypeError("Error sending result: " .. tostring(isinstance(pdata, BaseException)
          and pdata.message or pdata))
        data = pickle_error(dumps, e, debug.traceback("in the worker, pickling the result", 1))
      end
    else
      data = pickle_error(dumps, res, last_traceback)
    end
    if not send(fd, job, ok, data) then break end   -- the parent is gone
    done = done + 1
    if packed == "raw" then
      -- A map chunk's strings (the chunk, its results) are as large as
      -- the chunk: freed now, the next chunk's reuse their memory
      -- instead of faulting in fresh pages, which cost as much as the
      -- calls of a cheap function.
      payload, extra, res, data = nil, nil, nil, nil
      collectgarbage("step", 0)
    end
  end
  return 0
end

-- In the parent: a task's error, with the worker's traceback.
local function remote_error(err, tb)
  tb = tostring(tb or "")
  if type(err) == "table" and isinstance(err, BaseException) then
    err.traceback = 'Remote traceback:\n"""\n' .. tb .. '\n"""'
    return err
  end
  return tostring(err) .. '\nRemote traceback:\n"""\n' .. tb .. '\n"""'
end

---------------------------------------------------------------- Pool

local live_pools = setmetatable({}, { __mode = "k" })

local Pool = class("Pool", Base)
M.Pool = Pool

local POOL_ARGS = { "processes", "initializer", "initargs", "maxtasksperchild" }

local function pool_args(fname, processes, initializer, initargs, maxtasks)
  if plain_table(processes) then
    processes, initializer, initargs, maxtasks = call_form(processes, POOL_ARGS)
  end
  if processes == nil then processes = os.cpu_count() or 1 end
  if math.type(processes) ~= "integer" then type_error(fname, "processes", processes, "an integer") end
  if processes < 1 then raise(ValueError("Number of processes must be at least 1")) end
  if initializer ~= nil then check_callable(fname, "initializer", initializer) end
  check_table(fname, "initargs", initargs)
  if maxtasks ~= nil and (math.type(maxtasks) ~= "integer" or maxtasks < 1) then
    raise(ValueError("maxtasksperchild must be a positive int or nil"))
  end
  return processes, initializer, initargs or {}, maxtasks
end

function Pool:__init__(...)
  local processes, initializer, initargs, maxtasks = pool_args("Pool", ...)
  self._pickle = require "pickle"
  self:_init_common(processes)
  self._initializer, self._initargs, self._maxtasks = initializer, initargs, maxtasks
  self._core = _pool.new(processes, maxtasks or 0, require("_multiprocessing").fork)
  self._fids = setmetatable({}, { __mode = "k" })   -- function -> fid
  self._fid_by_pickle, self._fid_list = {}, {}
  for slot = 1, processes do self:_spawn(slot) end
  self._thread = threading.Thread{ target = M._handle_results, args = { self },
    name = "Pool-result-handler", daemon = true }
  self._thread:start()
  live_pools[self] = true
end

function Pool:_spawn(slot)
  return self._core:spawn(slot, worker_main, self._pickle, self._initializer,
    self._initargs, self._maxtasks)
end

-- A map chunk: items[i..j] for 'target' at position 'start'.  It
-- crosses packed (numbers) or pickled, beside the signed function pickle.
function Pool:_submit_chunk(target, start, func, items, i, j, star)
  local job = self:_newjob(target, start)
  local ok, fid = pcall(self._fid, self, func)
  local data
  if ok then ok, data = pcall(self._pickle.dumps, { 2, fid or func, nil, star }) else data = fid end
  if ok then ok, data = pcall(self._core.submit_chunk, self._core, job, data, items, i, j, fid) end
  if not ok then
    self._jobs[job], self._starts[job] = nil, nil
    error(data, 0)
  end
end

-- A function whose upvalues are all the globals table (or that has
-- none) holds no state of its own, so one pickle of it serves every
-- call: it is sent to each worker once and tasks name it by id.  Other
-- closures are pickled with each task (their upvalues by value, as the
-- task was submitted).
local globals, getupvalue = _G, debug.getupvalue
local function stateless(f)
  if type(f) ~= "function" then return false end
  local i = 1
  while true do
    local name, v = getupvalue(f, i)
    if name == nil then return true end
    if v ~= globals then return false end
    i = i + 1
  end
end

function Pool:_fid(func)
  if not stateless(func) then return nil end
  local fid = self._fids[func]
  if fid then return fid end
  local data = self._pickle.dumps(func)
  fid = self._fid_by_pickle[data]   -- closures of one prototype share it
  if fid == nil then
    fid = #self._fid_list + 1
    self._fid_list[fid] = data
    self._fid_by_pickle[data] = fid
    self._core:define(fid, data)
  end
  self._fids[func] = fid
  return fid
end

function Pool:_submit(job, kind, func, args, kwds)
  local extra
  local ok, fid = pcall(self._fid, self, func)
  local data
  if ok then ok, data = pcall(self._pickle.dumps, { kind, fid or func, args, kwds }) else data = fid end
  if not ok then
    self._jobs[job], self._starts[job] = nil, nil
    error(data, 0)
  end
  self._core:submit(job, data, extra, fid)
end

-- The pool's result thread: takes what the I/O thread collected,
-- fills the results, runs the callbacks, replaces lost workers.
function M._handle_results(self)
  local core, loads, starts = self._core, self._pickle.loads, self._starts
  core:adopt(true)
  while true do
    local ev = core:wait()
    if ev == nil then break end
    for i = 1, ev.n, 5 do
      local kind, job = ev[i], ev[i + 1]
      if kind == EV_RESULT then
        local ok, lok, value = ev[i + 2], true, ev[i + 3]
        if not ok or starts[job] == nil then lok, value = pcall(loads, value) end
        if not lok then
          ok, value = false, value
        elseif not ok then
          value = remote_error(value[1], value[2])
        end
        self:_deliver(job, ok, value)
      elseif kind == EV_CANCELLED then
        self:_deliver(job, false, WorkerLostError("the pool was terminated before the task completed"))
      else   -- a worker ended: lost its task (if any); replace it
        if job ~= 0 then
          self:_deliver(job, false, WorkerLostError(ev[i + 3] .. " while running a task"))
        end
        if ev[i + 4] then
          local sok, serr = pcall(self._spawn, self, ev[i + 2])
          if not sok then
            report_callback_error("worker replacement", serr)
            core:abandon(ev[i + 2])
          end
        end
      end
    end
    self:_notify()
  end
  core:adopt(false)
  self._finished = true
  self:_notify()
end

function Pool:close()
  if self._state == "RUN" then
    self:_drain_lazy()
    self._state = "CLOSE"
    self._core:close()
  end
end

function Pool:terminate()
  if self._state == "TERMINATE" then return end
  self._state = "TERMINATE"
  self._core:terminate()
  self:_join()
end

function Pool:_join()
  if self._thread ~= threading.current_thread() then self._thread:join() end
  live_pools[self] = nil
end

-- pids of the live workers (for tests and the curious)
function Pool:_pids() return self._core:pids() end

------------------------------------------------------------ ThreadPool

local ThreadPool = class("ThreadPool", Base)
M.ThreadPool = ThreadPool

function ThreadPool:__init__(...)
  local processes, initializer, initargs, maxtasks = pool_args("ThreadPool", ...)
  self:_init_common(processes)
  self._initializer, self._initargs, self._maxtasks = initializer, initargs, maxtasks
  self._tasks, self._thead, self._ttail = {}, 1, 0
  self._tcond = threading.Condition(threading.Lock())
  self._deliver_lock = threading.Lock()
  self._workers = {}
  for _ = 1, processes do self:_start_worker() end
  live_pools[self] = true
end

function ThreadPool:_start_worker()
  local t = threading.Thread{ target = M._thread_worker, args = { self },
    name = "ThreadPoolWorker", daemon = true }
  self._workers[t] = true
  t:start()
end

function ThreadPool:_submit_chunk(target, start, func, items, i, j, star)
  self:_submit(self:_newjob(target, start), 2, func, move(items, i, j, 1, { n = j - i + 1 }), star)
end

function ThreadPool:_submit(job, kind, func, args, kwds)
  local cond = self._tcond
  cond:acquire()
  self._ttail = self._ttail + 1
  self._tasks[self._ttail] = { job, kind, func, args, kwds }
  cond:notify()
  cond:release()
end

-- Takes the next task, or nil when the pool is done with this thread.
local function take_task(self)
  local cond = self._tcond
  cond:acquire()
  while self._thead > self._ttail and self._state == "RUN" do cond:wait() end
  local task
  if self._thead <= self._ttail and self._state ~= "TERMINATE" then
    task = self._tasks[self._thead]
    self._tasks[self._thead] = nil
    self._thead = self._thead + 1
  end
  cond:release()
  return task
end

function M._thread_worker(self)
  if self._initializer ~= nil then
    local ia = self._initargs
    self._initializer(unpack(ia, 1, ia.n or #ia))
  end
  local done = 0
  while self._maxtasks == nil or done < self._maxtasks do
    local task = take_task(self)
    if task == nil then break end
    local ok, res
    if task[2] == 1 then
      ok, res = xpcall(call, worker_handler, task[3], task[4], task[5])
    else
      ok, res = xpcall(run_chunk, worker_handler, task[3], task[4], task[5])
    end
    local lock = self._deliver_lock
    lock:acquire()
    pcall(self._deliver, self, task[1], ok, res)
    lock:release()
    self:_notify()
    done = done + 1
  end
  local cur = threading.current_thread()
  local cond = self._tcond
  cond:acquire()
  self._workers[cur] = nil
  local replace = self._state ~= "TERMINATE" and
    (self._state == "RUN" or self._thead <= self._ttail)
  if replace and self._maxtasks ~= nil and done >= self._maxtasks then self:_start_worker() end
  cond:release()
end

function ThreadPool:close()
  if self._state == "RUN" then
    self:_drain_lazy()
    self._state = "CLOSE"
    local cond = self._tcond
    cond:acquire(); cond:notify_all(); cond:release()
  end
end

function ThreadPool:terminate()
  if self._state == "TERMINATE" then return end
  self._state = "TERMINATE"
  local cond = self._tcond
  cond:acquire()
  local cancelled = {}
  for i = self._thead, self._ttail do
    cancelled[#cancelled + 1] = self._tasks[i][1]
    self._tasks[i] = nil
  end
  self._thead = self._ttail + 1
  cond:notify_all()
  cond:release()
  local lock = self._deliver_lock
  lock:acquire()
  for _, job in ipairs(cancelled) do
    pcall(self._deliver, self, job,
      false, WorkerLostError("the pool was terminated before the task completed"))
  end
  lock:release()
  self:_notify()
  self:_join()
end

-- Threads cannot be killed: terminate lets the running tasks finish.
function ThreadPool:_join()
  while true do
    local t = next(self._workers)
    if t == nil then break end
    if t == threading.current_thread() then break end
    t:join()
    self._workers[t] = nil
  end
  live_pools[self] = nil
end

-------------------------------------------------------------- at exit

-- As in Python: first the non-daemon threads end, then pools still
-- running are terminated, so no worker outlives the program.
_t.atexit(function()
  threading._shutdown()
  for p in pairs(live_pools) do
    if getmetatable(p) == Pool or (getmetatable(p) and issubclass(getmetatable(p), Pool)) then
      pcall(p.terminate, p)
    end
  end
end)

return M
