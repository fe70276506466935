"""The ScaleToZeroPolicy resource's identity in the Kubernetes API: group, version, kind,
plural, and the collection path a namespace's policies live under. Defined once here; the
policy contract (``activator.config.policy``), the activator's watch and the operator read it
from this module."""

from __future__ import annotations

__all__ = ["API_VERSION", "GROUP", "KIND", "PLURAL", "VERSION", "collection_path"]

GROUP, VERSION, KIND, PLURAL = "dormant.dev", "v1alpha1", "ScaleToZeroPolicy", "scaletozeropolicies"
API_VERSION = f"{GROUP}/{VERSION}"


def collection_path(namespace: str) -> str:
    """The API path of ``namespace``'s ScaleToZeroPolicies."""
    return f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}"
