"""Where the reference server computes: choosing the device, sizes, and memory held on purpose.

`resolve_device` turns `cpu`, `cuda` or `cuda:N` into a `torch.device`, refusing a CUDA device
this machine does not have. `hold_memory` allocates a byte tensor on the device and writes a
pattern into every page, so the memory is really resident (on CPU, PSS shows it; on a GPU, NVML
does): tests use it to fill a device. `release_cached_memory` hands memory that PyTorch's caching
allocators keep back to the driver and the OS.
"""

from __future__ import annotations

import re

import torch

__all__ = [
    "DeviceUnavailable",
    "checksum",
    "format_size",
    "hold_memory",
    "parse_size",
    "release_cached_memory",
    "resolve_device",
    "synchronize",
]

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 1 << 10,
    "mib": 1 << 20,
    "gib": 1 << 30,
    "tib": 1 << 40,
}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*", re.IGNORECASE)
_PATTERN_PERIOD = 4096


class DeviceUnavailable(Exception):
    """The requested device does not exist on this machine."""


def parse_size(text: str) -> int:
    """Bytes in `text`: whole bytes, or a number and a unit (KiB..TiB, KB..TB), e.g. 512MiB."""
    match = _SIZE.fullmatch(text)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise ValueError(
            f"invalid size {text!r}: give bytes or a number with a unit, e.g. 512MiB or 40GiB"
        )
    value = float(match.group(1)) * _UNITS[unit]
    if unit in ("", "b") and not match.group(1).isdigit():
        raise ValueError(f"invalid size {text!r}: a number of bytes must be whole")
    return int(value)


def format_size(nbytes: int) -> str:
    """`nbytes` in the largest binary unit that keeps it at least 1 (e.g. 64MiB, 1.5GiB)."""
    for unit, factor in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if nbytes >= factor:
            return f"{nbytes / factor:g}{unit}"
    return f"{nbytes}B"


def resolve_device(spec: str) -> torch.device:
    """The device `spec` (`cpu`, `cuda`, `cuda:N`) names; DeviceUnavailable if it is not here."""
    try:
        device = torch.device(spec)
    except RuntimeError as exc:
        raise ValueError(f"invalid device {spec!r}: use cpu, cuda or cuda:N") from exc
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type != "cuda":
        raise ValueError(f"invalid device {spec!r}: use cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise DeviceUnavailable(
            f"--device {spec}: no CUDA device is usable here (torch.cuda.is_available() is"
            f" false: no NVIDIA driver or GPU, or a CPU-only PyTorch {torch.__version__});"
            " use --device cpu"
        )
    count = torch.cuda.device_count()
    index = torch.cuda.current_device() if device.index is None else device.index
    if index >= count:
        raise DeviceUnavailable(
            f"--device {spec}: this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}"
        )
    return torch.device("cuda", index)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (copies included) to finish; nothing to wait for on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def release_cached_memory(device: torch.device) -> None:
    """Give freed memory back: the CUDA caching allocator's blocks to the driver, and cached
    pinned host blocks to the OS (PyTorch keeps both for reuse otherwise). No-op on CPU, whose
    allocator returns large blocks to the OS as they are freed."""
    if device.type != "cuda":
        return
    torch.cuda.synchronize(device)
    with torch.cuda.device(device):
        torch.cuda.empty_cache()
    host_empty_cache = getattr(torch._C, "_host_emptyCache", None)
    if host_empty_cache is not None:
        host_empty_cache()


def _pattern(device: torch.device) -> torch.Tensor:
    return torch.arange(_PATTERN_PERIOD, dtype=torch.int32, device=device).remainder_(251).byte()


def hold_memory(device: torch.device, nbytes: int) -> torch.Tensor:
    """A byte tensor of `nbytes` on `device` with a known pattern written into every page."""
    held = torch.empty(nbytes, dtype=torch.uint8, device=device)
    pattern = _pattern(device)
    rows = nbytes // _PATTERN_PERIOD
    if rows:
        held[: rows * _PATTERN_PERIOD].view(rows, _PATTERN_PERIOD).copy_(
            pattern.expand(rows, _PATTERN_PERIOD)
        )
    rest = nbytes - rows * _PATTERN_PERIOD
    if rest:
        held[rows * _PATTERN_PERIOD :].copy_(pattern[:rest])
    synchronize(device)
    return held


CHECKSUM_CHUNK = 16 << 20
"""Elements summed at a time by `checksum`: its largest temporary is 8x this (int64)."""


def checksum(held: torch.Tensor, chunk: int = CHECKSUM_CHUNK) -> int:
    """Sum of the elements of `held` (flattened): equal before and after a move when nothing
    was lost. Summed `chunk` elements at a time into one int64 on the tensor's device: a
    `sum(dtype=int64)` of the whole tensor would first make an int64 copy of it (8x a byte
    tensor), so the largest temporary here is `8 * chunk` bytes, whatever the size held."""
    flat = held.reshape(-1)
    total = torch.zeros((), dtype=torch.int64, device=held.device)
    for start in range(0, flat.numel(), chunk):
        total += flat[start : start + chunk].sum(dtype=torch.int64)
    return int(total)
