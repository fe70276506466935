"""``python -m loadtests.pool_livelock``: the warm pool's livelock scenario, for real.

Three tiny reference servers, each declaring ``--memory`` (400 MiB) in a pool of
``--budget`` (500 MiB: room for one), ``device.max_defer`` ``--max-defer`` (1 s), engine
``auto`` (CRIU). One streaming client per model, each sending its next streamed completion
as soon as the last one ended, for ``--seconds`` (120). Before the fix this served nothing:
every reservation took another's freed room or evicted a workload mid-restore.

Reports requests served and failed (by status), swaps (restores, checkpoints, boots, from
``/-/workloads``), thrash (``dormant_thrash_total``) and the wait (time to first token) p50 /
p95 / max; writes ``pool_livelock.json`` under ``--out``. Bounded: no new request after
``--seconds``, each request at most ``--request-timeout``; loopback only; the one Dormant it
starts (and with it the servers) is stopped by PID. A pure client: imports nothing from the
project.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from loadtests.admin import AdminClient
from loadtests.bench import default_weights_dir
from loadtests.launcher import DormantProcess, free_port
from loadtests.openai_stream import completion_request, make_prompt, stream_completion
from loadtests.refprocess import server_command
from loadtests.report import percentile

__all__ = ["Outcome", "main", "summarize"]

NAMES = ("a", "b", "c")


@dataclass
class Outcome:
    """One request: which workload, its HTTP status, seconds to the first token (None when
    it failed), the X-Dormant-Wake header, the error."""

    workload: str
    status: int
    ttft: float | None
    wake: str | None = None
    error: str | None = None


@dataclass
class Summary:
    seconds: float
    requests: int
    served: int
    failed: dict[str, int] = field(default_factory=dict)
    served_by_workload: dict[str, int] = field(default_factory=dict)
    wait_p50: float | None = None
    wait_p95: float | None = None
    wait_max: float | None = None
    counters: dict[str, int] = field(default_factory=dict)
    thrash: int = 0


def summarize(outcomes: list[Outcome], seconds: float) -> Summary:
    """Counts and wait percentiles (time to first token of the requests served)."""
    served = [o for o in outcomes if o.error is None and o.ttft is not None]
    waits = [o.ttft for o in served if o.ttft is not None]
    failed: dict[str, int] = {}
    for o in outcomes:
        if o.error is not None or o.ttft is None:
            key = str(o.status or "no answer")
            failed[key] = failed.get(key, 0) + 1
    return Summary(
        seconds=seconds,
        requests=len(outcomes),
        served=len(served),
        failed=failed,
        served_by_workload={n: sum(o.workload == n for o in served) for n in NAMES},
        wait_p50=percentile(waits, 0.5),
        wait_p95=percentile(waits, 0.95),
        wait_max=max(waits) if waits else None,
    )


def _workload(name: str, memory: str, weights: Path) -> dict[str, Any]:
    model = f"ref-livelock-{name}"
    return {
        "name": name,
        "models": [model],
        "memory": memory,
        "idle_after": 0,
        "start_timeout": "300s",
        # one torch thread each: the bench shares 2 cores with Dormant and its clients
        "command": [
            "{python}",
            *server_command(model, "tiny", weights, "{port}", 0),
            "--threads",
            "1",
        ],
    }


def _client(url: str, name: str, args: argparse.Namespace, deadline: float, out: list[Outcome]):
    timeout = httpx.Timeout(args.request_timeout)
    with httpx.Client(base_url=url, timeout=timeout, trust_env=False) as client:
        while time.monotonic() < deadline:
            prompt = make_prompt(48, salt=uuid.uuid4().hex[:12])
            path, body = completion_request(
                "completions", f"ref-livelock-{name}", prompt, args.max_tokens
            )
            r = stream_completion(client, path, body)
            out.append(Outcome(name, r.status, r.ttft, r.wake, r.error))
            if r.error is not None and r.status in (0, 503):
                time.sleep(0.5)  # as a client honouring Retry-After would, briefly


def _thrash(metrics: str) -> int:
    found = re.findall(r"^dormant_thrash_total\{[^}]*\} (\S+)$", metrics, re.MULTILINE)
    return int(sum(float(v) for v in found))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m loadtests.pool_livelock", description=__doc__)
    parser.add_argument("--seconds", type=float, default=120.0, help="traffic duration")
    parser.add_argument("--budget", default="500MiB", help="device.memory_budget")
    parser.add_argument("--memory", default="400MiB", help="each workload's declared memory")
    parser.add_argument("--max-defer", default="1s", help="device.max_defer")
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens per streamed answer")
    parser.add_argument("--request-timeout", type=float, default=180.0, help="seconds")
    parser.add_argument("--out", type=Path, default=Path("results"), help="results directory")
    parser.add_argument("--weights-dir", type=Path, help="reference model weights")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.max_tokens < 1 or args.request_timeout <= 0:
        parser.error("--seconds, --max-tokens and --request-timeout must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    weights = (args.weights_dir or default_weights_dir()).resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="dormant-livelock-") as tmp:
        config = {
            "listen": f"127.0.0.1:{free_port()}",
            "state_dir": str(Path(tmp) / "state"),
            "engine": "auto",
            "reap_interval": 0.5,
            "device": {"kind": "cpu", "memory_budget": args.budget, "max_defer": args.max_defer},
            "workloads": [_workload(n, args.memory, weights) for n in NAMES],
        }
        dormant = DormantProcess(Path(tmp), config)
        dormant.start()
        try:
            with AdminClient(dormant.url, timeout=600) as admin:
                engine = admin.engine().get("name")
                for name in NAMES:  # each booted once: every swap below is CRIU
                    print(f"livelock: warm-up {name}", file=sys.stderr)
                    admin.wake(name)
                before = {w["name"]: dict(w["counters"]) for w in admin.workloads()}
                outcomes: list[Outcome] = []
                deadline = time.monotonic() + args.seconds
                began = time.monotonic()
                threads = [
                    threading.Thread(
                        target=_client, args=(dormant.url, n, args, deadline, outcomes)
                    )
                    for n in NAMES
                ]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join(args.seconds + args.request_timeout + 30)
                summary = summarize(outcomes, time.monotonic() - began)
                after = {w["name"]: dict(w["counters"]) for w in admin.workloads()}
            with httpx.Client(timeout=30, trust_env=False) as client:
                summary.thrash = _thrash(client.get(f"{dormant.url}/metrics").text)
        finally:
            dormant.stop()
    for key in ("restores", "boots", "resumes", "checkpoints", "swaps_out"):
        summary.counters[key] = sum(after[n].get(key, 0) - before[n].get(key, 0) for n in NAMES)
    result = {"engine": engine, "settings": {k: str(v) for k, v in vars(args).items()}}
    result.update(asdict(summary))
    text = json.dumps(result, indent=2)
    print(text)
    (args.out / "pool_livelock.json").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
