"""The bench report: TTFT warm / after wake / after cold boot side by side, as a table, CSV,
JSON (``loadtests/report.schema.json``, kind ``bench``) and a PNG bar chart.

Beside TTFT each row has time per output token (TPOT, one sample per request), inter-token
latency (ITL, one sample per gap), output tokens/s and its failed requests. Every percentile
is printed with its n, and only where n supports it (``loadtests.stats``): ``n/a (n=5)``.
"""

from __future__ import annotations

import csv
import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadtests.stats import SCHEMA_VERSION, Stat, describe, percentile

__all__ = [
    "Machine",
    "Row",
    "percentile",
    "ratios",
    "render_table",
    "to_json",
    "write_chart",
    "write_csv",
    "write_samples_csv",
]


@dataclass
class Row:
    """One measured scenario: its samples, its failures and what Dormant said about the wake.

    ``tokens`` and ``e2es`` have one entry per successful request; ``duration_s`` is the
    wall time the requests were sent over (a Locust run), else the sum of their E2E times.
    """

    scenario: str
    engine: str
    method: str
    ttfts: list[float] = field(default_factory=list)
    snapshot_bytes: int | None = None
    server_wake: list[float] = field(default_factory=list)
    note: str = ""
    tpots: list[float] = field(default_factory=list)
    itls: list[float] = field(default_factory=list)
    e2es: list[float] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    duration_s: float | None = None

    @property
    def ttft(self) -> Stat:
        return describe(self.ttfts)

    @property
    def p50(self) -> float | None:
        """TTFT p50, None where the sample cannot support it."""
        return self.ttft.get("p50")

    @property
    def p95(self) -> float | None:
        """TTFT p95, None where the sample cannot support it (fewer than 20 samples)."""
        return self.ttft.get("p95")

    @property
    def output_tokens_per_s(self) -> float | None:
        seconds = self.duration_s if self.duration_s else sum(self.e2es)
        return sum(self.tokens) / seconds if seconds > 0 and self.tokens else None

    @property
    def requests(self) -> int:
        return len(self.e2es) + len(self.failures)

    @property
    def server_wake_p50(self) -> float | None:
        return percentile(self.server_wake, 0.50)


@dataclass(frozen=True)
class Machine:
    """What the numbers were measured on."""

    cpus: int
    usable_cpus: int
    cpu_model: str
    platform: str
    model_size: str

    @classmethod
    def here(cls, model_size: str) -> Machine:
        model = "unknown CPU"
        cpuinfo = Path("/proc/cpuinfo")
        if cpuinfo.exists():
            for line in cpuinfo.read_text(errors="replace").splitlines():
                if line.startswith("model name"):
                    model = line.partition(":")[2].strip()
                    break
        usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 0
        return cls(os.cpu_count() or 0, usable, model, platform.platform(), model_size)

    def describe(self) -> str:
        return (
            f"machine: {self.cpus} CPUs ({self.usable_cpus} usable), {self.cpu_model};"
            f" {self.platform}; reference model size: {self.model_size}"
        )


def _seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f} s"


def _bytes(value: int | None) -> str:
    if value is None:
        return "-"
    size = float(value)
    for unit in ("B", "KB", "MB"):
        if size < 1000:
            return f"{size:.0f} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"


def _find(rows: Sequence[Row], scenario: str) -> Row | None:
    return next((r for r in rows if r.scenario == scenario and r.ttfts), None)


def ratios(rows: Sequence[Row]) -> dict[str, float | None]:
    """TTFT p50 ratios: cold boot / wake (restore), and wake (restore) / warm."""
    warm, wake, cold = (_find(rows, s) for s in ("warm", "wake (restore)", "cold boot"))

    def ratio(a: Row | None, b: Row | None) -> float | None:
        if a is None or b is None or not a.p50 or not b.p50:
            return None
        return a.p50 / b.p50

    return {"cold/wake": ratio(cold, wake), "wake/warm": ratio(wake, warm)}


_COLUMNS = (
    "scenario",
    "engine",
    "method",
    "ok/failed",
    "TTFT p50",
    "TTFT p95",
    "TPOT p50",
    "ITL p95",
    "out tok/s",
    "snapshot",
    "restore/boot (server)",
)


def _tokens_per_s(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def render_table(rows: Sequence[Row], machine: Machine) -> str:
    """The side-by-side table, the ratios and the machine, as printable text. Each
    percentile carries its n; one the sample cannot support reads ``n/a (n=5)``."""
    cells = [
        [
            r.scenario,
            r.engine,
            r.method,
            f"{len(r.e2es) or len(r.ttfts)}/{len(r.failures)}",
            r.ttft.show("p50"),
            r.ttft.show("p95"),
            describe(r.tpots).show("p50"),
            describe(r.itls).show("p95"),
            _tokens_per_s(r.output_tokens_per_s),
            _bytes(r.snapshot_bytes),
            _seconds(r.server_wake_p50) if r.server_wake else "-",
        ]
        for r in rows
    ]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(_COLUMNS)]
    right = set(range(3, len(_COLUMNS)))

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(w) if i in right else v.ljust(w)
            for i, (v, w) in enumerate(zip(values, widths, strict=True))
        ).rstrip()

    out = [line(_COLUMNS), line(["-" * w for w in widths]), *(line(c) for c in cells)]
    notes = [f"  {r.scenario}: {r.note}" for r in rows if r.note]
    notes += [
        f"  {r.scenario}: {len(r.failures)} failed: {'; '.join(r.failures[:3])}"
        for r in rows
        if r.failures
    ]
    if notes:
        out += ["notes:", *notes]
    shown = ", ".join(
        f"{name} = {'n/a' if value is None else f'{value:.1f}x'}"
        for name, value in ratios(rows).items()
    )
    out += [
        f"TTFT p50 ratios: {shown}",
        "p95 needs n >= 20 (p99: 100): n/a (n=5) marks a percentile the sample cannot support",
        machine.describe(),
    ]
    return "\n".join(out)


