"""The proxy benchmark's results: direct vs dormant per case, the goal, a table and CSVs.

A case is one response kind at one concurrency; each target's runs in it are merged into a
:class:`CaseResult`, and a :class:`Comparison` holds both targets and the verdict against
the goal: added p50 <= 1 ms, added p99 <= 5 ms, throughput >= 80% of direct.
"""

from __future__ import annotations

import csv
import math
import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from loadtests.loadgen import Run, percentile

__all__ = [
    "GOAL_ADDED_P50_MS",
    "GOAL_ADDED_P99_MS",
    "GOAL_RPS_RATIO",
    "ROW_FIELDS",
    "SUMMARY_FIELDS",
    "CaseResult",
    "Comparison",
    "machine_line",
    "render_table",
    "write_csv",
]

GOAL_ADDED_P50_MS = 1.0
GOAL_ADDED_P99_MS = 5.0
GOAL_RPS_RATIO = 0.80
ROW_FIELDS = (
    "kind",
    "concurrency",
    "target",
    "client",
    "rounds",
    "seconds",
    "requests",
    "errors",
    "rps",
    "p50_ms",
    "p99_ms",
)
SUMMARY_FIELDS = (
    "kind",
    "concurrency",
    "client",
    "direct_p50_ms",
    "direct_p99_ms",
    "direct_rps",
    "dormant_p50_ms",
    "dormant_p99_ms",
    "dormant_rps",
    "added_p50_ms",
    "added_p99_ms",
    "rps_ratio",
    "goal",
    "profiled",
)


@dataclass
class CaseResult:
    """All runs of one target in one case (kind x concurrency), merged."""

    kind: str
    concurrency: int
    target: str
    client: str
    runs: list[Run] = field(default_factory=list)

    @property
    def requests(self) -> int:
        return sum(r.requests for r in self.runs)

    @property
    def errors(self) -> int:
        return sum(r.errors for r in self.runs)

    @property
    def seconds(self) -> float:
        return sum(r.seconds for r in self.runs)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    def _samples(self) -> list[tuple[float, float]]:
        return [s for r in self.runs for s in r.samples]

    @property
    def p50(self) -> float:
        return percentile(self._samples(), 50)

    @property
    def p99(self) -> float:
        return percentile(self._samples(), 99)

    def row(self) -> dict[str, object]:
        """This target's line of ``bench_proxy.csv`` (:data:`ROW_FIELDS`)."""
        return {
            "kind": self.kind,
            "concurrency": self.concurrency,
            "target": self.target,
            "client": self.client,
            "rounds": len(self.runs),
            "seconds": f"{self.seconds:.3f}",
            "requests": self.requests,
            "errors": self.errors,
            "rps": f"{self.rps:.1f}",
            "p50_ms": f"{self.p50:.3f}",
            "p99_ms": f"{self.p99:.3f}",
        }


@dataclass
class Comparison:
    """Direct vs dormant for one case, and the verdict against the goal."""

    direct: CaseResult
    dormant: CaseResult
    profiled: bool = False

    @property
    def added_p50(self) -> float:
        return self.dormant.p50 - self.direct.p50

    @property
    def added_p99(self) -> float:
        return self.dormant.p99 - self.direct.p99

    @property
    def ratio(self) -> float:
        return self.dormant.rps / self.direct.rps if self.direct.rps > 0 else math.nan

    def verdict(self) -> str:
        """``met``, ``not met (...)`` naming the missed goals, or ``invalid: ...`` on errors."""
        bad = [r for r in (self.direct, self.dormant) if r.errors or not r.requests]
        if bad:
            return "invalid: " + ", ".join(f"{r.target} {r.errors} errors" for r in bad)
        missed = []
        if not self.added_p50 <= GOAL_ADDED_P50_MS:
            missed.append("p50")
        if not self.added_p99 <= GOAL_ADDED_P99_MS:
            missed.append("p99")
        if not self.ratio >= GOAL_RPS_RATIO:
            missed.append("req/s")
        return "met" if not missed else "not met (" + ", ".join(missed) + ")"

    def row(self) -> dict[str, object]:
        """This case's line of ``bench_proxy_summary.csv`` (:data:`SUMMARY_FIELDS`)."""
        return {
            "kind": self.direct.kind,
            "concurrency": self.direct.concurrency,
            "client": self.direct.client,
            "direct_p50_ms": f"{self.direct.p50:.3f}",
            "direct_p99_ms": f"{self.direct.p99:.3f}",
            "direct_rps": f"{self.direct.rps:.1f}",
            "dormant_p50_ms": f"{self.dormant.p50:.3f}",
            "dormant_p99_ms": f"{self.dormant.p99:.3f}",
            "dormant_rps": f"{self.dormant.rps:.1f}",
            "added_p50_ms": f"{self.added_p50:.3f}",
            "added_p99_ms": f"{self.added_p99:.3f}",
            "rps_ratio": f"{self.ratio:.3f}",
            "goal": self.verdict(),
            "profiled": int(self.profiled),
        }


def _fmt(value: float, digits: int = 2) -> str:
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"


def render_table(comparisons: Sequence[Comparison]) -> str:
    """The comparison table, one line per case."""
    head = [
        "kind",
        "c",
        "direct p50",
        "p99",
        "req/s",
        "dormant p50",
        "p99",
        "req/s",
        "+p50 ms",
        "+p99 ms",
        "ratio",
        "goal",
    ]
    rows = [head]
    for c in comparisons:
        d, p = c.direct, c.dormant
        rows.append(
            [
                d.kind,
                str(d.concurrency),
                _fmt(d.p50),
                _fmt(d.p99),
                f"{d.rps:.0f}",
                _fmt(p.p50),
                _fmt(p.p99),
                f"{p.rps:.0f}",
                f"{c.added_p50:+.2f}",
                f"{c.added_p99:+.2f}",
                f"{100 * c.ratio:.0f}%",
                c.verdict() + (" [profiled]" if c.profiled else ""),
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = []
    for n, r in enumerate(rows):
        cells = [
            cell.ljust(w) if i in (0, len(head) - 1) else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(r, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("-" * len(lines[0]))
    return "\n".join(lines)


def write_csv(path: Path, fields: Sequence[str], rows: Sequence[dict[str, object]]) -> None:
    """Rows as CSV with a header."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(fields))
        writer.writeheader()
        writer.writerows(rows)


def machine_line() -> str:
    """Cores and load: client, proxy and upstream all run on this machine."""
    load = os.getloadavg()
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (
        f"machine: nproc {cpus}, loadavg at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, "
        f"Python {platform.python_version()}, {platform.machine()}; client, proxy and upstream "
        "share these cores"
    )
