-- Every kind of request at once, for looking at the dashboards: reads, durable
-- steps (three /next to two /previous, so the index climbs slowly), cached and
-- computed /v1/fib, /v1/random, a 404 now and then. Not a benchmark.
--
-- Usage: wrk2 -t1 -c20 -d60s -R2000 -s mixed.lua http://127.0.0.1:PORT

local fixed = {}
local n = 0

function init(args)
  local function get(path) return wrk.format("GET", path) end
  local function post(path) return wrk.format("POST", path, { ["Content-Length"] = "0" }) end
  fixed = {
    get("/current"), get("/current"), get("/current"), get("/current"),
    post("/next"), post("/next"), post("/next"), post("/previous"), post("/previous"),
    get("/v1/fib?n=90"), get("/v1/fib?n=1000"), get("/v1/fib?n=5000"),
    get("/v1/random?min=1&max=6&count=3"), get("/healthz"), get("/current"),
  }
  math.randomseed(os.time())
end

function request()
  n = n + 1
  if n % 97 == 0 then
    return wrk.format("GET", "/no/such/page")
  end
  if n % 41 == 0 then
    -- A value nobody asked for yet: a cache miss, computed off the loop.
    return wrk.format("GET", "/v1/fib?n=" .. math.random(20001, 60000))
  end
  return fixed[(n % #fixed) + 1]
end
