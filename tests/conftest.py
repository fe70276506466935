"""Shared fixtures. Integration tests start real processes; nothing here is a mock."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest

try:  # snapshots.manifest digests with BLAKE3: without it nothing here can even be collected
    import blake3  # noqa: F401
except ImportError as exc:  # one line, not a traceback per test module (e.g. on the device)
    sys.exit(
        f"the tests need the blake3 package ({exc}): `make setup`, or on the device machine "
        "the wheels tests/gpu/prepare_carry.sh carries"
    )

from snapshots import CriuEngine, EngineUnavailable, find_criu, probe_criu

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def criu() -> CriuEngine:
    """A usable CRIU, or skip. `make test` sets DORMANT_REQUIRE_CRIU=1 when setup built one:
    then a missing CRIU fails the run instead of silently skipping every CRIU test."""
    required = os.environ.get("DORMANT_REQUIRE_CRIU") == "1"
    path = find_criu()
    problem = "no criu found"
    if path is not None:
        try:
            info = probe_criu(path)
            if info.usable and os.geteuid() == 0:
                return CriuEngine(info)
            problem = info.why_not() or "CRIU needs root"
        except EngineUnavailable as exc:
            problem = str(exc)
    if required:
        pytest.fail(f"CRIU required (DORMANT_REQUIRE_CRIU=1) but unusable: {problem}")
    pytest.skip(f"CRIU unusable here: {problem}")


@pytest.fixture
def counter_cmd() -> list[str]:
    return [sys.executable, str(TESTS / "servers" / "counter.py")]
