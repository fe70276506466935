"""SLO gates: limits on a load test's latency percentiles and failure ratio, judged at the end.

A gate is ``TYPE:METRIC=LIMIT`` over one Locust request type (``TTFT``, ``TTFT-wake``,
``ITL``, ``E2E``, ...): METRIC is p50/p90/p95/p99/max/avg (LIMIT in seconds) or fail_ratio
(LIMIT a ratio in [0, 1]). A gate passes when the measured value is <= LIMIT; a gate whose
request type has no samples fails, since nothing was shown to meet it.

Pure: it works on ``Summary`` histograms, which the locustfile builds from Locust's stats.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = [
    "METRICS",
    "Gate",
    "Summary",
    "Verdict",
    "evaluate",
    "parse_gates",
    "standard_gates",
]

METRICS: dict[str, float | None] = {
    "p50": 0.50,
    "p90": 0.90,
    "p95": 0.95,
    "p99": 0.99,
    "max": 1.0,
    "avg": None,
    "fail_ratio": None,
}


@dataclass(frozen=True)
class Gate:
    """``metric`` of ``request_type`` must be <= ``limit`` (seconds, or a ratio)."""

    request_type: str
    metric: str
    limit: float

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"unknown metric {self.metric!r}; use one of {', '.join(METRICS)}")
        if not math.isfinite(self.limit) or self.limit < 0:
            raise ValueError(f"gate limit must be a finite number >= 0 (got {self.limit})")
        if self.metric == "fail_ratio" and self.limit > 1:
            raise ValueError(f"fail_ratio limit must be within [0, 1] (got {self.limit})")

    def __str__(self) -> str:
        unit = "" if self.metric == "fail_ratio" else " s"
        return f"{self.request_type} {self.metric} <= {self.limit:g}{unit}"


@dataclass
class Summary:
    """One request type's samples: response times (ms) -> count, with the failure count and
    the summed response lengths (tokens, for TTFT and E2E)."""

    histogram: dict[float, int] = field(default_factory=dict)
    failures: int = 0
    length: int = 0

    @property
    def requests(self) -> int:
        return sum(self.histogram.values())

    def add(self, histogram: Mapping[int, int] | Mapping[float, int], failures: int) -> None:
        for ms, count in histogram.items():
            self.histogram[ms] = self.histogram.get(ms, 0) + count
        self.failures += failures

    def percentile(self, q: float) -> float | None:
        """Nearest-rank percentile in seconds; None without samples."""
        n = self.requests
        if n == 0:
            return None
        rank = max(1, math.ceil(q * n))
        seen = 0
        for ms in sorted(self.histogram):
            seen += self.histogram[ms]
            if seen >= rank:
                return ms / 1000.0
        return max(self.histogram) / 1000.0

    def value(self, metric: str) -> float | None:
        """The measured ``metric``: seconds, or the failure ratio; None without samples."""
        n = self.requests
        if n == 0:
            return None
        if metric == "fail_ratio":
            return self.failures / n
        if metric == "avg":
            return sum(ms * c for ms, c in self.histogram.items()) / n / 1000.0
        return self.percentile(METRICS[metric] or 0.0)


@dataclass(frozen=True)
class Verdict:
    """A gate and what was measured for it."""

    gate: Gate
    measured: float | None
    samples: int = 0

    @property
    def passed(self) -> bool:
        return self.measured is not None and self.measured <= self.gate.limit

    def __str__(self) -> str:
        if self.measured is None:
            return f"SLO gate FAILED: {self.gate}: no {self.gate.request_type} samples"
        unit = "" if self.gate.metric == "fail_ratio" else " s"
        shown = f"{self.measured:.4g}{unit}, n={self.samples}"
        q = METRICS[self.gate.metric]
        if q is not None and 0.5 < q < 1 and self.samples < math.ceil(round(1 / (1 - q), 9)):
            shown += f": too few samples for a {self.gate.metric}, it is nearly the max"
        if self.passed:
            return f"SLO gate passed: {self.gate} (measured {shown})"
        return f"SLO gate FAILED: {self.gate}: measured {shown}"


def parse_gates(spec: str) -> list[Gate]:
    """``'TTFT-wake:p95=5, E2E:fail_ratio=0.01'`` -> gates. Raises ValueError when malformed."""
    gates = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        kind, sep, rest = part.rpartition(":")
        metric, eq, limit = rest.partition("=")
        if not sep or not eq or not kind.strip():
            raise ValueError(f"SLO gate {part!r}: expected TYPE:METRIC=LIMIT, e.g. TTFT:p95=2.5")
        try:
            value = float(limit)
        except ValueError:
            raise ValueError(f"SLO gate {part!r}: limit {limit!r} is not a number") from None
        gates.append(Gate(kind.strip(), metric.strip(), value))
    return gates


def standard_gates(
    ttft_p50: float | None,
    ttft_p95: float | None,
    fail_ratio: float | None,
    requests_type: str = "E2E",
) -> list[Gate]:
    """The gates of ``--slo-ttft-p50``, ``--slo-ttft-p95`` (request type TTFT) and
    ``--slo-fail-ratio`` (over ``requests_type``, which has one sample per request, success
    or failure: E2E for completions, EXEC for notebook executes)."""
    gates = []
    if ttft_p50 is not None:
        gates.append(Gate("TTFT", "p50", ttft_p50))
    if ttft_p95 is not None:
        gates.append(Gate("TTFT", "p95", ttft_p95))
    if fail_ratio is not None:
        gates.append(Gate(requests_type, "fail_ratio", fail_ratio))
    return gates


def evaluate(gates: list[Gate], summaries: Mapping[str, Summary]) -> list[Verdict]:
    """Judge every gate against the summary of its request type."""
    empty = Summary()
    verdicts = []
    for g in gates:
        summary = summaries.get(g.request_type, empty)
        verdicts.append(Verdict(g, summary.value(g.metric), summary.requests))
    return verdicts
