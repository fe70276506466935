"""The warm-pool bench's three parts, each against real processes: ``hooks`` (sleep level 1
/ wake_up on a reference server started directly), ``criu`` (hibernate / wake through a
Dormant's admin API) and the Zipf ``churn`` against a Dormant whose three workloads share
room for two. ``loadtests.pool_bench`` is the command line that runs them."""

from __future__ import annotations

import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from random import Random
from typing import TYPE_CHECKING, Any

import httpx

from loadtests.admin import AdminClient
from loadtests.bench import BenchError
from loadtests.launcher import DormantProcess, free_port
from loadtests.openai_stream import completion_request, make_prompt, stream_completion
from loadtests.pool_report import ChurnResult, SwapRow, format_bytes
from loadtests.refprocess import reference_server, server_command, tree_pss
from loadtests.scenarios import ZipfPicker

if TYPE_CHECKING:
    from collections.abc import Callable

    from loadtests.pool_plan import Plan

__all__ = ["WORKLOADS", "PoolBench", "swap_seconds", "zipf_plans"]

WORKLOADS = ("a", "b", "c")
"""The churn's workloads, the first the most popular."""


def zipf_plans(users: int, requests: int, s: float, seed: int) -> list[list[str]]:
    """Which workload each user asks for, request by request: ``requests`` Zipf draws over
    WORKLOADS from a seeded generator, dealt round the users (the same for every engine)."""
    picker = ZipfPicker(list(WORKLOADS), s, Random(seed))
    draws = [picker.pick() for _ in range(requests)]
    return [draws[u::users] for u in range(users)]


def _post(client: httpx.Client, url: str, what: str, **kw: Any) -> httpx.Response:
    response = client.post(url, **kw)
    if response.status_code != 200:
        raise BenchError(f"{what}: HTTP {response.status_code}: {response.text[:300]}")
    return response


