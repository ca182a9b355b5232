#!/usr/bin/env python3
"""A Zipkin collector stand-in for benchmarks: takes POST /api/v2/spans
(keep-alive), counts batches and spans, answers 202, keeps nothing.

    taskset -c 1 bench/zipkin-sink.py 9411 &
    FIBD_EXTRA_ARGS="--trace-zipkin http://127.0.0.1:9411/api/v2/spans --trace-sample 1" \
        bench/run --only pipeline

On SIGTERM or SIGINT it prints the batches and spans it took to stderr.
"""
import http.server
import json
import signal
import sys

taken = {"batches": 0, "spans": 0}


class Sink(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        taken["batches"] += 1
        taken["spans"] += len(json.loads(body))
        self.send_response(202)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def report(*_):
    print(f"zipkin-sink: {taken['batches']} batches, {taken['spans']} spans", file=sys.stderr)
    sys.exit(0)


signal.signal(signal.SIGTERM, report)
signal.signal(signal.SIGINT, report)
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Sink).serve_forever()
