-- Durable steps that keep the index small: each connection alternates
-- POST /next and POST /previous, so every request is a mutation that must be
-- fsynced before its answer, yet the values stay a few digits long. This
-- isolates the cost of durability from the cost of big numbers (a /next-only
-- load walks the index into values of tens of thousands of digits).
--
-- Usage: wrk -t1 -c100 -d10s -s steps.lua http://127.0.0.1:PORT

local next_req, previous_req

function init(args)
  next_req = wrk.format("POST", "/next", { ["Content-Length"] = "0" })
  previous_req = wrk.format("POST", "/previous", { ["Content-Length"] = "0" })
end

local forward = true

function request()
  forward = not forward
  if forward then
    return next_req
  end
  return previous_req
end
