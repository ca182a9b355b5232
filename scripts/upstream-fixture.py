#!/usr/bin/env python3
"""A fixed-answer HTTP upstream for /api/smart in scripts/schemathesis:
every GET gets 200 and the same small JSON object, on 127.0.0.1.

usage: upstream-fixture.py PORT_FILE   (binds a free port and writes it there)
"""
import http.server
import sys

BODY = b'{"data": "fixture", "ok": true}\n'


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, *args):
        pass


class Server(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        # fibd closes the sockets of attempts it no longer needs (a hedge
        # that lost, a caller that timed out): a broken pipe here is expected.
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


server = Server(("127.0.0.1", 0), Handler)
with open(sys.argv[1], "w") as f:
    f.write(str(server.server_address[1]))
server.serve_forever()
