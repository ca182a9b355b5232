-- wrk script: every request is a POST with an empty body to the path given
-- after `--` (default /next): the durable step, as a client makes it.
--
-- Usage: wrk -t1 -c96 -d10s -s post.lua http://127.0.0.1:PORT -- /next
function init(args)
  wrk.method = "POST"
  wrk.path = args[1] or "/next"
  wrk.headers["Content-Length"] = "0"
end