class PoolBench:
    """Runs the plan's parts; every server and Dormant it starts is stopped before it returns."""

    def __init__(self, plan: Plan, weights: Path, say: Callable[[str], None]) -> None:
        self.plan, self.weights, self.say = plan, weights, say

    def _model(self, name: str) -> str:
        return f"ref-{self.plan.size}-{name}"

    def _greedy(self, client: httpx.Client, url: str, model: str, prompt: str) -> str:
        body = {"model": model, "prompt": prompt, "max_tokens": 16, "temperature": 0}
        data = _post(client, f"{url}/v1/completions", f"{model} completion", json=body).json()
        return str(data["choices"][0]["text"])

    # -- 1. hooks: sleep level 1 / wake_up on a server started directly ----------------------

    def probe(self, workdir: Path) -> int:
        """M: the PSS of one server (nothing held) after a few requests."""
        model = self._model("probe")
        self.say(f"probe: {model}: starting it directly")
        with (
            reference_server(workdir, model, self.plan.size, self.weights, 0) as (url, pid),
            httpx.Client(timeout=600, trust_env=False) as client,
        ):
            for i in range(3):
                self._greedy(client, url, model, f"{i} probe: " + "tell me more. " * 8)
            probe = tree_pss(pid)
        self.say(f"probe: one server holds {format_bytes(probe)} (PSS)")
        return probe

    def hooks(self, workdir: Path) -> tuple[list[SwapRow], int]:
        """One row per hold size; and M, the PSS of the server holding nothing extra after a
        few requests (0 when no hold size is 0)."""
        rows, probe = [], 0
        for hold in self.plan.holds:
            model = self._model(f"hooks-{hold >> 20}m")
            self.say(f"hooks: {model} (held {format_bytes(hold)}): starting it directly")
            with (
                reference_server(workdir, model, self.plan.size, self.weights, hold) as (url, pid),
                httpx.Client(timeout=600, trust_env=False) as client,
            ):
                prompt = "The pool keeps the cache: " + "tell me more. " * 8
                before = [self._greedy(client, url, model, f"{i} {prompt}") for i in range(3)]
                if hold == 0 and not probe:
                    probe = tree_pss(pid)
                    self.say(f"hooks: one server holds {format_bytes(probe)} (PSS, the probe)")
                row = SwapRow("hooks", self._what(hold), None)
                for _ in range(self.plan.swap_samples):
                    began = time.perf_counter()
                    _post(client, f"{url}/sleep", "sleep", params={"level": 1})
                    row.out_s.append(time.perf_counter() - began)
                    parked = client.get(f"{url}/memory").json()["host_bytes"]
                    row.bytes_moved = sum(int(v) for v in parked.values())
                    began = time.perf_counter()
                    _post(client, f"{url}/wake_up", "wake_up")
                    row.in_s.append(time.perf_counter() - began)
                after = [self._greedy(client, url, model, f"{i} {prompt}") for i in range(3)]
                row.note = "sleep level 1; on CPU it frees nothing; greedy outputs " + (
                    "identical before and after" if after == before else "DIFFER after a wake"
                )
                self.say(f"hooks: {row.what}: out {row.out_s}, in {row.in_s}")
                rows.append(row)
        return rows, probe

    def _what(self, hold: int) -> str:
        return f"refserver {self.plan.size}" + (f" + {format_bytes(hold)} held" if hold else "")

    # -- 2. criu: hibernate / wake through the admin API -------------------------------------

    def _workload(self, name: str, hold: int = 0, memory: int | None = None) -> dict[str, Any]:
        model = self._model(name)
        entry: dict[str, Any] = {
            "name": name,
            "models": [model],
            "command": [
                "{python}",
                *server_command(model, self.plan.size, self.weights, "{port}", hold),
            ],
            "health_path": "/health",
            "idle_after": 0,
            "start_timeout": "600s",
            "wake_timeout": "600s",
        }
        if memory is not None:
            entry["memory"] = memory
        return entry

    def _dormant(
        self, workdir: Path, engine: str, workloads: list[dict[str, Any]], **extra: Any
    ) -> DormantProcess:
        config = {
            "listen": f"127.0.0.1:{free_port()}",
            "state_dir": str(workdir / "state"),
            "engine": engine,
            "reap_interval": 0.2,
            "workloads": workloads,
            **extra,
        }
        return DormantProcess(workdir, config)

    def criu(self, workdir: Path) -> list[SwapRow]:
        names = {f"hold{i}": hold for i, hold in enumerate(self.plan.holds)}
        dormant = self._dormant(workdir, "auto", [self._workload(n, h) for n, h in names.items()])
        dormant.start()
        try:
            with AdminClient(dormant.url, timeout=900) as admin:
                engine = admin.engine()
                if engine.get("name") != "criu":
                    why = f"engine auto chose {engine.get('name')}: {engine.get('reason')}"
                    self.say(f"criu: not measured ({why})")
                    return [SwapRow("criu", "-", None, note=f"not measured: {why}")]
                rows = []
                for name, hold in names.items():
                    rows.append(self._criu_cycles(admin, name, hold))
                    admin.hibernate(name)  # give its memory back before the next one
                return rows
        finally:
            dormant.stop()

    def _criu_cycles(self, admin: AdminClient, name: str, hold: int) -> SwapRow:
        self.say(f"criu: {name} (held {format_bytes(hold)}): boot, then hibernate/wake cycles")
        admin.wake(name)
        row = SwapRow("criu", self._what(hold), None)
        for _ in range(self.plan.swap_samples):
            view = admin.hibernate(name)
            checkpoint = view.get("last_checkpoint") or {}
            if view.get("state") != "hibernated" or not checkpoint:
                raise BenchError(f"criu: {name} did not hibernate: {view.get('last_error')}")
            row.out_s.append(float(checkpoint["seconds"]))
            row.bytes_moved = int(checkpoint["bytes"])
            view = admin.wake(name)
            wake = view.get("last_wake") or {}
            if wake.get("path") != "restore":
                row.note = (
                    f"a wake was a {wake.get('path')} ({view.get('last_error')}); not counted"
                )
                continue
            row.in_s.append(float(wake["seconds"]))
        row.note = row.note or "checkpoint = criu dump + commit; restore = verify + criu restore"
        self.say(
            f"criu: {row.what}: {format_bytes(row.bytes_moved)}; out {row.out_s}, in {row.in_s}"
        )
        return row

    # -- 3. the churn --------------------------------------------------------------------------

    def churn(self, workdir: Path, engine: str, budget: int, declared: int) -> ChurnResult:
        workloads = [self._workload(n, memory=declared) for n in WORKLOADS]
        device = {"kind": "cpu", "memory_budget": budget}
        dormant = self._dormant(workdir, engine, workloads, device=device)
        dormant.start()
        try:
            with AdminClient(dormant.url, timeout=900) as admin:
                used = str(admin.engine().get("name", engine))
                result = ChurnResult(used, self.plan.requests)
                if engine != "restart" and used != "criu":
                    result.note = f"engine auto chose {used}: {admin.engine().get('reason')}"
                for name in reversed(WORKLOADS):  # warm-up, not measured: a and b stay resident
                    self.say(f"churn {used}: warm-up: {name}")
                    admin.wake(name)
                before = self._counters(admin, dormant.url)
                self._drive(dormant.url, result)
                after = self._counters(admin, dormant.url)
            result.swaps = after[0] - before[0]
            result.swap_seconds = {
                key: (
                    count - before[1].get(key, (0, 0.0))[0],
                    total - before[1].get(key, (0, 0.0))[1],
                )
                for key, (count, total) in after[1].items()
            }
            self.say(
                f"churn {used}: {result.ok}/{result.planned} ok in {result.seconds:.1f}s, "
                f"{result.swaps} swaps"
            )
            return result
        finally:
            dormant.stop()

    @staticmethod
    def _counters(
        admin: AdminClient, url: str
    ) -> tuple[int, dict[tuple[str, str], tuple[int, float]]]:
        swaps = sum(int(w["counters"].get("swaps_out", 0)) for w in admin.workloads())
        with httpx.Client(timeout=30, trust_env=False) as client:
            text = client.get(f"{url}/metrics").text
        return swaps, swap_seconds(text)

    def _drive(self, url: str, result: ChurnResult) -> None:
        plans = zipf_plans(self.plan.users, self.plan.requests, self.plan.zipf_s, self.plan.seed)
        deadline = time.monotonic() + self.plan.max_seconds

        def user(plan: list[str]) -> list[tuple[bool, float | None, str | None, str | None]]:
            done = []
            with httpx.Client(base_url=url, timeout=600, trust_env=False) as client:
                for name in plan:
                    if time.monotonic() > deadline:
                        break
                    prompt = make_prompt(self.plan.prompt_length, salt=uuid.uuid4().hex[:12])
                    path, body = completion_request(
                        "completions", self._model(name), prompt, self.plan.max_tokens
                    )
                    r = stream_completion(client, path, body)
                    done.append((r.ok, r.ttft, r.wake, r.error))
            return done

        began = time.monotonic()
        with ThreadPoolExecutor(self.plan.users) as pool:
            answers = [a for run in pool.map(user, plans) for a in run]
        result.seconds = time.monotonic() - began
        for ok, ttft, wake, error in answers:
            if ok and ttft is not None:
                result.ttfts.append(ttft)
                if wake:
                    result.waited.append(ttft)
            else:
                result.failures.append(error or "no first token")
        if len(answers) < result.planned:
            result.note = (
                f"cut short at --max-seconds {self.plan.max_seconds:g}: "
                f"{len(answers)} of {result.planned} requests sent"
            )


def swap_seconds(metrics: str) -> dict[tuple[str, str], tuple[int, float]]:
    """``dormant_swap_seconds`` count and sum by (engine, direction), from /metrics text."""
    found: dict[tuple[str, str], list[float]] = {}
    pattern = re.compile(r"^dormant_swap_seconds_(count|sum)\{([^}]*)\} (\S+)$", re.MULTILINE)
    for kind, labels, value in pattern.findall(metrics):
        named = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        slot = found.setdefault((named["engine"], named["direction"]), [0.0, 0.0])
        slot[0 if kind == "count" else 1] = float(value)
    return {key: (int(count), total) for key, (count, total) in found.items()}
