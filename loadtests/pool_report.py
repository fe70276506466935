"""The warm-pool bench's report: the Zipf churn per engine side by side, and swap seconds
against bytes moved per engine, as text and CSV. Pure: values in, text and files out."""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from loadtests.report import Machine, percentile

__all__ = [
    "ChurnResult",
    "SwapRow",
    "format_bytes",
    "render_churn",
    "render_report",
    "render_swaps",
    "write_churn_csv",
    "write_swaps_csv",
]


def format_bytes(value: int | None) -> str:
    """Binary units, as the config writes sizes: ``512.0 MiB``; '-' for None."""
    if value is None:
        return "-"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _s(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f} s"


@dataclass
class ChurnResult:
    """One engine's run of the Zipf churn."""

    engine: str
    """What Dormant used: 'criu' (snapshots) or 'restart' (stop and cold boot)."""
    planned: int
    seconds: float = 0.0
    """Wall time of the measured phase (first request sent to last answer)."""
    ttfts: list[float] = field(default_factory=list)
    """TTFT of every request that succeeded."""
    waited: list[float] = field(default_factory=list)
    """TTFT of the successful requests that waited for a wake (X-Dormant-Wake set)."""
    failures: list[str] = field(default_factory=list)
    swaps: int = 0
    """Workloads swapped out during the phase (/-/workloads counters)."""
    swap_seconds: dict[tuple[str, str], tuple[int, float]] = field(default_factory=dict)
    """(engine, direction) -> (count, total seconds) of the phase, from dormant_swap_seconds."""
    note: str = ""

    @property
    def ok(self) -> int:
        return len(self.ttfts)

    @property
    def requests_per_second(self) -> float | None:
        return self.ok / self.seconds if self.seconds > 0 else None

    def swap_means(self) -> str:
        """'in: criu 0.61 s x14; out: criu 1.52 s x14' (empty when nothing moved)."""
        parts = []
        for direction in ("in", "out"):
            shown = [
                f"{engine} {total / count:.2f} s x{count}"
                for (engine, d), (count, total) in sorted(self.swap_seconds.items())
                if d == direction and count > 0
            ]
            if shown:
                parts.append(f"{direction}: {', '.join(shown)}")
        return "; ".join(parts)


