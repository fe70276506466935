"""The warm pool on CPU: three reference models share a memory budget that fits two.

A real `dormant up` with real CRIU fronts three tiny reference servers (`ref_workload`: one
torch thread each) under ``device: {kind: cpu, memory_budget: B}``:

* ``a`` is pinned (``memory: auto``), ``b`` has ``memory: auto``, ``c`` declares its size.
* B comes from a measurement made first: one tiny reference server started on its own,
  given a few requests, then its footprint read (``M``: the PSS of its process tree, or
  its cgroup's ``memory.current`` where instances get cgroup v2 memory groups — whatever
  the pool will count). B = 2.75 M, and ``c`` declares 1.5 M: a + b (about 2 M) and a + c
  (2.5 M as the pool counts it) fit, a + b + c (about 3.5 M) never does, and with ``a``
  pinned every request for ``b`` or ``c`` while the other is resident is a swap. Each
  resident instance has more than a third of M of headroom in the budget, so the growth
  of a KV cache never pushes two of them over it.
* Traffic, after one warm-up request each: round-robin (12 requests), then Zipf-like
  (seeded, ``a`` the most popular) until the traffic has lasted a minute or 240 requests
  were sent, from three concurrent clients, every request a streamed completion. Every
  request must answer 200 with a complete stream.
* A thread samples every ~100 ms what the resident instances hold: the PSS of the process
  tree of every pid ``/-/workloads`` shows, and, independently of Dormant's view, of every
  reference server of this test found in /proc (so an instance caught mid-restore counts).
  Neither sum ever exceeds B.
* Swaps happen (``/-/workloads`` counters, ``dormant_swaps_total``); the pinned one is never
  swapped out (no checkpoint, one pid throughout); a workload swapped back in answers a
  prompt-extending request from its restored KV cache (``cached_tokens`` > 0, and
  ``X-Dormant-Wake: restore``).
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from loadtests.refprocess import pss, tree_pss
from loadtests.scenarios import ZipfPicker
from snapshots import CriuEngine, process_tree
from tests.conftest import ROOT, free_port
from tests.integration.harness import Dormant, ref_workload
from warmpool import CgroupTree
from warmpool.device import CpuDevice, memory_accounting
from warmpool.process.instance import join_cgroup

pytestmark = [pytest.mark.slow, pytest.mark.timeout(480)]

MODELS = {"a": "ref-pool-a", "b": "ref-pool-b", "c": "ref-pool-c"}
CLIENTS = 3
ROUND_ROBIN_PER_CLIENT = 4  # 12 requests, 4 per workload
ZIPF_PER_CLIENT = 80  # at most 240 requests, a the most popular...
TRAFFIC_SECONDS = 60.0  # ...sent until the traffic has lasted this long
MAX_TOKENS = 8


# -- measuring ---------------------------------------------------------------------------


def refservers(marker: str) -> list[int]:
    """Every process whose command line contains ``marker`` (this test's refserver dir): the
    servers and the ``unshare`` wrappers around them (each pid is counted once)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"examples.refserver" in cmdline and marker.encode() in cmdline:
            found.append(int(entry.name))
    return found


def measure_one(tmp: Path, weights: Path) -> int:
    """What one tiny reference server holds after a few requests, as the pool counts it on
    this machine (PSS; or, where instances get cgroup v2 memory groups, the larger of that
    and its group's memory.current). Also generates the weights the workloads then share."""
    port = free_port()
    command = ref_workload("probe", "ref-probe")["command"]
    command = [
        sys.executable if arg == "{python}" else arg.replace("{port}", str(port)) for arg in command
    ]
    command[command.index("{state_dir}/refserver")] = str(weights)
    cgroups = CgroupTree(tmp) if memory_accounting().method == "cgroup v2" else None
    group = cgroups.create("probe") if cgroups is not None else None
    log = (tmp / "probe.log").open("wb")
    proc = subprocess.Popen(
        command,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        preexec_fn=(lambda: join_cgroup(group)) if group is not None else None,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        with httpx.Client(timeout=60, trust_env=False) as client:
            while True:
                assert proc.poll() is None, (tmp / "probe.log").read_text()[-2000:]
                assert time.monotonic() < deadline, "the probe server did not start in 120s"
                try:
                    if client.get(f"{url}/health").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)
            for i in range(3):
                body = {"model": "ref-probe", "prompt": f"probe {i}: " + "tell me " * 20}
                answer = client.post(f"{url}/v1/completions", json={**body, "max_tokens": 16})
                assert answer.status_code == 200, answer.text
        measured = tree_pss(proc.pid)
        if group is not None:
            figure = CpuDevice(1).used_by([proc.pid], group).bytes
            measured = max(measured, figure or 0)
        assert measured > 0
        return measured
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()
        if cgroups is not None:
            cgroups.clean()


@dataclass
class Sampler:
    """Every ~100 ms: what the resident instances hold, two ways. ``view``: the PSS of the
    trees of the pids ``/-/workloads`` shows; ``procs``: the PSS of every reference server of
    this test found in /proc. Keeps the peaks and the pids each workload had."""

    url: str
    marker: str
    interval: float = 0.1
    samples: int = 0
    peak_view: int = 0
    peak_procs: int = 0
    peak_resident: int = 0
    at_peak: dict[str, int] = field(default_factory=dict)
    pids: dict[str, set[int]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="pss-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)

    def _run(self) -> None:
        with httpx.Client(timeout=10, trust_env=False) as client:
            while not self._stop.is_set():
                try:
                    self.sample(client)
                except Exception as exc:  # reported by the test, never silently dropped
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                self._stop.wait(self.interval)

    def sample(self, client: httpx.Client) -> None:
        views = client.get(f"{self.url}/-/workloads").json()["workloads"]
        held = {v["name"]: tree_pss(v["pid"]) for v in views if v.get("pid")}
        for v in views:
            if v.get("pid"):
                self.pids.setdefault(v["name"], set()).add(v["pid"])
        procs = sum(
            pss(pid) for pid in {p for r in refservers(self.marker) for p in process_tree(r)}
        )
        self.samples += 1
        self.peak_resident = max(self.peak_resident, len(held))
        if sum(held.values()) > self.peak_view:
            self.peak_view, self.at_peak = sum(held.values()), held
        self.peak_procs = max(self.peak_procs, procs)


# -- traffic -----------------------------------------------------------------------------


@dataclass
class Answer:
    workload: str
    status: int = 0
    tokens: int = 0
    done: bool = False
    wake: str = ""
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.done and self.tokens > 0 and not self.error


async def stream(client: httpx.AsyncClient, url: str, workload: str, prompt: str) -> Answer:
    """One streamed completion; what came back (never raises for HTTP problems)."""
    answer = Answer(workload)
    body = {"model": MODELS[workload], "prompt": prompt, "max_tokens": MAX_TOKENS, "stream": True}
    try:
        async with client.stream("POST", f"{url}/v1/completions", json=body) as response:
            answer.status = response.status_code
            answer.wake = response.headers.get("x-dormant-wake", "")
            if response.status_code != 200:
                answer.error = (await response.aread()).decode(errors="replace")[:300]
                return answer
            async for line in response.aiter_lines():
                if line == "data: [DONE]":
                    answer.done = True
                    break
                if line.startswith("data: "):
                    chunk = json.loads(line[6:])
                    if chunk["choices"] and chunk["choices"][0].get("text") is not None:
                        answer.tokens += 1
    except httpx.HTTPError as exc:
        answer.error = f"{type(exc).__name__}: {exc}"
    return answer


async def drive(
    url: str, plans: list[list[str]], tag: str, until: float = float("inf")
) -> list[Answer]:
    """One concurrent client per plan, each sending its plan's requests one after another,
    none started after ``until`` (time.monotonic())."""

    async def client_run(n: int, plan: list[str]) -> list[Answer]:
        answers = []
        async with httpx.AsyncClient(timeout=300, trust_env=False) as client:
            for i, w in enumerate(plan):
                if time.monotonic() >= until:
                    break
                prompt = f"{tag} client {n} request {i}: once upon a time"
                answers.append(await stream(client, url, w, prompt))
        return answers

    runs = await asyncio.gather(*(client_run(n, plan) for n, plan in enumerate(plans)))
    return [answer for run in runs for answer in run]


def swaps_total(metrics: str) -> dict[tuple[str, str, str, str], float]:
    """``dormant_swaps_total`` by (workload, from, to, engine)."""
    found = {}
    for line in metrics.splitlines():
        if not line.startswith("dormant_swaps_total{"):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line[: line.index("}")]))
        key = (labels["workload"], labels["from"], labels["to"], labels["engine"])
        found[key] = float(line.rsplit(" ", 1)[1])
    return found


