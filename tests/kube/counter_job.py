"""A Job's work for the `kube` tests (stdlib only): it counts, one line a step, and keeps its
count only in memory, so a count that goes on after an eviction came back from a checkpoint.

    python tests/kube/counter_job.py --port {port} [--every 0.25] [--until 100000]

GET /health -> ok (what `dormant exec` checks before it calls the command up), on 0.0.0.0.
"""

import argparse
import http.server
import threading
import time

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int, required=True)
parser.add_argument("--every", type=float, default=0.25)
parser.add_argument("--until", type=int, default=100_000)
args = parser.parse_args()


def count() -> None:
    n = 0
    while n < args.until:
        n += 1
        print(f"count {n}", flush=True)
        time.sleep(args.every)
    print("counted", flush=True)


class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"ok" if self.path == "/health" else b""
        self.send_response(200 if body else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *a: object) -> None:
        pass


threading.Thread(target=count, name="count", daemon=True).start()
http.server.HTTPServer(("0.0.0.0", args.port), Health).serve_forever()
