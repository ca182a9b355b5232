-- wrk script: every request POSTs a small primes task as JSON.
-- Arguments after `--`: the path (default /v1/primes/tasks), n (default
-- 100), `keyed` to send a fresh Idempotency-Key with every request (what a
-- client that retries safely sends) or `-` for none, and a callback URL to
-- name in every task's body.
local path, n, keyed, body = "/v1/primes/tasks", "100", false, nil
local prefix, sent = "", 0

function init(args)
   path = args[1] or path
   n = args[2] or n
   keyed = args[3] == "keyed"
   if args[4] then
      body = '{"n": ' .. n .. ', "callback_url": "' .. args[4] .. '"}'
   else
      body = '{"n": ' .. n .. '}'
   end
   math.randomseed(os.time() + math.floor(os.clock() * 1e6))
   prefix = string.format("%08x-", math.random(0, 0x7fffffff))
end

function request()
   local headers = { ["Content-Type"] = "application/json" }
   if keyed then
      sent = sent + 1
      headers["Idempotency-Key"] = prefix .. sent
   end
   return wrk.format("POST", path, headers, body)
end
