"""Host↔device copy bandwidth (pinned and pageable host memory), measured with PyTorch in
the same run as the swaps: the physical floor a swap's seconds are compared with.

Usage: python3 tests/gpu/bandwidth.py [GIB]  (default 4). Prints one JSON line, and appends
it to $DORMANT_GPU_RESULTS when set.
"""

from __future__ import annotations

import json
import os
import sys

import torch


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


def main() -> None:
    size = int(float(sys.argv[1] if len(sys.argv) > 1 else 4) * (1 << 30))
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
    row = {k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}
    print(json.dumps(row), flush=True)
    if os.environ.get("DORMANT_GPU_RESULTS"):
        with open(os.environ["DORMANT_GPU_RESULTS"], "a") as out:
            out.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