def gauge(metrics: str, name: str) -> float:
    """The value of an unlabelled metric."""
    match = re.search(rf"^{name} (\S+)$", metrics, re.MULTILINE)
    assert match, f"{name} is not in /metrics"
    return float(match.group(1))


# -- the test ----------------------------------------------------------------------------


@pytest.fixture
def pool(tmp_path: Path, criu: CriuEngine) -> Iterator[tuple[Dormant, int, int]]:
    weights = tmp_path / "state" / "refserver"  # where the workloads' {state_dir}/refserver is
    one = measure_one(tmp_path, weights)
    budget, declared = int(2.75 * one), int(1.5 * one)
    workloads = [
        {**ref_workload("a", MODELS["a"]), "memory": "auto", "pin": True},
        {**ref_workload("b", MODELS["b"]), "memory": "auto"},
        {**ref_workload("c", MODELS["c"]), "memory": declared},
    ]
    d = Dormant(tmp_path, workloads, device={"kind": "cpu", "memory_budget": budget})
    d.start()
    try:
        yield d, budget, declared
    finally:
        d.stop()


def test_three_models_share_room_for_two(pool: tuple[Dormant, int, int]) -> None:
    d, budget, declared = pool
    sampler = Sampler(d.url, str(d.state / "refserver"))
    sampler.start()
    began = time.monotonic()
    try:
        answers = asyncio.run(traffic(d))
        kv_answer, kv_wake = asyncio.run(swap_back_with_kv_cache(d))
    finally:
        sampler.stop()
    took = time.monotonic() - began

    listing = d.admin("GET", "/workloads").json()
    views, pool_view = {v["name"]: v for v in listing["workloads"]}, listing["pool"]
    print(
        f"\n{len(answers)} streamed requests, {took:.0f}s in all; budget {budget >> 20} MiB; "
        f"peak PSS of the resident instances {sampler.peak_view >> 20} MiB "
        f"({ {k: v >> 20 for k, v in sampler.at_peak.items()} }), of every reference server "
        f"{sampler.peak_procs >> 20} MiB; {sampler.samples} samples; swaps out "
        f"{ {n: v['counters']['swaps_out'] for n, v in views.items()} }"
    )
    failed = [a for a in answers if not a.ok]
    assert not failed, f"{len(failed)} of {len(answers)} requests failed: {failed[:5]}"
    assert not sampler.errors, sampler.errors[:5]
    assert sampler.samples > 50, f"only {sampler.samples} samples in {took:.0f}s"
    # the measured footprint of the resident instances never exceeded the budget
    assert 0 < sampler.peak_view <= budget, (sampler.peak_view, sampler.at_peak, budget)
    assert 0 < sampler.peak_procs <= budget, (sampler.peak_procs, budget)
    assert sampler.peak_resident == 2, "two fit side by side; three never did"

    assert pool_view["kind"] == "cpu" and pool_view["budget_bytes"] == budget
    assert pool_view["used_bytes"] <= budget
    # the pinned workload never left: no checkpoint, one process throughout
    assert views["a"]["counters"]["checkpoints"] == 0 and views["a"]["counters"]["swaps_out"] == 0
    assert views["a"]["tier"] == "resident" and len(sampler.pids["a"]) == 1, sampler.pids
    # the others took turns: swapped out by checkpoint, back in by restore
    for name in ("b", "c"):
        counters = views[name]["counters"]
        assert counters["swaps_out"] >= 2 and counters["restores"] >= 1, (name, counters)
        assert counters["boots"] == 1, f"{name} booted again instead of restoring: {counters}"
        assert views[name]["memory"]["thrash"] == 0
    assert views["c"]["memory"]["declared_bytes"] == declared
    assert views["b"]["memory"]["measured_bytes"] > 0

    metrics = httpx.get(f"{d.url}/metrics", timeout=10).text
    swaps = swaps_total(metrics)
    for name in ("b", "c"):
        assert swaps.get((name, "resident", "hibernated", "criu"), 0) >= 2, swaps
        assert swaps.get((name, "hibernated", "resident", "criu"), 0) >= 1, swaps
    assert not any(key[0] == "a" and key[1] == "resident" for key in swaps), swaps
    assert gauge(metrics, "dormant_pool_budget_bytes") == budget
    assert 0 < gauge(metrics, "dormant_pool_used_bytes") <= budget

    # swapped back in, it answered from the KV cache its snapshot kept
    assert kv_wake.startswith("restore; "), kv_wake
    assert kv_answer > 0