@dataclass
class SwapRow:
    """Swap-out and swap-in samples of one engine at one size."""

    engine: str
    """'criu' (hibernate / restore), 'hooks' (sleep level 1 / wake_up), 'restart'."""
    what: str
    """What was moved, e.g. 'refserver small + 512 MiB held'."""
    bytes_moved: int | None
    """Bytes written out and read back (snapshot bytes; bytes parked in host RAM)."""
    out_s: list[float] = field(default_factory=list)
    in_s: list[float] = field(default_factory=list)
    note: str = ""

    @property
    def out_p50(self) -> float | None:
        return percentile(self.out_s, 0.5)

    @property
    def in_p50(self) -> float | None:
        return percentile(self.in_s, 0.5)

    def rate(self, seconds: float | None) -> str:
        """Bytes moved per second at ``seconds``, in GB/s ('-' when it means nothing)."""
        if not self.bytes_moved or not seconds:
            return "-"
        return f"{self.bytes_moved / seconds / 1e9:.2f} GB/s"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], left: int) -> list[str]:
    """Aligned columns; the first ``left`` are left-aligned, the rest right-aligned."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            v.ljust(w) if i < left else v.rjust(w)
            for i, (v, w) in enumerate(zip(values, widths, strict=True))
        ).rstrip()

    return [line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)]


def render_churn(results: Sequence[ChurnResult], setup: str) -> str:
    """The churn side by side, a ratio line, and the mean swap seconds per engine."""
    header = ("engine", "ok/sent", "req/s", "TTFT p50", "TTFT p95", "waited", "waited p50", "swaps")
    rows = [
        (
            r.engine,
            f"{r.ok}/{r.planned}",
            "n/a" if r.requests_per_second is None else f"{r.requests_per_second:.2f}",
            _s(percentile(r.ttfts, 0.5)),
            _s(percentile(r.ttfts, 0.95)),
            str(len(r.waited)),
            _s(percentile(r.waited, 0.5)),
            str(r.swaps),
        )
        for r in results
    ]
    out = [f"Zipf churn: {setup}", *_table(header, rows, 1)]
    by_engine = {r.engine: r for r in results}
    criu, restart = by_engine.get("criu"), by_engine.get("restart")
    if criu and restart and criu.requests_per_second and restart.requests_per_second:
        p95 = percentile(restart.ttfts, 0.95), percentile(criu.ttfts, 0.95)
        ratio = f"{p95[0] / p95[1]:.1f}x" if p95[0] and p95[1] else "n/a"
        out.append(
            f"criu/restart: {criu.requests_per_second / restart.requests_per_second:.1f}x "
            f"the requests/s; restart/criu TTFT p95: {ratio}"
        )
    for r in results:
        if means := r.swap_means():
            out.append(f"  {r.engine} swap seconds (mean; 'in' includes waiting for room): {means}")
        for failure in r.failures[:3]:
            out.append(f"  {r.engine} failed: {failure}")
        if r.note:
            out.append(f"  {r.engine}: {r.note}")
    return "\n".join(out)


def render_swaps(rows: Sequence[SwapRow]) -> str:
    """Swap-out / swap-in seconds against the bytes each moved."""
    header = ("engine", "what", "bytes moved", "n", "out p50", "in p50", "out rate", "in rate")
    cells = [
        (
            r.engine,
            r.what,
            format_bytes(r.bytes_moved),
            str(max(len(r.out_s), len(r.in_s))),
            _s(r.out_p50),
            _s(r.in_p50),
            r.rate(r.out_p50),
            r.rate(r.in_p50),
        )
        for r in rows
    ]
    out = ["Swaps: seconds against bytes moved", *_table(header, cells, 2)]
    out += [f"  {r.engine} {r.what}: {r.note}" for r in rows if r.note]
    return "\n".join(out)


def render_report(
    churn: Sequence[ChurnResult],
    swaps: Sequence[SwapRow],
    setup: str,
    machine: Machine,
    load: str,
) -> str:
    parts = []
    if swaps:
        parts.append(render_swaps(swaps))
    if churn:
        parts.append(render_churn(churn, setup))
    parts.append(f"{machine.describe()}; load average {load}")
    return "\n\n".join(parts)


def write_churn_csv(results: Sequence[ChurnResult], machine: Machine, path: Path) -> None:
    """One line per engine, with the machine repeated so the file stands alone."""
    lines = [
        {
            "engine": r.engine,
            "sent": r.planned,
            "ok": r.ok,
            "seconds": f"{r.seconds:.3f}",
            "requests_per_s": _csv(r.requests_per_second),
            "ttft_p50_s": _csv(percentile(r.ttfts, 0.5)),
            "ttft_p95_s": _csv(percentile(r.ttfts, 0.95)),
            "waited": len(r.waited),
            "waited_p50_s": _csv(percentile(r.waited, 0.5)),
            "swaps": r.swaps,
            "swap_seconds": r.swap_means(),
            "note": r.note,
            "model_size": machine.model_size,
            "cpu_model": machine.cpu_model,
        }
        for r in results
    ]
    _write(path, lines)


def write_swaps_csv(rows: Sequence[SwapRow], machine: Machine, path: Path) -> None:
    """One line per engine and size, every sample included."""
    lines = [
        {
            "engine": r.engine,
            "what": r.what,
            "bytes_moved": "" if r.bytes_moved is None else r.bytes_moved,
            "samples": max(len(r.out_s), len(r.in_s)),
            "out_p50_s": _csv(r.out_p50),
            "in_p50_s": _csv(r.in_p50),
            "out_s": " ".join(f"{s:.4f}" for s in r.out_s),
            "in_s": " ".join(f"{s:.4f}" for s in r.in_s),
            "note": r.note,
            "model_size": machine.model_size,
            "cpu_model": machine.cpu_model,
        }
        for r in rows
    ]
    _write(path, lines)


def _write(path: Path, lines: Sequence[Mapping[str, object]]) -> None:
    with path.open("w", newline="") as f:
        out = csv.DictWriter(f, fieldnames=list(lines[0]) if lines else [])
        out.writeheader()
        out.writerows(lines)


def _csv(value: float | None) -> str:
    return "" if value is None else f"{value:.6f}"
