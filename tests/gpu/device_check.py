"""The Python steps of tests/gpu/device_check.sh (see tests/gpu/README.md). Each appends
JSON rows to $DORMANT_GPU_RESULTS through ``tests.gpu.plan.record``.

``install``   unpack the carried wheels that fit this Python where pip is missing
``preflight`` the machine: Python, PyTorch, driver and GPUs, gVisor or not, RAM, disk, CRIU,
              and what `dormant check` says about the device
``probe``     a small probe of the driver API on one worker process: NVML sees its pid,
              /dev/nvidia* mappings and open files after a suspend, memory freed, states,
              data intact, the CUresult for a non-CUDA pid and for a lock timeout

``--dry-run``: on CPU, with the FAKE libcuda of tests/gpu/fake_driver.py standing in for the
driver (and a CPU worker for the GPU one), so the script is exercised by `make test`.

Only the standard library is imported at the top: ``install`` runs before anything else.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
WORKER = Path(__file__).with_name("gpu_worker.py")
GiB = 1 << 30


def install(wheels: Path, requirements: Path, target: Path) -> None:
    """Unpack the wheels named in ``requirements`` that this interpreter can use (pure,
    abi3, or built for exactly this CPython) into ``target``: what pip would do for these
    wheels, for a device Python without pip."""
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    names = {
        re.split(r"[=<>!~ ]", line)[0].lower().replace("-", "_")
        for line in requirements.read_text().split()
        if line
    }
    target.mkdir(parents=True, exist_ok=True)
    for wheel in sorted(wheels.glob("*.whl")):
        name, _version, *_, python, abi, _plat = wheel.name[:-4].split("-")
        fits = abi in ("none", "abi3") and (python.startswith("py3") or python <= tag)
        if name.lower() in names and (fits or abi == tag):
            with zipfile.ZipFile(wheel) as archive:
                archive.extractall(target)


def _meminfo() -> dict[str, int]:
    out = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("MemTotal", "MemAvailable"):
            out[key] = int(rest.split()[0]) * 1024
    return out


def preflight(dry_run: bool) -> dict[str, Any]:
    from snapshots import find_criu, probe_criu
    from snapshots.cuda_view import disk_free
    from tests.gpu.plan import record

    release = platform.release()
    mem = _meminfo()
    row: dict[str, Any] = {
        "what": "preflight",
        "dry_run": dry_run,
        "python": platform.python_version(),
        "kernel": release,
        "gvisor": release.startswith("4.4.0"),
        "ram_total_bytes": mem.get("MemTotal"),
        "ram_available_bytes": mem.get("MemAvailable"),
        "disk_free_out_bytes": disk_free(Path(os.environ.get("OUT", "/tmp"))),
        "disk_free_tmp_bytes": disk_free(Path("/tmp")),
    }
    import torch

    row.update(torch=torch.__version__, torch_cuda=torch.version.cuda)
    row["cuda_available"] = torch.cuda.is_available()
    if row["cuda_available"]:
        row["gpus"] = [
            {"name": torch.cuda.get_device_name(i), "total_bytes": torch.cuda.mem_get_info(i)[1]}
            for i in range(torch.cuda.device_count())
        ]
    from warmpool.device import device_findings

    row["findings"] = [{"item": f.item, "ok": f.ok, "detail": f.detail} for f in device_findings()]
    driver = next(
        (f["detail"] for f in row["findings"] if f["item"] == "GPU (NVML)" and f["ok"]), ""
    )
    row["driver"] = driver.rpartition("driver ")[2] if driver else None
    path = find_criu()
    if path is None:
        row["criu"] = "no criu (prepare_carry.sh carries one)"
    else:
        info = probe_criu(path)
        row["criu"] = f"{info.version_text}: " + (info.why_not() or "usable")
    record(**row)
    return row


def _worker(gib: float, device: str) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, str(WORKER), str(gib), device],
        text=True,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("ready "):
        proc.kill()
        raise SystemExit(f"probe: the worker did not start ({line.strip() or 'no output'})")
    return proc, int(line.split()[1])


def _ask(proc: subprocess.Popen[str], line: str) -> str:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(line + "\n")
    proc.stdin.flush()
    return proc.stdout.readline().strip()


def probe(dry_run: bool) -> dict[str, Any]:
    from snapshots import EngineDumpFailed
    from snapshots.cuda import CudaCheckpoint
    from snapshots.cuda_criu import device_files
    from snapshots.cuda_view import GpuView, nvidia_mappings, nvml_view
    from tests.gpu.plan import record

    proc, expected = _worker(1 / 16 if dry_run else 1.0, "cpu" if dry_run else "cuda")
    bystander = subprocess.Popen(["sleep", "120"])  # never touches CUDA
    try:
        pid = proc.pid
        if dry_run:
            from tests.gpu.fake_driver import FakeLibcuda

            fake = FakeLibcuda(cuda={pid})
            cuda = CudaCheckpoint(lib=fake)
            view: Any = lambda pids: GpuView(why="dry run: FAKE driver, no NVML")  # noqa: E731
        else:
            cuda, view = CudaCheckpoint(), nvml_view
        row: dict[str, Any] = {"what": "probe", "dry_run": dry_run, "driver": cuda.driver_version}
        seen = view([pid])
        row["nvml_sees_worker"] = pid in seen.gpus
        row["nvml_why"] = seen.why
        before = seen.used.get(pid)
        row["device_bytes_before"] = before
        row["non_cuda_pid_code"] = cuda.probe_restore_thread(bystander.pid)[0]
        row["worker_restore_thread_code"] = cuda.probe_restore_thread(pid)[0]
        row["state_before"] = cuda.state(pid)
        suspended = cuda.suspend(pid)
        row["suspend_seconds"] = round(suspended.total, 4)
        row["state_suspended"] = cuda.state(pid)
        time.sleep(0.2)
        row["nvidia_mappings_suspended"] = nvidia_mappings(pid)
        row["nvidia_files_open_suspended"] = device_files(pid)
        during = view([pid]).used.get(pid)
        row["device_bytes_suspended"] = during
        row["freed"] = None if before is None or during is None else during < before // 10
        resumed = cuda.resume(pid)
        row["resume_seconds"] = round(resumed.total, 4)
        row["state_after"] = cuda.state(pid)
        row["data_intact"] = _ask(proc, "check") == f"sum {expected}"
        # Last: a lock that cannot finish in time (the worker queues seconds of GPU work).
        _ask(proc, "busy 5")
        if dry_run:
            fake.busy.add(pid)  # the FAKE driver plays work that outlasts the lock timeout
        try:
            cuda.lock(pid, timeout=0.2)
            row["lock_timeout_code"] = 0
            row["lock_timeout_note"] = "the lock succeeded: the queued work was done already"
            cuda.unlock(pid)
        except EngineDumpFailed as exc:
            row["lock_timeout_code"] = cuda.last_error
            row["lock_timeout_note"] = str(exc)[:300]
        row["ok"] = (
            row["state_suspended"] == "checkpointed"
            and row["state_after"] == "running"
            and row["data_intact"]
            and not row["nvidia_mappings_suspended"]
        )
    finally:
        bystander.kill()
        bystander.wait(10)
        proc.kill()
        proc.wait(30)
    record(**row)
    return row


def main(argv: list[str]) -> None:
    dry_run = "--dry-run" in argv
    args = [a for a in argv if a != "--dry-run"]
    step = args[0] if args else ""
    if step == "install":
        install(Path(args[1]), Path(args[2]), Path(args[3]))
    elif step == "preflight":
        preflight(dry_run)
    elif step == "probe":
        row = probe(dry_run)
        if not row["ok"]:
            raise SystemExit(f"probe: the driver API did not behave as expected: {row}")
    else:
        raise SystemExit(f"usage: {sys.argv[0]} install|preflight|probe [--dry-run]")


if __name__ == "__main__":
    main(sys.argv[1:])
