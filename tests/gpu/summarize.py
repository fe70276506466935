"""Turn the JSON rows of a device check (tests/gpu/device_check.sh) into ``summary.md`` (the
Markdown for docs/measurements.md) and ``figures.json`` (every figure, by step, with the
performance targets and whether they were met).

Usage: python3 tests/gpu/summarize.py RESULTS.jsonl [--out DIR]  (prints the summary; with
--out also writes DIR/summary.md and DIR/figures.json)
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

GiB = 1 << 30
TARGETS = {
    "hooks_swap_in_gb_per_s": (40.0, ">="),
    "ttft_after_wake_s": (0.5, "<="),
}
"""What a run on a card is held to: the hooks engine's swap-in (pinned host buffers, async
copies) at >= 40 GB/s; the first token after a wake from host RAM (8 GiB) within 0.5 s."""
KEYS = (
    "dry_run",
    "preflight",
    "probe",
    "cuda_toggle",
    "refserver_sleep",
    "pool",
    "criu_cuda",
    "nvml_namespace",
    "bandwidth",
    "steps",
    "targets",
)
"""The keys of figures.json (tests/gpu/test_device_check.py holds the dry run to them)."""


def _first(rows: list[dict[str, Any]], what: str) -> dict[str, Any] | None:
    return next((r for r in rows if r.get("what") == what), None)


def _target(measured: float | None, name: str) -> dict[str, Any]:
    bound, how = TARGETS[name]
    met = None if measured is None else (measured >= bound if how == ">=" else measured <= bound)
    return {"target": f"{how} {bound:g}", "measured": measured, "met": met}


def figures(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Every figure of the run, grouped by step (see ``KEYS``)."""
    swaps = [r for r in rows if r.get("what") in ("swap-out", "swap-in")]
    hooks_in = [r for r in swaps if r["what"] == "swap-in" and r.get("engine") == "hooks"]
    rates = [r["gb_per_s"] for r in hooks_in if r.get("gb_per_s")]
    ttfts = [r["ttft_seconds"] for r in swaps if r.get("ttft_seconds") is not None]
    preflight = _first(rows, "preflight")
    return {
        "dry_run": bool(preflight and preflight.get("dry_run")),
        "preflight": preflight,
        "probe": _first(rows, "probe"),
        "cuda_toggle": [r for r in rows if r.get("what") == "cuda-toggle"],
        "refserver_sleep": [r for r in rows if r.get("what") == "refserver-sleep"],
        "pool": {"setup": _first(rows, "setup"), "swaps": swaps},
        "criu_cuda": _first(rows, "criu-cuda"),
        "nvml_namespace": _first(rows, "nvml-namespace"),
        "bandwidth": _first(rows, "bandwidth"),
        "steps": [r for r in rows if r.get("what") == "step"],
        "targets": {
            "hooks_swap_in_gb_per_s": _target(
                statistics.median(rates) if rates else None, "hooks_swap_in_gb_per_s"
            ),
            "ttft_after_wake_s": _target(
                statistics.median(ttfts) if ttfts else None, "ttft_after_wake_s"
            ),
        },
    }


