-- wrk script: the peer of fibd's cluster mode, a plain client that keeps a
-- counter in etcd with one transaction per step, through etcd's JSON gateway
-- (POST /v3/kv/txn, base64 keys and values), the path fibd itself uses.
--
-- Mode "step" (default): every request is
--   compare  mod_revision(KEY) == the revision last seen
--   success  put KEY = index + 1, then range KEY
--   failure  range KEY
-- The range in both branches brings back the key's value and mod_revision,
-- and the thread keeps the newest it has seen: a conflict (another
-- connection moved the counter first) costs one round trip and the next
-- request retries on the fresh state. The connections of one wrk thread
-- share that state, as the requests of one client process would.
-- Mode "put": every request is a txn with one unconditional put of KEY (no
-- compare, so never a conflict): what etcd commits per second through the
-- gateway, the role of etcd's own `benchmark txn-put`.
-- Modes "get" and "get-serializable": POST /v3/kv/range of KEY, etcd's
-- linearizable (quorum) read or its serializable (local) one: the read
-- behind fibd's /current, made by the client itself.
--
-- Usage: wrk -t1 -c96 -d10s -s etcd-step.lua http://127.0.0.1:2379 -- MODE [KEY]
-- (works with wrk2 too). done() prints "steps N conflicts M errors E"
-- (step: succeeded txns; put, get: requests answered 200).

local alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local decode_table = {}
for i = 1, 64 do
   decode_table[alphabet:sub(i, i)] = i - 1
end

local function b64encode(s)
   local out = {}
   for i = 1, #s, 3 do
      local a, b, c = s:byte(i, i + 2)
      local n = a * 65536 + (b or 0) * 256 + (c or 0)
      local chars = {}
      for j = 3, 0, -1 do
         local k = math.floor(n / 64 ^ j) % 64
         chars[#chars + 1] = alphabet:sub(k + 1, k + 1)
      end
      if not b then chars[3] = "=" end
      if not c then chars[4] = "=" end
      out[#out + 1] = table.concat(chars)
   end
   return table.concat(out)
end

local function b64decode(s)
   local out, bits, nbits = {}, 0, 0
   for ch in s:gmatch("[^=]") do
      bits = bits * 64 + decode_table[ch]
      nbits = nbits + 6
      if nbits >= 8 then
         nbits = nbits - 8
         local byte = math.floor(bits / 2 ^ nbits)
         out[#out + 1] = string.char(byte)
         bits = bits - byte * 2 ^ nbits
      end
   end
   return table.concat(out)
end

local mode, key = "step", "/bench/peer/index"
local key64
local revision, index = 0, 0
steps, conflicts, errors = 0, 0, 0

local threads = {}

function setup(thread)
   threads[#threads + 1] = thread
end

function init(args)
   mode = args[1] or mode
   key = args[2] or key
   key64 = b64encode(key)
   wrk.method = "POST"
   wrk.path = "/v3/kv/txn"
   wrk.headers["Content-Type"] = "application/json"
   if mode == "get" or mode == "get-serializable" then
      wrk.path = "/v3/kv/range"
      wrk.body = string.format('{"key":"%s","serializable":%s}', key64,
         tostring(mode == "get-serializable"))
   end
end

function request()
   if wrk.path == "/v3/kv/range" then
      return wrk.format()
   end
   if mode == "put" then
      return wrk.format(nil, nil, nil, string.format(
         '{"success":[{"request_put":{"key":"%s","value":"%s"}}]}',
         key64, b64encode(tostring(steps))))
   end
   return wrk.format(nil, nil, nil, string.format(
      '{"compare":[{"key":"%s","target":"MOD","mod_revision":"%d"}],' ..
      '"success":[{"request_put":{"key":"%s","value":"%s"}},{"request_range":{"key":"%s"}}],' ..
      '"failure":[{"request_range":{"key":"%s"}}]}',
      key64, revision, key64, b64encode(tostring(index + 1)), key64, key64))
end

function response(status, headers, body)
   if status ~= 200 then
      errors = errors + 1
      return
   end
   if mode ~= "step" then
      steps = steps + 1
      return
   end
   if body:find('"succeeded":true', 1, true) then
      steps = steps + 1
   else
      conflicts = conflicts + 1
   end
   local mod = body:match('"mod_revision":"(%d+)"')
   local value = body:match('"value":"([^"]*)"')
   if mod and value and tonumber(mod) > revision then
      revision = tonumber(mod)
      index = tonumber(b64decode(value))
   end
end

function done(summary, latency, requests)
   local s, c, e = 0, 0, 0
   for _, thread in ipairs(threads) do
      s = s + thread:get("steps")
      c = c + thread:get("conflicts")
      e = e + thread:get("errors")
   end
   io.write(string.format("steps %d conflicts %d errors %d\n", s, c, e))
end
