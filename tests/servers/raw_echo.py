"""An upstream that reports the raw request target it received (stdlib only).

Python's ``http.server`` (HTTP/1.0 handler: it never answers ``Expect: 100-continue``,
like the server in the report), threaded. Every request, any method and path, is
answered with JSON: ``target`` (the request-target exactly as received, not decoded),
``method``, ``headers``, ``body_bytes`` and ``pid`` (this process's PID on the host).
A WebSocket upgrade is accepted and the same JSON is sent as the first text message.

Fault endpoints (the fault is the point):
* ``/sse-then-hang``: an SSE stream (chunked), two events, then silence until killed;
* ``/sse-then-close``: an SSE stream, two events, then the socket is closed mid-body;
* ``/short-body``: ``Content-Length: 100`` and 10 bytes, then the socket is closed.

With ``--record FILE``, every request line that reaches it is appended to FILE first
(before it is parsed), so a test can tell what was forwarded and what never arrived.

Usage: raw_echo.py --port PORT [--record FILE]
"""

import base64
import hashlib
import http.server
import json
import socket
import struct
import sys
import time

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def host_pid() -> int:
    """The PID as the host sees it (Dormant runs us in a PID namespace; /proc is the host's)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("NSpid:"):
                return int(line.split()[1])
    raise RuntimeError("no NSpid in /proc/self/status")


PID = host_pid()
RECORD = sys.argv[sys.argv.index("--record") + 1] if "--record" in sys.argv else None


class Handler(http.server.BaseHTTPRequestHandler):
    def parse_request(self) -> bool:
        if RECORD is not None:
            with open(RECORD, "ab") as f:
                f.write(self.raw_requestline)
        return super().parse_request()

    def report(self, body_bytes: int) -> bytes:
        return json.dumps(
            {
                # from the request line itself: http.server folds a leading '//' in .path
                "target": self.requestline.split(" ")[1],
                "method": self.command,
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "body_bytes": body_bytes,
                "pid": PID,
            }
        ).encode()

    def handle_one(self) -> None:
        if self.headers.get("upgrade", "").lower() == "websocket":
            self.websocket()
            return
        if self.path == "/health":
            self.reply(b"ok", "text/plain")
            return
        faults = {
            "/sse-then-hang": self.sse_then_hang,
            "/sse-then-close": self.sse_then_close,
            "/short-body": self.short_body,
        }
        if self.path in faults:
            faults[self.path]()
            return
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        self.reply(self.report(len(body)), "application/json")

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = handle_one

    def do_HEAD(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def reply(self, body: bytes, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    # -- faults ------------------------------------------------------------------------

    def _sse_head(self) -> None:
        self.wfile.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        for n in range(2):
            event = f'data: {{"n": {n}, "pid": {PID}}}\n\n'.encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
        self.wfile.flush()

    def sse_then_hang(self) -> None:
        self._sse_head()
        time.sleep(3600)  # until the test kills this process

    def sse_then_close(self) -> None:
        self._sse_head()
        self.close_connection = True
        self.connection.shutdown(socket.SHUT_RDWR)

    def short_body(self) -> None:
        self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
        self.wfile.flush()
        self.close_connection = True
        self.connection.shutdown(socket.SHUT_RDWR)

    # -- WebSocket: handshake, one message with the report, then echo until close ------

    def websocket(self) -> None:
        key = self.headers.get("sec-websocket-key", "")
        accept = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
        self.wfile.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept.encode() + b"\r\n\r\n"
        )
        self.send_frame(0x1, self.report(0))
        self.close_connection = True
        while True:
            header = self.rfile.read(2)
            if len(header) < 2:
                return
            opcode, length = header[0] & 0x0F, header[1] & 0x7F
            if length == 126:
                length = struct.unpack("!H", self.rfile.read(2))[0]
            elif length == 127:
                length = struct.unpack("!Q", self.rfile.read(8))[0]
            mask = self.rfile.read(4) if header[1] & 0x80 else b"\0\0\0\0"
            data = bytes(b ^ mask[i % 4] for i, b in enumerate(self.rfile.read(length)))
            if opcode == 0x8:
                self.send_frame(0x8, data[:2])
                return
            if opcode in (0x1, 0x2):
                self.send_frame(opcode, data)

    def send_frame(self, opcode: int, payload: bytes) -> None:
        n = len(payload)
        if n < 126:
            head = struct.pack("!BB", 0x80 | opcode, n)
        elif n < 1 << 16:
            head = struct.pack("!BBH", 0x80 | opcode, 126, n)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 127, n)
        self.wfile.write(head + payload)
        self.wfile.flush()

    def log_message(self, *args: object) -> None:
        pass


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256


if __name__ == "__main__":
    port = int(sys.argv[sys.argv.index("--port") + 1])
    print(f"raw_echo serving on {port} (pid {PID})", flush=True)
    Server(("127.0.0.1", port), Handler).serve_forever()
