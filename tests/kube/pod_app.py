"""A pod's server for the `kube` tests (stdlib only): what the fake kubelet runs in a pod.

    python tests/kube/pod_app.py --host $(POD_IP) --port 8080 [--data /data]

GET /health -> ok. GET /visits -> every pod that started with this --data directory, one
name per line (each start appends $HOSTNAME to DATA/visits: what survives in a claim).
SIGTERM -> prints "SIGTERM received", exits 0.
"""

import argparse
import http.server
import os
import signal
import sys
from pathlib import Path

parser = argparse.ArgumentParser()
parser.add_argument("--host", required=True)
parser.add_argument("--port", type=int, required=True)
parser.add_argument("--data", type=Path)
args = parser.parse_args()

visits = args.data / "visits" if args.data else None
if visits is not None:
    with visits.open("a") as f:
        f.write(os.environ.get("HOSTNAME", "?") + "\n")


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/health":
            body = b"ok"
        elif self.path == "/visits" and visits is not None:
            body = visits.read_bytes()
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *a: object) -> None:
        pass


def on_term(signum: int, frame: object) -> None:
    print("SIGTERM received", flush=True)
    sys.exit(0)


signal.signal(signal.SIGTERM, on_term)
server = http.server.HTTPServer((args.host, args.port), Handler)
print(f"pod_app serving on {args.host}:{args.port}", flush=True)
server.serve_forever()
