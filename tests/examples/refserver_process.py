"""The sleep API of a reference server process (started by tests/servers/refproc.py), for the
tests on CPU and on a GPU."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from tests.servers.refproc import RefServer as Process
from tests.servers.refproc import refserver as start

__all__ = ["MODEL", "RefServer", "memory_kib", "refserver"]

MODEL = "tiny-test"


def memory_kib(pid: int) -> dict[str, int]:
    """The kB figures of /proc/PID/smaps_rollup (Rss, Pss, Pss_Anon, Anonymous, ...)."""
    out = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, _, rest = line.partition(":")
        fields = rest.split()
        if fields and fields[-1] == "kB":
            out[name] = int(fields[0])
    return out


class RefServer:
    """A running reference server and an HTTP client for its OpenAI and sleep routes."""

    def __init__(self, process: Process, timeout: float) -> None:
        self.process, self.model, self.log = process, process.model, process.log
        self.url = process.endpoint.url
        self.http = httpx.Client(base_url=self.url, timeout=timeout)

    def complete(self, prompt: str, max_tokens: int = 24, **fields: Any) -> httpx.Response:
        body = {"model": self.model, "prompt": prompt, "max_tokens": max_tokens, **fields}
        return self.http.post("/v1/completions", json=body)

    def text_and_cached(self, prompt: str, max_tokens: int = 24) -> tuple[str, int]:
        """Greedy text for `prompt` and how many prompt tokens came from the KV cache."""
        r = self.complete(prompt, max_tokens)
        assert r.status_code == 200, r.text
        body = r.json()
        return body["choices"][0]["text"], body["usage"]["prompt_tokens_details"]["cached_tokens"]

    def sleep(self, level: int = 1) -> httpx.Response:
        return self.http.post("/sleep", params={"level": level})

    def wake(self, *tags: str) -> httpx.Response:
        return self.http.post("/wake_up", params={"tags": list(tags)} if tags else None)

    def is_sleeping(self) -> bool:
        r = self.http.get("/is_sleeping")
        assert r.status_code == 200, r.text
        value = r.json()["is_sleeping"]
        assert isinstance(value, bool)
        return value

    def memory(self, verify: bool = False) -> dict[str, Any]:
        """The server's /memory report: bytes on the device and in host RAM, by tag."""
        r = self.http.get("/memory", params={"verify": "true"} if verify else None)
        assert r.status_code == 200, r.text
        report: dict[str, Any] = r.json()
        return report

    def smaps(self) -> dict[str, int]:
        return memory_kib(self.process.pid)


@contextmanager
def refserver(
    tmp: Path,
    *args: str,
    model: str = MODEL,
    start_timeout: float = 120,
    http_timeout: float = 120,
) -> Iterator[RefServer]:
    """A tiny reference server on one torch thread (ARGS added; a later --size wins), healthy."""
    with start(tmp, "--threads", "1", *args, model=model, start_timeout=start_timeout) as process:
        server = RefServer(process, http_timeout)
        try:
            yield server
        finally:
            server.http.close()
