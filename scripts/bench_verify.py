"""Verification before a restore, SHA-256 vs BLAKE3, beside a CRIU restore of the same images.

    sudo .venv/bin/python scripts/bench_verify.py [--size small] [--repeat 5] [--out FILE]

Boots the reference LLM server (`examples.refserver`, in its own PID namespace), answers
one completion, checkpoints it with CRIU into a snapshot store, then, on those images:

* verifies them N times with a BLAKE3 manifest (what commits write now) and N times with a
  SHA-256 manifest of the same files (what they wrote before), both chunked and spread over
  all cores, pages in the page cache as after a recent hibernation;
* restores them N times with CRIU (killing the restored tree each time) and times it.

It prints the medians and the share of verification in verify + restore for each digest.
Without a usable CRIU (not root, no CRIU >= 4.2) it says so and measures verification only,
on `--synthetic MB` of CRIU-like page images. Needs nothing beyond `make setup`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from snapshots import (  # noqa: E402 - after the path is set, so the script runs from anywhere
    CriuEngine,
    EngineUnavailable,
    Manifest,
    Snapshot,
    SnapshotStore,
    find_criu,
    probe_criu,
)
from snapshots.manifest import digest_files  # noqa: E402
from warmpool.process.seccomp import block_io_uring  # noqa: E402


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def _criu() -> tuple[CriuEngine | None, str]:
    if os.geteuid() != 0:
        return None, "not root"
    path = find_criu()
    if path is None:
        return None, "no criu found (make setup builds one)"
    try:
        info = probe_criu(path)
        return (CriuEngine(info), "") if info.usable else (None, info.why_not())
    except EngineUnavailable as exc:
        return None, str(exc)


def _wait_healthy(port: int, alive: Callable[[], bool], timeout: float = 300.0) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if not alive():
            raise SystemExit("the reference server exited before answering")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.02)
    raise SystemExit(f"the reference server did not answer within {timeout:.0f}s")


def _boot(size: str, port: int) -> tuple[subprocess.Popen[bytes], int]:
    """The reference server as PID 1 of its own PID namespace; returns (unshare, pid)."""
    proc = subprocess.Popen(
        [
            "unshare",
            "--pid",
            "--fork",
            "--kill-child",
            "setsid",
            sys.executable,
            "-m",
            "examples.refserver",
            "--model",
            "bench",
            "--size",
            size,
            "--threads",
            "1",
            "--port",
            str(port),
        ],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,  # a char device: nothing CRIU would find grown on restore
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=block_io_uring,  # as Dormant does: CRIU cannot dump io_uring
    )
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    deadline = time.monotonic() + 10
    while not children.read_text().split():
        if time.monotonic() > deadline:
            raise SystemExit("unshare did not start the server")
        time.sleep(0.01)
    pid = int(children.read_text().split()[0])
    _wait_healthy(port, lambda: proc.poll() is None)
    body = {"model": "bench", "prompt": "Once upon a time", "max_tokens": 8}
    httpx.post(f"http://127.0.0.1:{port}/v1/completions", json=body, timeout=120)
    return proc, pid


def _kill_tree(pid: int) -> None:
    """SIGKILL the restored PID 1 (its namespace goes with it) and reap it."""
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


def _synthetic(pending: Path, megabytes: int) -> None:
    """CRIU-like images: a few big page files and many small ones, compressible-ish."""
    images = pending / "images"
    images.mkdir()
    block = os.urandom(1 << 20)
    left = megabytes << 20
    for i in range(1, 9):
        size = left // (9 - i)
        with open(images / f"pages-{i}.img", "wb") as f:
            for _ in range(size >> 20):
                f.write(block)
        left -= size
    for i in range(60):
        (images / f"core-{i}.img").write_bytes(os.urandom(4096))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="small", help="reference model size (default small)")
    parser.add_argument("--repeat", type=int, default=5, help="runs of each measure (default 5)")
    parser.add_argument(
        "--synthetic", type=int, metavar="MB", help="skip CRIU: verify MB of made-up images"
    )
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = parser.parse_args()

    engine, why_not = (None, "--synthetic asked") if args.synthetic else _criu()
    results: dict[str, Any] = {
        "machine": f"{os.cpu_count()} CPUs, {_cpu_model()}; {platform.platform()}",
        "repeat": args.repeat,
    }
    with tempfile.TemporaryDirectory(prefix="dormant-bench-verify-") as tmp:
        store = SnapshotStore(Path(tmp) / "snapshots")
        port = _free_port()
        with store.begin("bench") as pending:
            if engine is None:
                print(f"no CRIU restore measured ({why_not}); synthetic images", file=sys.stderr)
                _synthetic(pending.path, args.synthetic or 300)
            else:
                proc, pid = _boot(args.size, port)
                seconds = engine.dump(pid, pending.path / "images", Path(tmp) / "dump", 120)
                proc.wait(10)
                results["dump_s"] = round(seconds, 3)
            started = time.perf_counter()
            snap = store.commit(pending, engine="criu")
            results["commit_blake3_s"] = round(time.perf_counter() - started, 3)
        names = list(snap.manifest.files)
        started = time.perf_counter()
        sha_files = digest_files(snap.path, names, "sha256")
        results["digest_sha256_s"] = round(time.perf_counter() - started, 3)
        sha = Snapshot(
            snap.path,
            Manifest(
                id=snap.id,
                workload=snap.workload,
                engine="criu",
                created=snap.manifest.created,
                files=sha_files,
                digest="sha256",
            ),
        )
        results["bytes"] = snap.manifest.total_bytes
        results["files"] = len(names)
        store.verify(snap)  # page cache warm for both, as after a recent hibernation
        # Interleaved, so that each measure sees the same load on a shared machine.
        runs: dict[str, list[float]] = {
            k: [] for k in ("blake3", "sha256", "blake3_cpu", "sha256_cpu", "restore", "healthy")
        }
        runs["overlap"] = []
        results["loadavg_start"] = round(os.getloadavg()[0], 1)
        for i in range(args.repeat):
            for label, target in (("blake3", snap), ("sha256", sha)):
                started, cpu = time.perf_counter(), time.process_time()
                store.verify(target)
                runs[label].append(time.perf_counter() - started)
                runs[f"{label}_cpu"].append(time.process_time() - cpu)
            if engine is not None:
                started = time.perf_counter()
                pid = engine.restore(snap.path / "images", Path(tmp) / f"r{i}", None, None, 60)
                runs["restore"].append(time.perf_counter() - started)
                runs["healthy"].append(_wait_healthy(port, Path(f"/proc/{pid}").exists))
                _kill_tree(pid)
                # The same restore with the BLAKE3 verification running beside it
                # (SnapshotStore.verify_during: what a runtime saves that way).
                again = partial(engine.restore, snap.path / "images", Path(tmp) / f"o{i}")
                started = time.perf_counter()
                pid = store.verify_during(snap, partial(again, None, None, 60), _kill_tree)
                runs["overlap"].append(time.perf_counter() - started)
                _wait_healthy(port, Path(f"/proc/{pid}").exists)
                _kill_tree(pid)
        results["loadavg_end"] = round(os.getloadavg()[0], 1)
        for label, values in runs.items():
            if values:
                results[f"{label}_s"] = round(statistics.median(values), 4)
                results[f"{label}_min_s"] = round(min(values), 4)
                results[f"{label}_runs"] = [round(v, 4) for v in values]
        if engine is not None:
            for label in ("blake3", "sha256"):
                for kind in ("", "_min"):
                    verify = float(results[f"{label}{kind}_s"])
                    restore = float(results[f"restore{kind}_s"])
                    results[f"share_{label}{kind}"] = round(verify / (verify + restore), 3)

    mb = int(results["bytes"]) / 1e6
    print(f"machine: {results['machine']}")
    print(f"snapshot: {mb:.0f} MB in {results['files']} files; median (best) of {args.repeat}")
    for label in ("sha256", "blake3"):
        verify, best = results[f"{label}_s"], results[f"{label}_min_s"]
        line = f"verify {label:7} {verify:.3f} s ({best:.3f} s)  {mb / 1e3 / best:.1f} GB/s best"
        if f"share_{label}" in results:
            share, share_min = results[f"share_{label}"], results[f"share_{label}_min"]
            line += f"  = {share:.0%} ({share_min:.0%}) of verify + restore"
        print(line)
    for label in ("sha256", "blake3"):
        cpu = results[f"{label}_cpu_s"]
        print(f"  {label} CPU time {cpu:.3f} s: {mb / 1e3 / cpu:.1f} GB/s per busy core")
    if "restore_s" in results:
        print(
            f"criu restore   {results['restore_s']:.3f} s ({results['restore_min_s']:.3f} s)"
            f"  then healthy after {results['healthy_s']:.3f} s"
        )
        print(
            f"criu restore with blake3 verify beside it {results['overlap_s']:.3f} s "
            f"({results['overlap_min_s']:.3f} s)"
        )
    print(f"load average {results['loadavg_start']} -> {results['loadavg_end']}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
