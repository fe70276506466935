"""Where a `kube` test's pods run: the real node (tests/kube/realnode.py) where one can start,
else the fake node (tests/kube/kubelet.py). The `pod_host` fixture picks; a test written
against this runs on either, and `kind` says which.

What differs between the two is here and nowhere else: the API client and namespace (the real
node has its own control plane), how a pod's output is read, and the volume that keeps state
across pods (a host directory on the real node; on the fake node a claim, the one volume kind
it shares between pods). On the fake node the image, securityContext and
shareProcessNamespace are ignored: its pods are local processes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .rest import Rest

__all__ = ["PodHost"]


@dataclass(frozen=True)
class PodHost:
    kind: str  # "real" or "fake"
    kube: Rest
    namespace: str
    #: Everything the pod's single container printed, by pod name.
    log: Callable[[str], str]
    #: The `volumes` entry (less its name) that keeps state across this namespace's pods.
    state_volume: dict[str, Any]
    #: Dormant's image as the node knows it (the fake node ignores images).
    image: str
    #: Why the real node is not used ("" when it is).
    why_fake: str = ""
