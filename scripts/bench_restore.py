"""Restore bandwidth: where the time of a CRIU restore of N GB of anonymous memory goes.

    sudo .venv/bin/python scripts/bench_restore.py [--mib 1536] [--repeat 3] [--out FILE]

Starts a process (PID 1 of its own PID namespace, as Dormant runs instances) holding
``--mib`` MiB of private anonymous memory written with a non-zero pattern, checkpoints it
with Dormant's CRIU engine into a snapshot store (BLAKE3 digests, pages in the page cache
as after a recent hibernation), then ``--repeat`` times, all in the same run:

* first touch: fresh anonymous memory of the same size written once (memset): the
  machine's page-fault bandwidth, the floor the issue compares against;
* preadv of the page image into fresh memory (what CRIU's restorer does), and the same
  after ``MADV_POPULATE_WRITE`` (faults taken in one call before the copy);
* verification alone (``SnapshotStore.verify``);
* ``criu restore`` alone, with CRIU's own log timing of its one big ``preadv`` (the pages)
  and of everything else (its fixed cost);
* the wake path Dormant uses: restore ``--leave-stopped`` with verification beside it
  (``SnapshotStore.verify_during``), then SIGCONT.

Prints the medians as a table (GB/s = image bytes / seconds). Bounded: every CRIU call
has a timeout and every process it starts is ended by pid.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import mmap
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from snapshots import (  # noqa: E402 - after the path is set, so the script runs from anywhere
    CriuEngine,
    EngineUnavailable,
    SnapshotStore,
    find_criu,
    probe_criu,
)

TIMEOUT = 300.0
MADV_POPULATE_WRITE = 23

HOLDER = r"""
import mmap, os, signal, sys
size = int(sys.argv[1]) << 20
m = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
chunk = bytes(range(1, 256)) * 4113  # non-zero: CRIU dumps every page
chunk = chunk[: 1 << 20]
for off in range(0, size, 1 << 20):
    m[off : off + (1 << 20)] = chunk
with open(sys.argv[2], "w") as f:
    f.write("ready")
while True:
    signal.pause()
