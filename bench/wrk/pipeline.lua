-- HTTP pipelining in the TechEmpower "plaintext" manner: every write carries
-- `depth` requests back to back (default 16) for one path, and wrk counts
-- each response as it parses it.
--
-- Usage: wrk -t1 -c100 -d10s -s pipeline.lua http://127.0.0.1:PORT -- /current [depth]

local pipelined

function init(args)
  local path = args[1] or "/"
  local depth = tonumber(args[2]) or 16
  local parts = {}
  for i = 1, depth do
    parts[i] = wrk.format(nil, path)
  end
  pipelined = table.concat(parts)
end

function request()
  return pipelined
end
