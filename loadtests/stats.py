"""What a report may say about a sample: its size n, its mean, and only the percentiles the
sample can support.

A percentile q above the median needs at least ``1 / (1 - q)`` samples (p90: 10, p95: 20,
p99: 100; p50: 1): below that the "p95" of 5 samples is just their maximum, printed as if it
meant something.
Reports print such a percentile as ``n/a (n=5)`` and export it as ``null`` beside ``n``.

Pure: numbers in, values out (``write_json`` aside). The JSON shapes are
``loadtests/report.schema.json``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadtests.gates import Summary

__all__ = [
    "QUANTILES",
    "SCHEMA_PATH",
    "SCHEMA_VERSION",
    "Stat",
    "describe",
    "from_summary",
    "locust_report",
    "min_samples",
    "percentile",
    "write_json",
]

QUANTILES: dict[str, float] = {"p50": 0.50, "p90": 0.90, "p95": 0.95, "p99": 0.99}
SCHEMA_VERSION = 1
SCHEMA_PATH = Path(__file__).with_name("report.schema.json")


def min_samples(q: float) -> int:
    """The fewest samples that support percentile ``q`` (in [0, 1)): ``ceil(1 / (1 - q))``
    above the median (one sample in ``1 / (1 - q)`` lies beyond it), 1 up to the median."""
    if not 0 <= q < 1:
        raise ValueError(f"quantile must be in [0, 1) (got {q})")
    if q <= 0.5:
        return 1
    return math.ceil(round(1 / (1 - q), 9))


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated percentile (``q`` in [0, 1]); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass(frozen=True)
class Stat:
    """n, mean, and each of ``QUANTILES`` (None where n cannot support it)."""

    n: int
    mean: float | None
    quantiles: Mapping[str, float | None]

    def get(self, name: str) -> float | None:
        return self.quantiles.get(name)

    def show(self, name: str, unit: str = "s", digits: int = 3) -> str:
        """``'0.123 s (n=25)'``, or ``'n/a (n=5)'`` when n does not support ``name``."""
        value = self.mean if name == "mean" else self.get(name)
        if value is None:
            return f"n/a (n={self.n})"
        return f"{value:.{digits}f} {unit} (n={self.n})".replace("  ", " ")

    def as_dict(self) -> dict[str, Any]:
        return {"n": self.n, "mean": self.mean, **dict(self.quantiles)}


def _supported(n: int, values: Mapping[str, float | None]) -> dict[str, float | None]:
    return {k: (v if n >= min_samples(QUANTILES[k]) else None) for k, v in values.items()}


def describe(values: Sequence[float]) -> Stat:
    """The stat of exact samples."""
    n = len(values)
    raw = {k: percentile(values, q) for k, q in QUANTILES.items()}
    return Stat(n, sum(values) / n if n else None, _supported(n, raw))


def from_summary(summary: Summary) -> Stat:
    """The stat of a Locust histogram (milliseconds, rounded by Locust), in seconds."""
    n = summary.requests
    raw = {k: summary.percentile(q) for k, q in QUANTILES.items()}
    return Stat(n, summary.value("avg"), _supported(n, raw))


def locust_report(
    scenario: str, summaries: Mapping[str, Summary], seconds: float
) -> dict[str, Any]:
    """The ``locust`` report: per request type n, failures and stats; output tokens/s."""
    e2e = summaries.get("E2E") or Summary()
    return {
        "kind": "locust",
        "schema_version": SCHEMA_VERSION,
        "scenario": scenario,
        "duration_s": round(seconds, 3),
        "output_tokens": e2e.length,
        "output_tokens_per_s": round(e2e.length / seconds, 3) if seconds > 0 else None,
        "request_types": {
            name: {**from_summary(s).as_dict(), "failures": s.failures}
            for name, s in sorted(summaries.items())
        },
    }


def write_json(path: Path, report: Mapping[str, Any]) -> None:
    """``report`` as indented JSON (parents created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")
