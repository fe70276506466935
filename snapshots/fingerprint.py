"""What was started: a fingerprint of a workload's command, environment and working
directory, recorded in each snapshot's manifest (``meta.fingerprint``).

A snapshot is the memory of one particular program: restoring it after the workload's
``command:``, ``env:`` or ``cwd:`` changed would serve the old program (an old model after
an upgrade). Each part is digested separately, so that a mismatch can say what changed;
the values themselves (secrets in ``env``) are never written.

A manifest written before fingerprints existed has none: "unknown, allowed" (restored as
before). On Kubernetes the pod template's image and args belong in it too (not yet).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence

__all__ = ["PARTS", "Fingerprint", "fingerprint", "stale_parts"]

PARTS = ("command", "env", "cwd")
Fingerprint = Mapping[str, str]
"""part name -> hex sha256 of that part, canonically encoded."""


def _digest(value: object) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def fingerprint(command: Sequence[str], env: Mapping[str, str], cwd: str | None) -> dict[str, str]:
    """The fingerprint of what is started: ``command`` as configured (placeholders such as
    ``{port}`` left in), the workload's own ``env`` (not Dormant's environment) and ``cwd``."""
    return {
        "command": _digest(list(command)),
        "env": _digest(dict(env)),
        "cwd": _digest(cwd),
    }


def stale_parts(recorded: Fingerprint | None, expected: Fingerprint | None) -> list[str]:
    """The parts that differ (empty: the snapshot is this workload's). A missing fingerprint
    on either side, or a part only one side has, is unknown and allowed."""
    if not recorded or not expected:
        return []
    return [p for p in PARTS if p in recorded and p in expected and recorded[p] != expected[p]]
