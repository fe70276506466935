"""Host↔device copy bandwidth (pinned and pageable host memory), measured with PyTorch in
the same run as the swaps: the physical floor a swap's seconds are compared with.

Usage: python3 tests/gpu/bandwidth.py [GIB] [--dry-run]  (default 4). Prints one JSON line,
and appends it to $DORMANT_GPU_RESULTS when set. ``--dry-run`` (the device check on CPU):
host-to-host copies of 1/16 of that, timed with the CPU clock, the same row's keys.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.gpu.plan import record


def _seconds(copy: object, reps: int = 3) -> float:
    """Best of ``reps`` timed runs of ``copy()`` (CUDA events), after one warm-up."""
    assert callable(copy)
    copy()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        copy()
        end.record()
        end.synchronize()
        best = min(best, start.elapsed_time(end) / 1000)
    return best


def _cpu_seconds(copy: object, reps: int = 3) -> float:
    """Best of ``reps`` timed runs of ``copy()`` on the CPU clock, after one warm-up."""
    assert callable(copy)
    copy()
    best = float("inf")
    for _ in range(reps):
        started = time.perf_counter()
        copy()
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    args = [a for a in sys.argv[1:] if a != "--dry-run"]
    dry_run = len(args) < len(sys.argv[1:])
    size = int(float(args[0] if args else 4) * (1 << 30))
    if dry_run:
        size //= 16
        src, dst = torch.ones(size, dtype=torch.uint8), torch.empty(size, dtype=torch.uint8)
        rate = round(size / _cpu_seconds(lambda: dst.copy_(src)) / 1e9, 2)
        record(
            what="bandwidth",
            dry_run=True,
            bytes=size,
            device="cpu (dry run: host to host)",
            **{
                f"{kind}_{way}_gb_per_s": rate
                for kind in ("pinned", "pageable")
                for way in ("h2d", "d2h")
            },
        )
        return
    device = torch.empty(size, dtype=torch.uint8, device="cuda")
    pinned = torch.ones(size, dtype=torch.uint8).pin_memory()
    pageable = torch.ones(size, dtype=torch.uint8)
    row = {
        "what": "bandwidth",
        "bytes": size,
        "device": torch.cuda.get_device_name(),
        "pinned_h2d_gb_per_s": size / _seconds(lambda: device.copy_(pinned)) / 1e9,
        "pinned_d2h_gb_per_s": size / _seconds(lambda: pinned.copy_(device)) / 1e9,
        "pageable_h2d_gb_per_s": size / _seconds(lambda: device.copy_(pageable)) / 1e9,
        "pageable_d2h_gb_per_s": size / _seconds(lambda: pageable.copy_(device)) / 1e9,
    }
    record(**{k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()})


if __name__ == "__main__":
    main()
