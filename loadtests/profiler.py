"""py-spy sampling a running process (the activator): a flamegraph, raw stacks and a top list.

py-spy is optional: :func:`find_py_spy` says whether it is there (``pip install py-spy``).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

__all__ = ["Profiler", "find_py_spy"]


def find_py_spy() -> str | None:
    """py-spy on PATH or next to this interpreter, or None."""
    here = Path(sys.executable).with_name("py-spy")
    return shutil.which("py-spy") or (str(here) if here.exists() else None)


class Profiler:
    """py-spy sampling the activator: a flamegraph SVG and raw stacks (for a top list)."""

    def __init__(self, py_spy: str, pid: int, out: Path, label: str) -> None:
        self.svg = out / f"profile_{label}.svg"
        self.raw = out / f"profile_{label}.txt"
        self.top = out / f"profile_{label}_top.txt"
        common = [py_spy, "record", "--pid", str(pid), "--rate", "200", "--nonblocking"]
        self.procs = [
            subprocess.Popen(
                [*common, "--format", fmt, "--output", str(path)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            for fmt, path in (("flamegraph", self.svg), ("raw", self.raw))
        ]

    def stop(self) -> list[str]:
        """Stop sampling (SIGINT makes py-spy write its files); notes on what was written."""
        notes = []
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
            try:
                _, err = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
            if proc.returncode not in (0, -signal.SIGINT):
                notes.append(
                    f"py-spy exited {proc.returncode}: {err.decode(errors='replace')[-300:]}"
                )
        if self.raw.exists():
            self.top.write_text(_top_from_collapsed(self.raw.read_text()))
            notes.append(f"profile: {self.svg}, {self.raw} (collapsed stacks), {self.top}")
        return notes


def _top_from_collapsed(text: str, n: int = 30) -> str:
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        samples += count
        own[frames[-1]] += count
        for frame in set(frames):
            total[frame] += count
    out = [f"{samples} samples of the activator's threads (idle excluded)", "", "self %  function"]
    out += [f"{100 * c / samples:6.1f}  {f}" for f, c in own.most_common(n)] if samples else []
    out += ["", "total %  function (inclusive)"]
    out += [f"{100 * c / samples:7.1f}  {f}" for f, c in total.most_common(n)] if samples else []
    return "\n".join(out) + "\n"
