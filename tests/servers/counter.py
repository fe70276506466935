"""A tiny stateful HTTP server for runtime tests (stdlib only, boots in milliseconds).

GET /health -> ok; GET /count -> the counter; POST /incr -> counter + 1.
With --map FILE it keeps FILE mmapped (to test file checks on restore).
With --heartbeat FILE a thread appends this process's boot id to FILE every 20 ms,
opening it each time (a file held open while it grows could not be restored): shows
whether a process ran, and which.
"""

import http.server
import mmap
import os
import sys

port = int(sys.argv[1])
ballast = bytearray(os.urandom(1 << 20))  # 1 MiB of state that must survive a restore
mapped = None
if "--map" in sys.argv:
    with open(sys.argv[sys.argv.index("--map") + 1], "rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)


class Handler(http.server.BaseHTTPRequestHandler):
    count = 0

    def _send(self, text: str) -> None:
        body = text.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/health":
            self._send("ok")
        else:
            self._send(f"{Handler.count} {sum(ballast[:4096])}")

    def do_POST(self) -> None:
        Handler.count += 1
        print(f"incremented to {Handler.count}", flush=True)
        self._send(str(Handler.count))

    def log_message(self, *args: object) -> None:
        pass


class Server(http.server.HTTPServer):
    request_queue_size = 256  # bursts of concurrent requests must queue, not be refused


if "--heartbeat" in sys.argv:
    import threading
    import time

    beat_path = sys.argv[sys.argv.index("--heartbeat") + 1]
    boot_id = f"{os.getpid()}-{time.time_ns()}"

    def beat() -> None:
        while True:
            with open(beat_path, "a") as out:
                out.write(boot_id + "\n")
            time.sleep(0.02)

    threading.Thread(target=beat, daemon=True).start()

print(f"counter serving on {port}", flush=True)
Server(("127.0.0.1", port), Handler).serve_forever()