def summarize(rows: list[dict[str, Any]]) -> str:
    """The Markdown summary of a run."""
    fig = figures(rows)
    lines = [
        "# Device check"
        + (" (DRY RUN on CPU, FAKE driver: no figure is real)" if fig["dry_run"] else "")
    ]
    pre = fig["preflight"]
    if pre:
        gpus = ", ".join(
            f"{g['name']} {g['total_bytes'] / GiB:.0f} GiB" for g in pre.get("gpus", [])
        )
        lines.append(
            f"- machine: kernel {pre['kernel']}{' (gVisor)' if pre['gvisor'] else ''}, Python "
            f"{pre['python']}, torch {pre['torch']}, driver {pre.get('driver')}, GPUs: "
            f"{gpus or 'none'}; RAM {pre['ram_available_bytes'] / GiB:.0f} of "
            f"{pre['ram_total_bytes'] / GiB:.0f} GiB available; CRIU {pre['criu']}"
        )
    probe = fig["probe"]
    if probe:
        lines.append(
            f"- driver probe: NVML sees the worker: {probe['nvml_sees_worker']}; states "
            f"{probe['state_before']} → {probe['state_suspended']} → {probe['state_after']}; "
            f"/dev/nvidia* mapped while suspended: {probe['nvidia_mappings_suspended'] or 'none'}; "
            f"freed: {probe['freed']}; data intact: {probe['data_intact']}; CUresult for a "
            f"non-CUDA pid: {probe['non_cuda_pid_code']}, for a lock timeout: "
            f"{probe['lock_timeout_code']}"
        )
    for r in fig["cuda_toggle"]:
        lines.append(
            f"- cuda suspend/resume of {r['bytes'] / GiB:.1f} GiB: suspend "
            f"{r['suspend_seconds']} s, resume {r['resume_seconds']} s, left while suspended "
            f"{r['suspended_bytes'] >> 20} MiB, intact: {r['intact']}"
        )
    for r in fig["refserver_sleep"]:
        lines.append(f"- reference server {r['step']}: {r['seconds']} s")
    bandwidth = fig["bandwidth"]
    if bandwidth:
        lines.append(
            f"- copies ({bandwidth['device']}): pinned host→device "
            f"{bandwidth['pinned_h2d_gb_per_s']} GB/s, device→host "
            f"{bandwidth['pinned_d2h_gb_per_s']} GB/s (pageable: "
            f"{bandwidth['pageable_h2d_gb_per_s']} / {bandwidth['pageable_d2h_gb_per_s']} GB/s)"
        )
    setup = fig["pool"]["setup"]
    if setup:
        lines.append(
            f"- pool: {setup['device']}, {setup['total_bytes'] / GiB:.1f} GiB; each server holds "
            f"{setup['hold_bytes'] / GiB:.1f} GiB, a ballast {setup['ballast_bytes'] / GiB:.1f} GiB"
        )
    grouped: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in fig["pool"]["swaps"]:
        grouped[(r["engine"], r["what"])].append(r)
    if grouped:
        lines += [
            "",
            "| engine | swap | n | GiB moved | seconds (median) | GB/s | of pinned | TTFT (s) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for (engine, what), rs in sorted(grouped.items()):
            moved = statistics.median(r["bytes"] for r in rs)
            seconds = statistics.median(r["seconds"] for r in rs)
            rate = moved / seconds / 1e9 if seconds else 0.0
            share = ""
            if bandwidth:
                key = "pinned_d2h_gb_per_s" if what == "swap-out" else "pinned_h2d_gb_per_s"
                share = f"{rate / bandwidth[key]:.0%}" if bandwidth[key] else ""
            ttft = [r["ttft_seconds"] for r in rs if r.get("ttft_seconds") is not None]
            lines.append(
                f"| {engine} | {what[5:]} | {len(rs)} | {moved / GiB:.1f} | {seconds:.2f} "
                f"| {rate:.1f} | {share} | {statistics.median(ttft) if ttft else ''} |"
            )
        lines.append("")
    for what in ("criu_cuda", "nvml_namespace"):
        if fig[what]:
            lines.append(
                f"- {what}: " + ", ".join(f"{k}={v}" for k, v in fig[what].items() if k != "what")
            )
    for name, t in fig["targets"].items():
        verdict = {True: "met", False: "NOT met", None: "not measured"}[t["met"]]
        lines.append(f"- target {name} {t['target']}: {t['measured']} ({verdict})")
    lines.append("")
    lines.append("| step | rc | seconds |")
    lines.append("|---|---|---|")
    for s in fig["steps"]:
        lines.append(f"| {s['step']} | {s['rc']} | {s['seconds']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
    results = Path(argv[0])
    rows = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    text = summarize(rows)
    print(text)
    if "--out" in argv:
        out = Path(argv[argv.index("--out") + 1])
        (out / "summary.md").write_text(text)
        (out / "figures.json").write_text(json.dumps(figures(rows), indent=1) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
