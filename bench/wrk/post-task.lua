-- wrk script: every request POSTs a small primes task as JSON.
-- Arguments after `--`: the path (default /v1/primes/tasks), n (default
-- 100), and `keyed` to send a fresh Idempotency-Key with every request
-- (what a client that retries safely sends).
local path, n, keyed = "/v1/primes/tasks", "100", false
local prefix, sent = "", 0

function init(args)
   path = args[1] or path
   n = args[2] or n
   keyed = args[3] == "keyed"
   math.randomseed(os.time() + math.floor(os.clock() * 1e6))
   prefix = string.format("%08x-", math.random(0, 0x7fffffff))
end

function request()
   local headers = { ["Content-Type"] = "application/json" }
   if keyed then
      sent = sent + 1
      headers["Idempotency-Key"] = prefix .. sent
   end
   return wrk.format("POST", path, headers, '{"n": ' .. n .. '}')
end
