"""Raw per-request samples of a load test, as CSV: exact values, unlike Locust's rounded stats.

One row per recorded sample: request type (TTFT, TTFT-wake, ITL, E2E, ...), name (the model),
seconds, length (tokens), ok, error. The locustfile writes them with ``--samples-out``; the
bench reads them back to compute its percentiles.
"""

from __future__ import annotations

import csv
from dataclasses import astuple, dataclass, fields
from pathlib import Path

__all__ = ["Sample", "read_samples", "write_samples"]


@dataclass(frozen=True)
class Sample:
    """One measurement."""

    request_type: str
    name: str
    seconds: float
    length: int
    ok: bool
    error: str = ""


_HEADER = [f.name for f in fields(Sample)]


def write_samples(path: Path, samples: list[Sample]) -> None:
    """Write ``samples`` to ``path`` (parents created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(_HEADER)
        for sample in samples:
            row = list(astuple(sample))
            row[2] = f"{sample.seconds:.6f}"
            row[4] = int(sample.ok)
            out.writerow(row)


def read_samples(path: Path) -> list[Sample]:
    """The samples written to ``path`` by ``write_samples``."""
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    return [
        Sample(
            request_type=r["request_type"],
            name=r["name"],
            seconds=float(r["seconds"]),
            length=int(r["length"]),
            ok=r["ok"] == "1",
            error=r["error"],
        )
        for r in rows
    ]
