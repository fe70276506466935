"""``dormant operator``: reconciles ScaleToZeroPolicies with kopf.

    dormant operator [--namespace NS] [--activator URL] [--admin-token-file FILE]
                     [--kubeconfig FILE] [--interval SECONDS]

kopf runs in this process's main thread on its own event loop (never the activator's: kopf
cancels the tasks of the loop it runs in), ``--standalone`` (one replica, no peering) and
namespaced. Its handlers are thin: each one calls ``Reconciler.reconcile(namespace, name)``
(``deploy.reconcile``), which reads what the plan needs, asks the pure ``deploy.plan.plan``
what the cluster should look like, and applies that: creates the Service when it is missing,
writes the Endpoints, patches the status subresource, posts Events. Triggers: a policy is
created, changed or found at start; a timer per policy (``--interval``, the status refresh);
any event of a pod that a policy's target selects (readiness, deletion, eviction: the
Endpoints follow at once); any event of a policy's Service (the activator's route intent).

A policy that cannot be served never stops the operator: its status says Degraded and why.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from activator.config.secrets import read_token_file
from deploy.reconcile import OperatorSettings, Reconciler
from deploy.release import FINALIZER
from warmpool.kube.api import KubeApi, KubeError, connect, default_namespace
from warmpool.kube.resource import GROUP, PLURAL, VERSION

__all__ = ["OperatorSettings", "Reconciler", "build_registry", "main", "run"]

log = logging.getLogger("dormant.operator")


def build_registry(reconciler: Reconciler, settings: OperatorSettings) -> Any:
    """kopf's registry with the operator's thin handlers (see the module docstring)."""
    import kopf

    registry = kopf.OperatorRegistry()
    policy = (GROUP, VERSION, PLURAL)

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        # Progress and the last handled spec in annotations under dormant.dev (status is ours).
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP)
        settings.persistence.finalizer = FINALIZER
        settings.posting.level = logging.WARNING  # kopf's own Events: only its problems
        settings.scanning.disabled = True  # fixed resources and namespace: no CRD watch
        settings.watching.server_timeout = 60
        settings.networking.request_timeout = 30

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> Any:
        return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)

    @kopf.on.resume(*policy, registry=registry)
    @kopf.on.create(*policy, registry=registry)
    @kopf.on.update(*policy, registry=registry)
    async def changed(*, namespace: str | None, name: str, **_: Any) -> None:
        await reconcile(namespace, name)

    # Not optional: kopf puts the finalizer (settings.persistence.finalizer) on every policy,
    # so a deleted one waits until its target is given back (deploy/release.py).
    @kopf.on.delete(*policy, registry=registry)
    async def deleted(*, namespace: str | None, name: str, body: Any, **_: Any) -> None:
        await reconciler.release(namespace or settings.namespace, name, dict(body))

    @kopf.timer(*policy, interval=settings.interval, registry=registry)
    async def refresh(*, namespace: str | None, name: str, **_: Any) -> None:
        await reconcile(namespace, name)

    @kopf.on.event("v1", "pods", registry=registry)
    async def pod_event(*, namespace: str | None, labels: Mapping[str, str], **_: Any) -> None:
        for name in reconciler.policies_for_pod(namespace or "", labels):
            await reconcile(namespace, name)

    @kopf.on.event("v1", "services", registry=registry)
    async def service_event(*, namespace: str | None, name: str, **_: Any) -> None:
        for policy_name in reconciler.policies_for_service(namespace or "", name):
            await reconcile(namespace, policy_name)

    async def reconcile(namespace: str | None, name: str) -> None:
        await reconciler.reconcile(namespace or settings.namespace, name)

    return registry


def run(settings: OperatorSettings) -> int:
    """Run kopf (blocking, in this thread, on its own loop) until SIGTERM or SIGINT."""
    import kopf

    if settings.kubeconfig:
        os.environ["KUBECONFIG"] = settings.kubeconfig  # kopf's login reads it
    try:
        api = KubeApi(connect(settings.kubeconfig))
    except KubeError as exc:
        print(f"dormant: operator: {exc}", file=sys.stderr)
        return 2

    async def operate() -> None:
        async with httpx.AsyncClient(timeout=10.0, trust_env=False) as client:
            reconciler = Reconciler(settings, api, client)
            registry = build_registry(reconciler, settings)
            await kopf.operator(
                registry=registry,
                standalone=True,
                clusterwide=False,
                namespaces=[settings.namespace],
            )

    log.info("reconciling the ScaleToZeroPolicies of namespace %s", settings.namespace)
    try:
        asyncio.run(operate())
    except KeyboardInterrupt:
        pass
    finally:
        api.close()
    return 0


def _read_token(path: str | None) -> str:
    if not path:
        return os.environ.get("DORMANT_ADMIN_TOKEN", "").strip()
    return read_token_file(path, "--admin-token-file")


def main(argv: Sequence[str] | None = None) -> int:
    """``dormant operator``'s command line."""
    parser = argparse.ArgumentParser(
        prog="dormant operator",
        description="Reconcile ScaleToZeroPolicies with kopf: each policy's selector-less "
        "Service and its Endpoints (the ready pods while the activator routes to them, else "
        "the activator), its status from the activator, and Kubernetes Events. "
        "See docs/kubernetes.md.",
    )
    parser.add_argument(
        "--namespace",
        default="",
        help="namespace of the policies (default $POD_NAMESPACE, else the service account's)",
    )
    parser.add_argument(
        "--activator",
        default=os.environ.get("DORMANT_ACTIVATOR_URL", ""),
        help="the activator's admin URL, e.g. http://dormant-activator.dormant:9090 "
        "(default $DORMANT_ACTIVATOR_URL)",
    )
    parser.add_argument(
        "--admin-token-file", help="file holding the activator's admin token ($DORMANT_ADMIN_TOKEN)"
    )
    parser.add_argument(
        "--kubeconfig", default="", help="a kubeconfig (default: in-cluster, then $KUBECONFIG)"
    )
    parser.add_argument(
        "--interval", type=float, default=5.0, help="seconds between status refreshes (5)"
    )
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    args = parser.parse_args(list(argv) if argv is not None else None)
    if args.interval <= 0:
        parser.error("--interval must be > 0")
    try:
        token = _read_token(args.admin_token_file)
    except (OSError, ValueError) as exc:
        print(f"dormant: operator: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)-7s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    settings = OperatorSettings(
        namespace=default_namespace(args.namespace),
        activator=args.activator,
        admin_token=token,
        kubeconfig=args.kubeconfig,
        interval=args.interval,
    )
    return run(settings)


if __name__ == "__main__":
    sys.exit(main())
