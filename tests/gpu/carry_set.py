"""Which distributions the device check must carry, pinned to this environment's versions.

The device machine has Python, PyTorch (with numpy) and nvidia-ml-py, and reaches no
registry. Everything else the device check imports is carried as wheels: the dependency
closure of ``ROOTS`` as installed here (so the set is consistent: transformers with the
huggingface-hub it was installed with, and so on), minus what the device already has.

Usage: python3 tests/gpu/carry_set.py  → one ``name==version`` a line (prepare_carry.sh).
"""

from __future__ import annotations

import re
from importlib import metadata

ROOTS = (
    "blake3",  # snapshots.manifest (tests/conftest.py, dormant check)
    "transformers",  # the reference server's model
    "fastapi",
    "uvicorn",
    "httpx",
    "anyio",
    "pyyaml",
    "pytest",
    "pytest-timeout",
)
"""What the device check imports beyond the standard library, PyTorch and NVML."""
PREINSTALLED = re.compile(r"^(torch|numpy|nvidia-.*|triton|setuptools|pip|wheel)$")
"""On the device already (PyTorch 2.11 CUDA 13 brings numpy and the nvidia-* libraries)."""
IMPORTS = "blake3, transformers, fastapi, uvicorn, httpx, anyio, yaml, pytest, pytest_timeout"
"""The one import line the device check runs right after installing (fail fast)."""


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


PYTHONS = ("3.11", "3.12", "3.13")
"""The device's Python is one of these (wheels are fetched for each)."""


def closure(roots: tuple[str, ...] = ROOTS) -> dict[str, str]:
    """``{name: version}`` of ``roots`` and everything they require (markers evaluated for
    each of ``PYTHONS``, extras not followed), minus ``PREINSTALLED``. The version is the
    one installed here; '' for a requirement of another Python not installed here (e.g.
    a backport for an older Python): the newest is fetched."""
    from packaging.markers import default_environment  # here only: the device check reads
    from packaging.requirements import Requirement  # IMPORTS before anything is installed

    base = {k: str(v) for k, v in default_environment().items()}
    envs = [{**base, "python_version": v, "extra": ""} for v in PYTHONS]
    found: dict[str, str] = {}
    todo = [_norm(r) for r in roots]
    while todo:
        name = todo.pop()
        if name in found or PREINSTALLED.match(name):
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            found[name] = ""
            continue
        found[name] = dist.version
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or any(req.marker.evaluate(env) for env in envs):
                todo.append(_norm(req.name))
    return dict(sorted(found.items()))


if __name__ == "__main__":
    for name, version in closure().items():
        print(f"{name}=={version}" if version else name)
