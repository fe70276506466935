"""Shared by the gpu tests and the device check: where measured rows go, and how big the
pool test's servers are (pure, tested on CPU in tests/gpu/test_device_check.py).

``record`` appends one JSON row to $DORMANT_GPU_RESULTS (tests/gpu/summarize.py turns the
rows into summary.md and figures.json).
"""

from __future__ import annotations

import json
import os
from typing import Any

GiB = 1 << 30
DEFAULT_HOLD = 8 * GiB
"""What each of the pool test's two servers holds by default (DORMANT_GPU_HOLD)."""
ROOM_PER_HOLD = 1.5
"""The two servers share room for 1.5 holdings: one fits with its model and CUDA context
(half a holding to spare), both never can."""


def record(**row: Any) -> None:
    """Print one measured row and append it to $DORMANT_GPU_RESULTS (JSON lines)."""
    print("\n" + json.dumps(row), flush=True)
    path = os.environ.get("DORMANT_GPU_RESULTS")
    if path:
        with open(path, "a") as out:
            out.write(json.dumps(row) + "\n")


def pool_sizes(free: int, host_available: int, hold: int = DEFAULT_HOLD) -> tuple[int, int]:
    """(bytes each server holds, bytes a ballast process takes off the device first).

    Each swap moves only ``hold`` bytes each way (a few seconds), however big the device:
    a ballast process that never moves takes all the free device memory but
    ``ROOM_PER_HOLD * hold``, so one server fits and two cannot be resident at once — the
    alternation still proves the swap. ``hold`` shrinks where the device has less free
    memory than that, or where host RAM cannot take two parked copies (one parked, the
    other on its way out) with a fifth to spare."""
    hold = min(hold, int(free / ROOM_PER_HOLD), int(0.4 * host_available))
    if hold <= 0:
        raise ValueError(f"no room for the pool test: {free} bytes free on the device")
    return hold, max(free - int(ROOM_PER_HOLD * hold), 0)
