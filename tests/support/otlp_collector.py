"""An OTLP/HTTP JSON trace collector for the tests: every POST to /v1/traces
is read by an independent reader, PyPI's opentelemetry-proto, through
protobuf's json_format.Parse into ExportTraceServiceRequest, which refuses
fields, types and enum values the schema does not allow.

OTLP JSON carries trace and span ids as hex strings where protobuf's JSON
mapping expects base64 for bytes: the ids are checked to be lowercase hex of
the right length and turned into base64 before parsing.

Prints JSON lines on stdout: {"event": "listening", "port": N} first, then
{"event": "accepted", "request": ...} for each request it took (protobuf's
own reading of it, ids back in hex, enums as integers) or
{"event": "rejected", "why": ...} for each it answered 400.

usage: otlp_collector.py [--hold-first]
  --hold-first  the first accepted request is answered only once a line is
                read from stdin (or stdin closes): a collector the test holds.
"""

import base64
import binascii
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
)

TRACE_ID_HEX = 32
SPAN_ID_HEX = 16
BODY_BYTES_MAX = 16 << 20

out_lock = threading.Lock()
held = {"first": "--hold-first" in sys.argv[1:]}
hold_lock = threading.Lock()


def emit(record):
    with out_lock:
        sys.stdout.write(json.dumps(record) + "\n")
        sys.stdout.flush()


class Refused(Exception):
    pass


def spans_of(request):
    for resource_spans in request.get("resourceSpans", []):
        for scope_spans in resource_spans.get("scopeSpans", []):
            yield from scope_spans.get("spans", [])


def hex_to_base64(span, key, length, required):
    value = span.get(key)
    if value is None:
        if required:
            raise Refused(f"span without {key}")
        return
    if not isinstance(value, str) or len(value) != length:
        raise Refused(f"{key} {value!r}: not {length} hex digits")
    if value != value.lower():
        raise Refused(f"{key} {value!r}: not lowercase hex")
    try:
        raw = binascii.unhexlify(value)
    except binascii.Error as e:
        raise Refused(f"{key} {value!r}: {e}")
    if raw == bytes(len(raw)):
        raise Refused(f"{key} {value!r}: all zero")
    span[key] = base64.b64encode(raw).decode()


def base64_to_hex(span, key):
    if key in span:
        span[key] = base64.b64decode(span[key]).hex()


def read(body):
    request = json.loads(body)
    for span in spans_of(request):
        hex_to_base64(span, "traceId", TRACE_ID_HEX, True)
        hex_to_base64(span, "spanId", SPAN_ID_HEX, True)
        hex_to_base64(span, "parentSpanId", SPAN_ID_HEX, False)
    message = json_format.Parse(json.dumps(request), ExportTraceServiceRequest())
    understood = json_format.MessageToDict(message, use_integers_for_enums=True)
    for span in spans_of(understood):
        for key in ("traceId", "spanId", "parentSpanId"):
            base64_to_hex(span, key)
    return understood


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        try:
            if self.path != "/v1/traces":
                raise Refused(f"POST {self.path}: not /v1/traces")
            content_type = self.headers.get("Content-Type", "")
            if content_type.split(";")[0].strip() != "application/json":
                raise Refused(f"Content-Type {content_type!r}")
            length = int(self.headers.get("Content-Length", "-1"))
            if not 0 <= length <= BODY_BYTES_MAX:
                raise Refused(f"Content-Length {length}")
            request = read(self.rfile.read(length))
        except (Refused, ValueError, json_format.ParseError) as e:
            emit({"event": "rejected", "why": f"{type(e).__name__}: {e}"})
            self.answer(400, {"code": 3, "message": str(e)})
            return
        emit({"event": "accepted", "request": request})
        with hold_lock:
            hold, held["first"] = held["first"], False
        if hold:
            sys.stdin.readline()
        # An empty ExportTraceServiceResponse: everything was taken.
        self.answer(200, {})

    def answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format, *args):
        pass


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    emit({"event": "listening", "port": server.server_address[1]})
    server.serve_forever()


if __name__ == "__main__":
    main()