async def traffic(d: Dormant) -> list[Answer]:
    """Warm-up (each boots once), round-robin, then Zipf-like traffic until the traffic has
    lasted TRAFFIC_SECONDS (at most ZIPF_PER_CLIENT requests per client)."""
    started = time.monotonic()
    answers = []
    for name in ("a", "b", "c"):  # one boot each; c's evicts b (a is pinned)
        answers += await drive(d.url, [[name]], "warm-up")
    names = ["a", "b", "c"]
    round_robin = [
        [names[(n + i) % 3] for i in range(ROUND_ROBIN_PER_CLIENT)] for n in range(CLIENTS)
    ]
    answers += await drive(d.url, round_robin, "round-robin")
    picker = ZipfPicker(names, 1.0, random.Random(10))
    zipf = [[picker.pick() for _ in range(ZIPF_PER_CLIENT)] for _ in range(CLIENTS)]
    answers += await drive(d.url, zipf, "zipf", until=started + TRAFFIC_SECONDS)
    return answers


async def swap_back_with_kv_cache(d: Dormant) -> tuple[int, str]:
    """b reads a long prompt; c's request swaps b out; b's request that extends the prompt
    swaps it back in. Returns that request's cached_tokens and X-Dormant-Wake."""
    prompt = "A long story that b will remember across its swap. " * 5
    async with httpx.AsyncClient(timeout=300, trust_env=False) as client:

        async def complete(workload: str, text: str) -> httpx.Response:
            body = {"model": MODELS[workload], "prompt": text, "max_tokens": 4}
            response = await client.post(f"{d.url}/v1/completions", json=body)
            assert response.status_code == 200, response.text
            return response

        await complete("b", prompt)
        await complete("c", "make room")
        assert d.workload("b")["state"] == "hibernated"
        extended = await complete("b", prompt + "And then?")
        cached = extended.json()["usage"]["prompt_tokens_details"]["cached_tokens"]
        return int(cached), extended.headers.get("x-dormant-wake", "")
