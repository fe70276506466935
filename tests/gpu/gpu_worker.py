"""A CUDA process for the gpu tests and the device check: holds GIB of device memory
filled with a pattern (examples.refserver.device.hold_memory) and answers on stdin:

``check``  → ``sum N``: the checksum it still sees (summed in chunks: no copy of the held
           memory is made, so the worker holds what it says and a ballast stays small)
``busy S`` → ``busy``: queues about S seconds of GPU work and answers before it ends (the
           device check's lock-timeout probe)

Usage: python3 tests/gpu/gpu_worker.py GIB [DEVICE]  (DEVICE: cuda, default; cpu for the
device check's dry run)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch

from examples.refserver.device import checksum, hold_memory, synchronize


def _busy(device: torch.device, seconds: float) -> None:
    """Queue matrix products for about ``seconds`` (timed on a first one), without waiting."""
    a = torch.randn(4096, 4096, device=device)
    started = time.perf_counter()
    a @ a
    synchronize(device)
    one = max(time.perf_counter() - started, 1e-4)
    for _ in range(int(seconds / one)):
        a = a @ a / 4096
    del a


def main() -> None:
    nbytes = int(float(sys.argv[1]) * (1 << 30))
    device = torch.device(sys.argv[2] if len(sys.argv) > 2 else "cuda")
    held = hold_memory(device, nbytes)
    expected = checksum(held)
    if device.type == "cuda":
        torch.cuda.empty_cache()  # only `held` stays on the device
    print(f"ready {expected}", flush=True)
    for line in sys.stdin:
        words = line.split()
        if words == ["check"]:
            synchronize(device)
            print(f"sum {checksum(held)}", flush=True)
        elif words[:1] == ["busy"]:
            _busy(device, float(words[1]))
            print("busy", flush=True)


if __name__ == "__main__":
    main()
