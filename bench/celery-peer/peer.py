"""The Celery + Redis peer for fibd's primes tasks, as the service fibd
replaces ran it: POST /tasks {"n": N} answers 202 {"request_id", "status":
"pending"} once Celery has handed the task message to Redis (run Redis with
appendonly yes / appendfsync always, so the message is fsynced before Redis
acknowledges it). No worker runs: this measures acceptance only.

The HTTP front is the standard library's threading server (one thread per
connection), not FastAPI + uvicorn: fewer moving parts, and the broker round
trip, not the HTTP layer, is what acceptance waits on.

    python peer.py PORT REDIS_PORT
"""

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from celery import Celery

port, redis_port = int(sys.argv[1]), int(sys.argv[2])
broker = f"redis://127.0.0.1:{redis_port}/0"
app = Celery("primes", broker=broker)


@app.task(name="primes")
def primes(n):
    """Never run here (no worker); the peer only enqueues."""
    return n


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        try:
            n = int(json.loads(self.rfile.read(length))["n"])
        except (ValueError, KeyError, TypeError):
            return self.reply(400, {"error": "send {\"n\": N}"})
        result = primes.apply_async(args=[n])
        self.reply(202, {"request_id": result.id, "status": "pending"})

    def reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer.request_queue_size = 1024
ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
