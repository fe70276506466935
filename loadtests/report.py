"""The bench report: TTFT warm / after wake / after cold boot side by side, as a table, CSV
and a PNG bar chart."""

from __future__ import annotations

import csv
import math
import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "Machine",
    "Row",
    "percentile",
    "ratios",
    "render_table",
    "write_chart",
    "write_csv",
    "write_samples_csv",
]


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated percentile (``q`` in [0, 1]); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass
class Row:
    """One measured scenario: its TTFT samples and what Dormant said about the wake."""

    scenario: str
    engine: str
    method: str
    ttfts: list[float] = field(default_factory=list)
    snapshot_bytes: int | None = None
    server_wake: list[float] = field(default_factory=list)
    note: str = ""

    @property
    def p50(self) -> float | None:
        return percentile(self.ttfts, 0.50)

    @property
    def p95(self) -> float | None:
        return percentile(self.ttfts, 0.95)

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
    "samples",
    "TTFT p50",
    "TTFT p95",
    "snapshot",
    "restore/boot (server)",
)


def render_table(rows: Sequence[Row], machine: Machine) -> str:
    """The side-by-side table, the ratios and the machine, as printable text."""
    cells = [
        [
            r.scenario,
            r.engine,
            r.method,
            str(len(r.ttfts)),
            _seconds(r.p50),
            _seconds(r.p95),
            _bytes(r.snapshot_bytes),
            _seconds(r.server_wake_p50) if r.server_wake else "-",
        ]
        for r in rows
    ]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(_COLUMNS)]
    right = {3, 4, 5, 6, 7}

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(w) if i in right else v.ljust(w)
            for i, (v, w) in enumerate(zip(values, widths, strict=True))
        ).rstrip()

    out = [line(_COLUMNS), line(["-" * w for w in widths]), *(line(c) for c in cells)]
    notes = [f"  {r.scenario}: {r.note}" for r in rows if r.note]
    if notes:
        out += ["notes:", *notes]
    shown = ", ".join(
        f"{name} = {'n/a' if value is None else f'{value:.1f}x'}"
        for name, value in ratios(rows).items()
    )
    out += [f"TTFT p50 ratios: {shown}", machine.describe()]
    return "\n".join(out)


def write_csv(rows: Sequence[Row], machine: Machine, path: Path) -> None:
    """One line per row, with the machine repeated so the file stands alone."""
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(
            [
                "scenario",
                "engine",
                "method",
                "samples",
                "ttft_p50_s",
                "ttft_p95_s",
                "snapshot_bytes",
                "server_wake_p50_s",
                "note",
                "model_size",
                "cpus",
                "cpu_model",
            ]
        )
        for r in rows:
            out.writerow(
                [
                    r.scenario,
                    r.engine,
                    r.method,
                    len(r.ttfts),
                    "" if r.p50 is None else f"{r.p50:.6f}",
                    "" if r.p95 is None else f"{r.p95:.6f}",
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
        (-width / 2, "p50", [r.p50 or 0.0 for r in shown]),
        (width / 2, "p95", [r.p95 or 0.0 for r in shown]),
    ):
        bars = ax.bar([x + offset for x in xs], values, width, label=f"TTFT {label}")
        ax.bar_label(bars, labels=[f"{v:.3g}s" for v in values], fontsize=8, padding=2)
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
