"""A stand-in engine process for supervisor tests: serves GET /health on 127.0.0.1:PORT.

Flags: --ignore-sigterm (so the supervisor must SIGKILL it), --grandchild PIDFILE (starts a `sleep` helper in
its process group and writes its pid), --unhealthy (answers 503 forever), --host ADDRESS (listen there instead
of 127.0.0.1, as engines do)."""

import http.server
import signal
import subprocess
import sys

port = int(sys.argv[1])
flags = sys.argv[2:]
if "--ignore-sigterm" in flags:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if "--grandchild" in flags:
    helper = subprocess.Popen(["sleep", "600"])
    with open(flags[flags.index("--grandchild") + 1], "w") as f:
        f.write(str(helper.pid))
status = 503 if "--unhealthy" in flags else 200
host = flags[flags.index("--host") + 1] if "--host" in flags else "127.0.0.1"


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        self.send_response(status)
        self.end_headers()
        self.wfile.write(b'{"status":"ok"}')

    def log_message(self, *args):
        pass


http.server.HTTPServer((host, port), Handler).serve_forever()