def _row_json(r: Row) -> dict[str, Any]:
    tps = r.output_tokens_per_s
    return {
        "scenario": r.scenario,
        "engine": r.engine,
        "method": r.method,
        "requests": r.requests,
        "failed": len(r.failures),
        "failures": r.failures,
        "ttft_s": r.ttft.as_dict(),
        "tpot_s": describe(r.tpots).as_dict(),
        "itl_s": describe(r.itls).as_dict(),
        "e2e_s": describe(r.e2es).as_dict(),
        "output_tokens": sum(r.tokens),
        "output_tokens_per_s": None if tps is None else round(tps, 3),
        "snapshot_bytes": r.snapshot_bytes,
        "server_wake_s": describe(r.server_wake).as_dict(),
        "note": r.note,
    }


def to_json(rows: Sequence[Row], machine: Machine) -> dict[str, Any]:
    """The report as one JSON object (``loadtests/report.schema.json``, kind ``bench``)."""
    return {
        "kind": "bench",
        "schema_version": SCHEMA_VERSION,
        "machine": {
            "cpus": machine.cpus,
            "usable_cpus": machine.usable_cpus,
            "cpu_model": machine.cpu_model,
            "platform": machine.platform,
            "model_size": machine.model_size,
        },
        "rows": [_row_json(r) for r in rows],
        "ttft_p50_ratios": ratios(rows),
    }


def _num(value: float | None, digits: int = 6) -> str:
    """A CSV cell: empty where there is no value (or the sample cannot support it)."""
    return "" if value is None else f"{value:.{digits}f}"


def write_csv(rows: Sequence[Row], machine: Machine, path: Path) -> None:
    """One line per row, with the machine repeated so the file stands alone; a percentile
    the row's sample cannot support is an empty cell (its n is in the row)."""
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(
            [
                "scenario",
                "engine",
                "method",
                "samples",
                "failed",
                "ttft_p50_s",
                "ttft_p95_s",
                "ttft_p99_s",
                "tpot_n",
                "tpot_p50_s",
                "tpot_p95_s",
                "itl_n",
                "itl_p50_s",
                "itl_p95_s",
                "itl_p99_s",
                "output_tokens",
                "output_tokens_per_s",
                "snapshot_bytes",
                "server_wake_p50_s",
                "note",
                "model_size",
                "cpus",
                "cpu_model",
            ]
        )
        for r in rows:
            tpot, itl, tps = describe(r.tpots), describe(r.itls), r.output_tokens_per_s
            out.writerow(
                [
                    r.scenario,
                    r.engine,
                    r.method,
                    len(r.ttfts),
                    len(r.failures),
                    _num(r.ttft.get("p50")),
                    _num(r.ttft.get("p95")),
                    _num(r.ttft.get("p99")),
                    tpot.n,
                    _num(tpot.get("p50")),
                    _num(tpot.get("p95")),
                    itl.n,
                    _num(itl.get("p50")),
                    _num(itl.get("p95")),
                    _num(itl.get("p99")),
                    sum(r.tokens),
                    _num(tps, 3),
                    "" if r.snapshot_bytes is None else r.snapshot_bytes,
                    "" if r.server_wake_p50 is None else f"{r.server_wake_p50:.6f}",
                    r.note,
                    machine.model_size,
                    machine.cpus,
                    machine.cpu_model,
                ]
            )


def write_samples_csv(rows: Sequence[Row], path: Path) -> None:
    """Every TTFT sample behind the table."""
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["scenario", "engine", "sample", "ttft_s"])
        for r in rows:
            for i, ttft in enumerate(r.ttfts, 1):
                out.writerow([r.scenario, r.engine, i, f"{ttft:.6f}"])


def write_chart(rows: Sequence[Row], machine: Machine, path: Path) -> None:
    """Grouped bars of TTFT p50 and p95 per scenario, log scale, values printed on the bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [r for r in rows if r.ttfts]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    width = 0.38
    xs = range(len(shown))
    for offset, label, values in (
        (-width / 2, "p50", [r.p50 for r in shown]),
        (width / 2, "p95", [r.p95 for r in shown]),
    ):
        # a percentile the sample cannot support gets no bar, and says so
        bars = ax.bar(
            [x + offset for x in xs], [v or 0.0 for v in values], width, label=f"TTFT {label}"
        )
        ax.bar_label(
            bars,
            labels=[f"{v:.3g}s" if v is not None else "n/a" for v in values],
            fontsize=8,
            padding=2,
        )
    ax.set_xticks(list(xs), [f"{r.scenario}\n({r.engine}, n={len(r.ttfts)})" for r in shown])
    ax.set_yscale("log")
    ax.set_ylabel("time to first token (s, log scale)")
    ax.set_title(
        f"Dormant TTFT: warm vs wake vs cold boot (ref model {machine.model_size},"
        f" {machine.usable_cpus} CPUs)",
        fontsize=10,
    )
    ax.legend()
    ax.grid(axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
