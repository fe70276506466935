"""Policies in namespaces no Dormant install serves: said in their status, since the CRD is
cluster-wide but each install serves one namespace (its Roles reach no further).

Without this, a policy created in another namespace was silently ignored: no status, no
Event, no log. Each operator's leader lists every namespace's policies (its one cluster-wide
grant, on Dormant's CRD only) and, for a policy outside the namespace it serves that has no
status at all once ``grace`` seconds old, writes a Degraded status saying which namespace
this install serves and what to do. A policy with any status is left alone: an install that
serves its namespace writes one within seconds (Pending at the least), and overwrites this
one if it comes later. No Event: posting one in a namespace the install does not serve would
need write access there. A log line per policy, once.

``unserved(policies, served, now, grace)`` is the pure rule (table-tested).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["REASON", "unserved"]

REASON = "NamespaceNotServed"
Doc = Mapping[str, Any]


def _created(meta: Doc) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(str(meta.get("creationTimestamp")).replace("Z", "+00:00"))
    except ValueError:
        return None


def unserved(
    policies: Iterable[Doc], served: str, now: dt.datetime, grace: float
) -> list[tuple[str, str, dict[str, Any]]]:
    """(namespace, name, status) for each policy to mark (see the module docstring)."""
    out = []
    stamp = now.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    for policy in policies:
        meta = policy.get("metadata") or {}
        namespace = str(meta.get("namespace") or "")
        created = _created(meta)
        if namespace == served or policy.get("status") or meta.get("deletionTimestamp"):
            continue
        if created is None or (now - created).total_seconds() < grace:
            continue
        message = (
            f"no Dormant install serves namespace {namespace}: the one in namespace {served} "
            f"serves only its own; install Dormant in {namespace} (or grant its Roles there and "
            "run the activator and operator for it), or use deploy/overlays/cluster-wide"
        )
        status = {
            "phase": "Degraded",
            "message": message,
            "observedGeneration": int(meta.get("generation") or 0),
            "conditions": [
                {
                    "type": "Degraded",
                    "status": "True",
                    "reason": REASON,
                    "message": message,
                    "lastTransitionTime": stamp,
                }
            ],
        }
        out.append((namespace, str(meta.get("name")), status))
    return out
