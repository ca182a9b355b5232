-- wrk script: every request POSTs a small primes task as JSON.
-- Argument after `--`: the path (default /v1/primes/tasks) and n (default 100).
local path, n = "/v1/primes/tasks", "100"

function init(args)
   path = args[1] or path
   n = args[2] or n
end

function request()
   return wrk.format("POST", path, { ["Content-Type"] = "application/json" },
      '{"n": ' .. n .. '}')
end
