"""A TCP forwarder in front of the suite's API server that a test can take down and bring back:
an API-server outage for one client (the activator under test) without touching the shared
control plane. Down, its port refuses connections and the connections it carried are reset,
as when the API server's process is gone; TLS passes through untouched (the server's
certificate names the address, not the port)."""

from __future__ import annotations

import contextlib
import socket
import threading

__all__ = ["ApiProxy"]


class ApiProxy:
    def __init__(self, host: str, upstream: tuple[str, int]) -> None:
        self.host, self.upstream = host, upstream
        self._listener: socket.socket | None = None
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._stopping = threading.Event()
        probe = socket.socket()
        probe.bind((host, 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self.up()
        self._thread = threading.Thread(target=self._accept, name="api-proxy", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    def up(self) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        sock.listen(64)
        sock.settimeout(0.2)
        with self._lock:
            self._listener = sock

    def down(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            conns, self._conns = self._conns, set()
        if listener is not None:
            listener.close()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
                conn.close()

    def close(self) -> None:
        self._stopping.set()
        self.down()
        self._thread.join(5)

    def _accept(self) -> None:
        while not self._stopping.is_set():
            with self._lock:
                listener = self._listener
            if listener is None:
                self._stopping.wait(0.05)
                continue
            try:
                client, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            client.settimeout(None)
            with self._lock:
                if self._listener is None:  # went down meanwhile
                    client.close()
                    server.close()
                    continue
                self._conns |= {client, server}
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while chunk := src.recv(65536):
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
