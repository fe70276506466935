"""The device check's parts that need no GPU (not marked ``gpu``: they run in `make test`):
its dry run end to end (FAKE driver), the pool test's sizes, the carried set, the one-line
failure when blake3 is missing, and the reference server's checksum, whose peak memory is
measured on CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from examples.refserver.device import CHECKSUM_CHUNK, checksum
from tests.conftest import ROOT
from tests.gpu.carry_set import closure
from tests.gpu.plan import ROOM_PER_HOLD, GiB, pool_sizes
from tests.gpu.summarize import KEYS

# ---- the dry run: the same script, on CPU, with the FAKE driver --------------------------


def test_the_device_check_dry_run_writes_its_summary_and_figures(tmp_path: Path) -> None:
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    done = subprocess.run(
        ["bash", "tests/gpu/device_check.sh", "--dry-run"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    summary = (tmp_path / "summary.md").read_text()
    assert summary.startswith("# Device check (DRY RUN")
    figures = json.loads((tmp_path / "figures.json").read_text())
    assert tuple(figures) == KEYS
    assert figures["dry_run"] is True
    steps = {s["step"]: s["rc"] for s in figures["steps"]}
    assert steps == {
        "preflight": 0,
        "probe": 0,
        "cuda-suspend-resume": 0,
        "refserver-sleep": 0,
        "pool": 0,
        "criu-cuda": 0,
        "bandwidth": 0,
    }
    probe = figures["probe"]
    assert (probe["state_suspended"], probe["state_after"]) == ("checkpointed", "running")
    assert probe["data_intact"] is True and probe["nvidia_mappings_suspended"] == []
    assert probe["non_cuda_pid_code"] == 3 and probe["lock_timeout_code"] == 909  # the FAKE's
    assert figures["preflight"]["kernel"] and figures["bandwidth"]["dry_run"] is True
    assert set(figures["targets"]) == {"hooks_swap_in_gb_per_s", "ttft_after_wake_s"}


# ---- the pool test's sizes -------------------------------------------------------------


@pytest.mark.parametrize(
    ("free", "host", "hold", "expect_hold"),
    [
        (79 * GiB, 120 * GiB, 8 * GiB, 8 * GiB),  # H100: a ballast takes ~67 GiB
        (139 * GiB, 120 * GiB, 8 * GiB, 8 * GiB),  # H200: the same swap, a larger ballast
        (9 * GiB, 120 * GiB, 8 * GiB, 6 * GiB),  # a small card: the holding shrinks
        (79 * GiB, 10 * GiB, 8 * GiB, 4 * GiB),  # little host RAM: two parked copies must fit
    ],
)
def test_pool_sizes_move_a_fixed_holding_and_leave_room_for_one(
    free: int, host: int, hold: int, expect_hold: int
) -> None:
    got_hold, ballast = pool_sizes(free, host, hold)
    assert got_hold == pytest.approx(expect_hold, rel=0.01)
    room = free - ballast
    assert got_hold < room < 2 * got_hold  # one server fits, two never can
    assert room == pytest.approx(ROOM_PER_HOLD * got_hold, abs=1)
    assert 2 * got_hold <= 0.8 * host + 1


# ---- what is carried -------------------------------------------------------------------


def test_the_carried_set_is_this_environment_consistent_and_without_torch() -> None:
    carried = closure()
    for name in ("blake3", "transformers", "huggingface-hub", "tokenizers", "pytest-timeout"):
        assert carried[name] == metadata.version(name), name
    assert not {"torch", "numpy", "nvidia-ml-py"} & set(carried)


TARGET = ("tests/gpu/test_device_check.py",)


def test_collection_without_blake3_fails_in_one_line(tmp_path: Path) -> None:
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "blake3.py").write_text("raise ImportError('No module named blake3 (shadowed)')\n")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--collect-only", "-q", *TARGET],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": f"{shadow}:{ROOT}"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert len(lines) == 1 and "need the blake3 package" in lines[0], lines


# ---- the reference server's checksum: no 8x copy ---------------------------------------

_PEAK = """
import resource, sys, torch
from examples.refserver.device import checksum, hold_memory
held = hold_memory(torch.device("cpu"), int(sys.argv[1]))
chunk = int(sys.argv[2])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
value = checksum(held, chunk) if chunk else int(held.sum(dtype=torch.int64))
print(value, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
"""


def _peak(nbytes: int, chunk: int) -> tuple[int, int]:
    """(checksum, growth of the peak RSS during it) in a fresh process; chunk 0: the
    unchunked sum the server used to do."""
    done = subprocess.run(
        [sys.executable, "-c", _PEAK, str(nbytes), str(chunk)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    value, grew = done.stdout.split()
    return int(value), int(grew)


def test_checksum_sums_in_chunks_with_a_bounded_temporary() -> None:
    held = 256 << 20
    chunked, grew = _peak(held, CHECKSUM_CHUNK)
    whole, grew_whole = _peak(held, 0)
    assert chunked == whole
    assert grew <= 8 * CHECKSUM_CHUNK + (32 << 20), f"{grew >> 20} MiB for {held >> 20} MiB"
    assert grew_whole >= 4 * held  # the int64 copy of the whole tensor it replaces


@pytest.mark.parametrize(("size", "chunk"), [(0, 5), (1, 5), (17, 5), (4096 * 3 + 7, 4096)])
def test_checksum_is_the_sum_whatever_the_chunking(size: int, chunk: int) -> None:
    import torch

    data = torch.arange(size, dtype=torch.int64).remainder(251).to(torch.uint8)
    assert checksum(data, chunk) == int(data.to(torch.int64).sum()) == sum(data.tolist())
