"""``dormant operator``: reconciles ScaleToZeroPolicies with kopf.

    dormant operator [--namespace NS] [--activator URL] [--admin-token-file FILE]
                     [--kubeconfig FILE] [--interval SECONDS] [--identity NAME]
                     [--lease-duration SECONDS] [--health-listen HOST:PORT]

Several replicas may run: they elect a leader with a Lease (``deploy.leader``); the others
stand by and take over within ``--lease-duration`` of its end (at once after a clean
shutdown). A leader that cannot renew its Lease stops reconciling and exits 1 (its container
restarts and stands by). ``--health-listen`` serves /healthz: kopf's liveness endpoint while
leading, a plain 200 while standing by.

kopf runs in this process's main thread on its own event loop (never the activator's: kopf
cancels the tasks of the loop it runs in), standalone (the Lease, not kopf's peering, keeps
one replica active) and namespaced. Its handlers are thin: each one calls
``Reconciler.reconcile(namespace, name)`` (``deploy.reconcile``), which reads what the plan
needs, asks the pure ``deploy.plan.plan`` what the cluster should look like, and applies
that: creates the Service when it is missing, writes the Endpoints, patches the status
subresource, posts Events. Triggers: a policy is created, changed or found at start; a timer
per policy (``--interval``, the status refresh); any event of a pod that a policy's target
selects (readiness, deletion, eviction: the Endpoints follow at once); any event of a
policy's Service (the activator's route intent).

A policy that cannot be served never stops the operator: its status says Degraded and why.
A deleted policy gives its target back first (the ``dormant.dev/release`` finalizer:
``deploy.release``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from activator.config.secrets import read_token_file
from deploy.leader import ElectionSettings, Elector
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


async def _standby_health(listen: str) -> asyncio.Server:
    """/healthz (any path) answered 200 while this replica stands by: it is alive, and it
    is ready to take over (kopf's own endpoint replaces this one once it leads)."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
            body = b'{"standby": true}'
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
            )
            await writer.drain()
        writer.close()

    host, _, port = listen.rpartition(":")
    return await asyncio.start_server(answer, host or "0.0.0.0", int(port), reuse_address=True)


async def _operate(settings: OperatorSettings, api: KubeApi) -> int:
    """Stand by until this replica holds the Lease, then run kopf until SIGTERM (0) or until
    the Lease is lost (1)."""
    import kopf
    from kopf._core.engines.peering import Identity  # kopf.operator's type; not re-exported

    duration = settings.lease_duration
    election = ElectionSettings(
        identity=settings.identity, duration=duration, renew=duration / 3, retry=duration / 6
    )
    elector = Elector(KubeApi(api.client, timeout=election.renew), settings.namespace, election)
    standby = await _standby_health(settings.health_listen) if settings.health_listen else None
    loop = asyncio.get_running_loop()
    waiting = asyncio.create_task(elector.acquire())
    for signum in (signal.SIGTERM, signal.SIGINT):  # kopf installs its own once it runs
        loop.add_signal_handler(signum, waiting.cancel)
    try:
        await waiting
    except asyncio.CancelledError:
        log.info("stopped while standing by")
        await elector.release()  # in case the Lease was won just as the signal came
        return 0
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        if standby is not None:
            standby.close()
            await standby.wait_closed()
    liveness = f"http://{settings.health_listen}/healthz" if settings.health_listen else None
    async with httpx.AsyncClient(timeout=10.0, trust_env=False) as client:
        reconciler = Reconciler(settings, api, client)
        registry = build_registry(reconciler, settings)
        stop = asyncio.Event()
        operator = asyncio.create_task(
            kopf.operator(
                registry=registry,
                standalone=True,
                # Our own name for this replica: kopf would otherwise ask the passwd database
                # for the user's name, which an image without an entry for the pod's uid lacks.
                identity=Identity(settings.identity),
                clusterwide=False,
                namespaces=[settings.namespace],
                liveness_endpoint=liveness,
                stop_flag=stop,
            )
        )
        holding = asyncio.create_task(elector.hold())
        watching = asyncio.create_task(_mark_unserved(reconciler, settings.interval * 6))
        done, _ = await asyncio.wait({operator, holding}, return_when=asyncio.FIRST_COMPLETED)
        stop.set()
        holding.cancel()
        watching.cancel()
        await asyncio.wait({operator}, timeout=30)
        if holding in done:  # lost the Lease: another replica may lead already
            return 1
        await elector.release()
        if operator.done() and not operator.cancelled() and operator.exception() is not None:
            raise operator.exception()  # type: ignore[misc]
        return 0


async def _mark_unserved(reconciler: Reconciler, every: float) -> None:
    """While leading: every ``every`` s, the policies of namespaces no install serves get a
    status saying so (``deploy.unserved``). Without the cluster-wide grant, one log line."""
    while True:
        try:
            await reconciler.mark_unserved(grace=every)
        except KubeError as exc:
            if exc.status == 403:
                log.warning(
                    "cannot list policies in other namespaces (%s): a policy there that no "
                    "install serves gets no status saying so",
                    exc,
                )
                return
            log.warning("listing the policies of other namespaces: %s", exc)
        await asyncio.sleep(every)


def run(settings: OperatorSettings) -> int:
    """Run (blocking, in this thread, on its own loop) until SIGTERM or SIGINT."""
    if settings.kubeconfig:
        os.environ["KUBECONFIG"] = settings.kubeconfig  # kopf's login reads it
    try:
        api = KubeApi(connect(settings.kubeconfig))
    except KubeError as exc:
        print(f"dormant: operator: {exc}", file=sys.stderr)
        return 2
    log.info(
        "reconciling the ScaleToZeroPolicies of namespace %s once leading (as %s)",
        settings.namespace,
        settings.identity,
    )
    try:
        return asyncio.run(_operate(settings, api))
    except KeyboardInterrupt:
        return 0
    finally:
        api.close()


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
        help="the activator's admin URL, e.g. http://dormant-activator.dormant-system:9090 "
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
        "--identity",
        default=os.environ.get("POD_NAME", ""),
        help="this replica's name in the leader-election Lease (default $POD_NAME, else "
        "HOSTNAME-PID)",
    )
    parser.add_argument(
        "--lease-duration",
        type=float,
        default=15.0,
        help="seconds a leader's Lease lasts without renewal: a replica standing by takes "
        "over within this after the leader's end (15; at once after a clean shutdown)",
    )
    parser.add_argument(
        "--health-listen",
        default="",
        help="HOST:PORT serving /healthz for the pod's probes (default: none)",
    )
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    args = parser.parse_args(list(argv) if argv is not None else None)
    if args.interval <= 0:
        parser.error("--interval must be > 0")
    if args.lease_duration < 3:
        parser.error("--lease-duration must be >= 3")
    if args.health_listen and not args.health_listen.rpartition(":")[2].isdigit():
        parser.error("--health-listen must be HOST:PORT")
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
        identity=args.identity or f"{socket.gethostname()}-{os.getpid()}",
        lease_duration=args.lease_duration,
        health_listen=args.health_listen,
    )
    return run(settings)


if __name__ == "__main__":
    sys.exit(main())
