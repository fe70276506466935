"""The core story with the real reference LLM server and real CRIU.

Two reference models behind a real `dormant up`: stream from each; hibernate one
(its process tree is gone, a verified snapshot exists); 20 concurrent streaming
requests wake it with exactly one restore; the prefix KV cache survived. The servers run
without the capabilities Dormant has as root beyond SYS_ADMIN (drop_capabilities), restored
ones too.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from snapshots import CriuEngine, SnapshotStore, process_tree
from tests.integration.harness import Dormant, pid_alive, ref_workload

pytestmark = pytest.mark.slow


#: Some of what root has and a served command does not keep (linux/capability.h bit numbers).
DROPPED = {"net_admin": 12, "sys_module": 16, "sys_ptrace": 19, "sys_time": 25}
DROPPED |= {"checkpoint_restore": 40}


def _capabilities(pid: int) -> dict[str, int]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: int(v, 16) for k, _, v in (line.partition(":\t") for line in lines) if "Cap" in k}


def _held(caps: dict[str, int]) -> list[str]:
    return [name for name, bit in DROPPED.items() if (caps["CapEff"] | caps["CapBnd"]) >> bit & 1]


@pytest.fixture
def dormant(tmp_path: Path, criu: CriuEngine) -> Iterator[Dormant]:
    d = Dormant(tmp_path, [ref_workload("a", "ref-a"), ref_workload("b", "ref-b")])
    d.start()
    yield d
    d.stop()


async def _stream(
    client: httpx.AsyncClient, url: str, model: str, prompt: str, max_tokens: int = 8
) -> tuple[list[str], dict[str, str]]:
    """Stream a completion; return the content pieces and the headers, asserting the SSE
    framing. A stream that waited for a wake with keep-alive comments (the default) has the
    wake in its ``: dormant-wake`` comment instead of the header: it is returned as the
    header's value."""
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "stream": True}
    pieces: list[str] = []
    wake = ""
    async with client.stream("POST", f"{url}/v1/completions", json=body) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        done = False
        async for line in response.aiter_lines():
            if line.startswith(": dormant-wake "):
                wake = line.removeprefix(": dormant-wake ")
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                done = True
                break
            chunk = json.loads(line[6:])
            if chunk["choices"] and chunk["choices"][0].get("text"):
                pieces.append(chunk["choices"][0]["text"])
        assert done, "stream ended without [DONE]"
        headers = dict(response.headers)
        if wake and "x-dormant-wake" not in headers:
            headers["x-dormant-wake"] = wake
        return pieces, headers


def test_hibernate_wake_one_restore_and_kv_cache_survives(dormant: Dormant) -> None:
    d = dormant
    long_prompt = "The quick brown fox jumps over the lazy dog. " * 6  # 270 bytes = tokens

    async def scenario() -> None:
        async with httpx.AsyncClient(timeout=180) as client:
            for model in ("ref-a", "ref-b"):
                pieces, _ = await _stream(client, d.url, model, "Hello")
                assert len(pieces) == 8

            first = await client.post(
                f"{d.url}/v1/completions",
                json={"model": "ref-a", "prompt": long_prompt, "max_tokens": 4},
            )
            assert first.status_code == 200
            assert first.json()["usage"]["prompt_tokens_details"]["cached_tokens"] == 0

            a_pid, b_pid = d.workload("a")["pid"], d.workload("b")["pid"]
            booted = _capabilities(a_pid)
            assert not _held(booted) and booted["CapEff"] >> 21 & 1, booted  # SYS_ADMIN kept
            tree = process_tree(a_pid)
            hibernated = (await client.post(f"{d.url}/-/workloads/a/hibernate")).json()
            assert hibernated["state"] == "hibernated", hibernated
            assert not any(pid_alive(p) for p in tree), "process tree must be gone"
            store = SnapshotStore(d.state / "snapshots")
            snapshot = store.latest("a")
            assert snapshot is not None
            store.verify(snapshot)
            assert snapshot.manifest.meta["files"], "mapped files (the weights) are recorded"

            results = await asyncio.gather(
                *(
                    _stream(client, d.url, "ref-a", f"request {i}: tell me a story", 6)
                    for i in range(20)
                )
            )
            assert all(len(pieces) == 6 for pieces, _ in results)
            assert all(h["x-dormant-wake"].startswith("restore; ") for _, h in results)
            view = d.workload("a")
            assert view["counters"]["restores"] == 1 and view["counters"]["boots"] == 1
            assert view["restored_from"] == snapshot.id
            assert _capabilities(view["pid"]) == booted  # CRIU restores the bounding set

            extended = await client.post(
                f"{d.url}/v1/completions",
                json={"model": "ref-a", "prompt": long_prompt + "And then?", "max_tokens": 4},
            )
            usage = extended.json()["usage"]
            assert usage["prompt_tokens_details"]["cached_tokens"] >= len(long_prompt), usage

            assert d.workload("b")["pid"] == b_pid and pid_alive(b_pid), "b kept serving"

    asyncio.run(scenario())