"""

_STAMP = re.compile(r"^\((\d+\.\d+)\)")


def _fresh(size: int) -> mmap.mmap:
    return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)


def first_touch(size: int) -> float:
    """Seconds to write every byte of fresh anonymous memory once."""
    m = _fresh(size)
    address = ctypes.addressof(ctypes.c_char.from_buffer(m))
    started = time.monotonic()
    ctypes.memset(address, 1, size)
    seconds = time.monotonic() - started
    del address
    m.close()
    return seconds


def read_into_fresh(path: Path, populate: bool) -> float:
    """Seconds to preadv ``path`` into fresh anonymous memory (after MADV_POPULATE_WRITE)."""
    size = path.stat().st_size
    m = _fresh(size)
    fd = os.open(path, os.O_RDONLY)
    try:
        started = time.monotonic()
        if populate:
            m.madvise(MADV_POPULATE_WRITE)
        view, done = memoryview(m), 0
        while done < size:
            done += os.preadv(fd, [view[done : done + (1 << 30)]], done)
        seconds = time.monotonic() - started
        view.release()
    finally:
        os.close(fd)
        m.close()
    return seconds


def criu_phases(log: Path) -> tuple[float, float]:
    """(seconds of the restorer's preadv of the pages, seconds of the whole log) from a
    -v4 restore log."""
    preadv = 0.0
    start = last = None
    opened: float | None = None
    for line in log.read_text(errors="replace").splitlines():
        match = _STAMP.match(line)
        if not match:
            continue
        stamp = float(match.group(1))
        start = stamp if start is None else start
        last = stamp
        if "Preadv " in line:
            opened = stamp
        elif "`- returned" in line and opened is not None:
            preadv += stamp - opened
            opened = None
    return preadv, (last or 0.0) - (start or 0.0)


def _end(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def _timed(fn: Callable[[], object]) -> float:
    started = time.monotonic()
    fn()
    return time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=1536, help="MiB of memory the process holds")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = parser.parse_args()
    path = find_criu()
    try:
        info = probe_criu(path) if path else None
    except EngineUnavailable as exc:
        print(f"bench_restore: {exc}", file=sys.stderr)
        return 2
    if info is None or not info.usable or os.geteuid() != 0:
        why = info.why_not() if info else "no criu found"
        print(f"bench_restore: needs root and a usable CRIU: {why}", file=sys.stderr)
        return 2
    engine = CriuEngine(info)
    with tempfile.TemporaryDirectory(prefix="dormant-bench-restore-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        ready = work / "ready"
        holder_argv = [sys.executable, "-c", HOLDER, str(args.mib), str(ready)]
        wrapper = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--kill-child", "setsid", *holder_argv],
            cwd=work,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + TIMEOUT
            while not ready.exists():
                if time.monotonic() > deadline or wrapper.poll() is not None:
                    raise SystemExit("bench_restore: the holder did not start")
                time.sleep(0.05)
            children = Path(f"/proc/{wrapper.pid}/task/{wrapper.pid}/children")
            holder = int(children.read_text().split()[0])
            store = SnapshotStore(work / "snapshots")
            with store.begin("bench") as pending:
                dump_s = engine.dump(holder, pending.path / "images", work / "dump", TIMEOUT)
                snapshot = store.commit(pending, engine="criu", engine_version=engine.version)
        finally:
            with contextlib.suppress(ProcessLookupError):
                wrapper.kill()
            wrapper.wait(30)
        images = snapshot.path / "images"
        pages = max(images.glob("pages-*.img"), key=lambda p: p.stat().st_size)
        size = sum(p.stat().st_size for p in images.iterdir())
        rows: dict[str, list[float]] = {}

        def note(name: str, seconds: float) -> None:
            rows.setdefault(name, []).append(seconds)

        for i in range(args.repeat):
            note("first touch of fresh memory (memset)", first_touch(size))
            note("preadv of the page image into fresh memory", read_into_fresh(pages, False))
            note("the same after MADV_POPULATE_WRITE", read_into_fresh(pages, True))
            note("verification alone (BLAKE3, both cores)", _timed(lambda: store.verify(snapshot)))
            rwork = work / f"restore-{i}"
            started = time.monotonic()
            pid = engine.restore(images, rwork, None, None, TIMEOUT, options=("-v4",))
            note("criu restore alone", time.monotonic() - started)
            _end(pid)
            preadv, logged = criu_phases(rwork / "restore.log")
            note("  of which: the restorer's preadv of the pages", preadv)
            note("  of which: everything else (CRIU's fixed cost)", logged - preadv)

            def stopped_restore(n: int = i) -> int:
                return engine.restore(
                    images, work / f"wake-{n}", None, None, TIMEOUT, options=("--leave-stopped",)
                )

            started = time.monotonic()
            pid = store.verify_during(snapshot, stopped_restore, _end)
            os.kill(pid, signal.SIGCONT)
            note(
                "Dormant's wake path: restore stopped + verify beside, SIGCONT",
                time.monotonic() - started,
            )
            _end(pid)

    print(
        f"snapshot: {size / 1e9:.2f} GB of images ({args.mib} MiB held), dump {dump_s:.2f}s, "
        f"medians of {args.repeat}; machine: {os.cpu_count()} CPUs, {_cpu()}, "
        f"{platform.platform()}, load {os.getloadavg()[0]:.1f}"
    )
    width = max(map(len, rows))
    print(f"{'step':<{width}}  seconds    GB/s")
    medians = {name: statistics.median(values) for name, values in rows.items()}
    for name, seconds in medians.items():
        print(f"{name:<{width}}  {seconds:7.3f}  {size / 1e9 / seconds:6.2f}")
    touch = medians["first touch of fresh memory (memset)"]
    wake = medians["Dormant's wake path: restore stopped + verify beside, SIGCONT"]
    print(f"wake path bandwidth / first-touch bandwidth: {touch / wake:.0%}")
    if args.out:
        args.out.write_text(json.dumps({"bytes": size, "seconds": rows}, indent=1))
    return 0


def _cpu() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


if __name__ == "__main__":
    raise SystemExit(main())
