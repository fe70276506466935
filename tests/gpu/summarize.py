"""Turn the JSON lines of a GPU run (tests/gpu/run_on_device.sh) into the Markdown table for
docs/measurements.md: swap-out and swap-in seconds against bytes moved, per engine, beside
the pinned host↔device bandwidth of the same run.

Usage: python3 tests/gpu/summarize.py RESULTS.jsonl
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from typing import Any


def summarize(rows: list[dict[str, Any]]) -> str:
    lines = []
    setup = next((r for r in rows if r.get("what") == "setup"), None)
    bandwidth = next((r for r in rows if r.get("what") == "bandwidth"), None)
    if setup:
        lines.append(
            f"{setup['device']}, driver {setup['driver']}: {setup['total_bytes'] / 2**30:.1f} GiB; "
            f"each server holds {setup['hold_bytes'] / 2**30:.1f} GiB"
        )
    if bandwidth:
        lines.append(
            f"pinned copies: host→device {bandwidth['pinned_h2d_gb_per_s']} GB/s, "
            f"device→host {bandwidth['pinned_d2h_gb_per_s']} GB/s (pageable: "
            f"{bandwidth['pageable_h2d_gb_per_s']} / {bandwidth['pageable_d2h_gb_per_s']} GB/s)"
        )
    swaps: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r.get("what") in ("swap-out", "swap-in"):
            swaps[(r["engine"], r["what"])].append(r)
    if swaps:
        lines += [
            "",
            "| engine | swap | n | GiB moved | seconds (median) | GB/s | of pinned |",
            "|---|---|---|---|---|---|---|",
        ]
        for (engine, what), rs in sorted(swaps.items()):
            moved = statistics.median(r["bytes"] for r in rs)
            seconds = statistics.median(r["seconds"] for r in rs)
            rate = moved / seconds / 1e9 if seconds else 0.0
            share = ""
            if bandwidth:
                key = "pinned_d2h_gb_per_s" if what == "swap-out" else "pinned_h2d_gb_per_s"
                share = f"{rate / bandwidth[key]:.0%}"
            lines.append(
                f"| {engine} | {what[5:]} | {len(rs)} | {moved / 2**30:.1f} | {seconds:.2f} "
                f"| {rate:.1f} | {share} |"
            )
    for r in rows:
        if r.get("what") in ("criu-cuda", "nvml-namespace"):
            lines.append(
                f"{r['what']}: " + ", ".join(f"{k}={v}" for k, v in r.items() if k != "what")
            )
    return "\n".join(lines)


def main() -> None:
    with open(sys.argv[1]) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    print(summarize(rows))


if __name__ == "__main__":
    main()
