"""The ``dormant`` command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from activator.config.settings import ConfigError, Settings, load_settings

if TYPE_CHECKING:
    from snapshots import Entry

__all__ = ["main"]

EXIT_CONFIG = 2
EXIT_FAILED = 1


def _fail(message: str, code: int = EXIT_FAILED) -> int:
    print(f"dormant: {message}", file=sys.stderr)
    return code


def _load(args: argparse.Namespace) -> Settings:
    return load_settings(
        getattr(args, "config", None),
        listen=getattr(args, "listen", None),
        state_dir=getattr(args, "state_dir", None),
    )


def cmd_up(args: argparse.Namespace) -> int:
    import uvicorn

    from activator.app import create_admin_app, create_app
    from activator.check import check_state_dir, detect_engine
    from activator.limits import BoundedHttpToolsProtocol

    settings = _load(args)
    # Config errors that need the filesystem, before anything starts (exit 2, one line):
    check_state_dir(settings.state_path)
    settings.check_token_files()
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)-7s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per proxied request is noise
    try:
        token = settings.resolved_admin_token()
    except OSError as exc:
        raise ConfigError(f"admin_token_file: cannot read ({exc})") from exc
    setup = detect_engine(settings)
    print(
        f"dormant: engine {setup.choice.name} — {setup.choice.reason}", file=sys.stderr, flush=True
    )
    app = create_app(settings, setup)
    _print_addresses(settings, token)
    # The upstream's own Server and Date headers pass through unchanged.
    options: dict[str, Any] = {
        # bounded request heads (431 over 64 KiB, 408 after 30 s): activator/limits.py
        "http": BoundedHttpToolsProtocol,
        "log_level": "warning",
        "access_log": False,
        "server_header": False,
        "date_header": False,
        "timeout_graceful_shutdown": 30,
        # the client address is the socket's: never X-Forwarded-For
        "proxy_headers": False,
    }
    main_server = uvicorn.Server(
        uvicorn.Config(app, host=settings.host, port=settings.port, **options)
    )
    if not settings.admin_listen:
        main_server.run()
        return 0
    host, port = settings.admin_listen.rsplit(":", 1)
    admin_app = create_admin_app(app)
    admin_server = uvicorn.Server(
        uvicorn.Config(admin_app, host=host.strip("[]"), port=int(port), lifespan="off", **options)
    )

    async def serve_both() -> None:
        # One loop; uvicorn's signal handlers (on the main server) stop both.
        admin = asyncio.ensure_future(admin_server._serve())
        try:
            await main_server.serve()
        finally:
            admin_server.should_exit = True
            await admin

    asyncio.run(serve_both())
    return 0


def _print_addresses(settings: Settings, token: str) -> None:
    """Where Dormant serves, and where its admin API is (one line each, on stderr)."""
    access = "token required" if token else "no admin token: open to anyone who can reach it"
    serving = f"dormant: serving on http://{settings.listen}"
    if settings.admin_listen:
        lines = [serving, f"dormant: admin API on http://{settings.admin_listen} ({access})"]
    else:
        lines = [f"{serving} (admin API on the same address, {access})"]
    for line in lines:
        print(line, file=sys.stderr, flush=True)


def _admin(args: argparse.Namespace, method: str, path: str) -> dict[str, Any]:
    token = os.environ.get("DORMANT_ADMIN_TOKEN", "")
    if args.token_file:
        with open(args.token_file) as f:
            token = f.read().strip()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    url = args.url.rstrip("/") + path
    try:
        response = httpx.request(
            method, url, headers=headers, timeout=args.timeout, trust_env=False
        )
    except httpx.HTTPError as exc:
        raise RuntimeError(
            f"cannot reach the activator at {args.url} ({exc}); is `dormant up` running?"
        ) from exc
    try:
        data = response.json()
    except ValueError:
        data = {"error": {"message": response.text[:300]}}
    if response.status_code >= 400:
        message = data.get("error", {}).get("message", response.reason_phrase)
        if response.status_code == 401:
            message += (
                "; pass the admin token with --token-file FILE or $DORMANT_ADMIN_TOKEN"
                if not token
                else "; the token given (--token-file or $DORMANT_ADMIN_TOKEN) is not this "
                "activator's admin token"
            )
        raise RuntimeError(f"{method} {path}: {response.status_code}: {message}")
    result: dict[str, Any] = data
    return result


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def _describe(w: dict[str, Any], pooled: bool = False) -> list[str]:
    wake = w.get("last_wake") or {}
    snap = w.get("snapshot") or {}
    why = w.get("last_error") if w["state"] == "failed" else w.get("reason", "")
    if w["state"] != "failed" and w.get("last_error"):
        # it recovered (a restore that failed and fell back to a cold boot, a checkpoint
        # that failed and kept serving): still say what went wrong, and when
        at = w.get("last_error_at")
        when = time.strftime(" at %H:%M:%S", time.localtime(at)) if at else ""
        why = f"{why}; last error{when}: {w['last_error']}" if why else w["last_error"]
    memory = w.get("memory") or {}
    pool_columns = [
        w.get("tier") or "-",
        _size(
            memory.get("held_bytes") or memory.get("measured_bytes") or memory.get("declared_bytes")
        ),
    ]
    return [
        w["name"],
        w["state"],
        *(pool_columns if pooled else []),
        ",".join(w["models"]),
        str(w.get("pid") or "-"),
        str(w["in_flight"]),
        str(w["waiting"]),
        f"{wake['path']} {wake['seconds']:.2f}s" if wake else "-",
        f"{snap['bytes'] / 1e6:.0f} MB" if snap else "-",
        (why or "")[:200],
    ]


def cmd_status(args: argparse.Namespace) -> int:
    data = _admin(args, "GET", "/-/workloads")
    print(json.dumps(data, indent=2) if args.json else status_text(data))
    return 0


def status_text(data: dict[str, Any]) -> str:
    """The `dormant status` table for an activator's ``GET /-/workloads`` answer."""
    header = [
        "NAME",
        "STATE",
        "MODELS",
        "PID",
        "INFLIGHT",
        "QUEUED",
        "LAST WAKE",
        "SNAPSHOT",
        "WHY",
    ]
    lines = [f"engine: {data['engine']['name']} ({data['engine']['reason']})"]
    pool = data.get("pool")
    if pool:
        used, budget = _size(pool["used_bytes"]), _size(pool["budget_bytes"])
        lines.append(f"pool: {pool['kind']}, {used} of {budget} in use")
        header[1:2] = ["STATE", "TIER", "MEMORY"]
    rows = [_describe(w, pooled=bool(pool)) for w in data["workloads"]]
    return "\n".join([*lines, _table([header, *rows])])


def _size(value: int | None) -> str:
    from warmpool.units import format_size

    return format_size(value) if value else "-"


def cmd_lifecycle(args: argparse.Namespace) -> int:
    data = _admin(args, "POST", f"/-/workloads/{args.name}/{args.command}")
    print(_table([["NAME", "STATE", "WHY"], [data["name"], data["state"], data.get("reason", "")]]))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """The machine (informational: e.g. no GPU is fine), then whether the config's
    workloads can start here; exit 1 when one cannot."""
    from activator.check import machine_report, state_dir_finding, workload_findings

    settings = _load(args)
    findings, _setup = machine_report(settings)
    findings.append(state_dir_finding(settings.state_path))
    workloads = workload_findings(settings)
    width = max(15, *(len(f.item) for f in [*findings, *workloads]))
    for f in [*findings, *workloads]:
        print(f"{'ok ' if f.ok else 'NO '} {f.item:<{width}} {f.detail}")
    return 0 if all(f.ok for f in workloads) else EXIT_FAILED


def cmd_config(args: argparse.Namespace) -> int:
    """Print the settings definition: a JSON Schema, a workload's CRD schema, or docs."""
    from activator.config.schema import config_reference, config_schema, workload_crd_schema

    if args.what == "schema":
        text = json.dumps(workload_crd_schema() if args.crd else config_schema(), indent=2) + "\n"
    else:
        text = config_reference()
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:  # e.g. `| head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def _find_store(args: argparse.Namespace) -> tuple[Path, str]:
    """The snapshot store to work on and why that one: --state-dir or -c when given, else
    the one the activator at --url reports, else the default state directory."""
    if args.state_dir or args.config:
        why = "from --state-dir" if args.state_dir else f"from the state_dir of {args.config}"
        return _load(args).state_path / "snapshots", why
    token = os.environ.get("DORMANT_ADMIN_TOKEN", "")
    if args.token_file:
        with open(args.token_file) as f:
            token = f.read().strip()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    default = "the default state dir ($DORMANT_STATE_DIR or ~/.local/state/dormant)"
    try:
        response = httpx.get(
            args.url.rstrip("/") + "/-/snapshots",
            headers=headers,
            timeout=args.timeout,
            trust_env=False,
        )
    except httpx.HTTPError:
        return _load(args).state_path / "snapshots", f"no activator at {args.url}; {default}"
    if response.status_code == 401:
        how = "is not this activator's" if token else "is needed: --token-file FILE or"
        raise RuntimeError(
            f"the activator at {args.url} answered 401: the admin token {how} "
            "$DORMANT_ADMIN_TOKEN (or pass --state-dir to read a store directly)"
        )
    try:
        root = Path(response.json()["store"]) if response.status_code == 200 else None
    except (ValueError, KeyError, TypeError):
        root = None
    if root is None:
        why = f"the activator at {args.url} did not say which store it uses"
        return _load(args).state_path / "snapshots", f"{why} ({response.status_code}); {default}"
    if not root.is_dir():
        raise RuntimeError(
            f"the activator at {args.url} uses the snapshot store {root}, which is not on "
            "this machine; pass --state-dir"
        )
    return root, f"from the activator at {args.url}"


def _entry_row(e: Entry) -> list[str]:
    created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.created)) if e.created else "-"
    m = e.manifest
    return [
        e.id,
        e.workload,
        e.status,
        f"{m.engine} {m.engine_version}".strip() if m else "-",
        created,
        f"{e.bytes / 1e6:.0f} MB",
        f"{m.checkpoint_seconds:.2f}s" if m else "-",
        e.reason.replace("\n", " ")[:160],
    ]


def cmd_snapshots(args: argparse.Namespace) -> int:
    """Work on a snapshot store directly: the running activator's (asked at --url), or
    the one --state-dir / -c names. Says on stderr which store and why."""
    from snapshots import SnapshotCorrupt, SnapshotError, SnapshotStore

    root, why = _find_store(args)
    print(f"store: {root} ({why})", file=sys.stderr, flush=True)
    try:
        store = SnapshotStore(root)
        if args.action == "list":
            header = ["ID", "WORKLOAD", "STATUS", "ENGINE", "CREATED", "SIZE", "DUMP", "REASON"]
            print(_table([header, *(_entry_row(e) for e in store.entries(args.target))]))
            return 0
        if not args.target:
            raise RuntimeError(
                f"snapshots {args.action} needs a snapshot id (see `snapshots list`)"
            )
        entry = store.entry(args.target)
        if args.action == "inspect":
            if entry.status == "ok" and entry.manifest is not None:
                print(entry.manifest.to_json())
            else:
                print(json.dumps(entry.to_dict(), indent=2))
        elif args.action == "verify":
            if entry.status != "ok":
                print(f"{entry.id}: BAD: {entry.status}: {entry.reason}")
                return EXIT_FAILED
            snap = store.get(entry.id)
            try:
                store.verify(snap)
            except SnapshotCorrupt as exc:
                print(f"{snap.id}: BAD: {exc}")
                return EXIT_FAILED
            print(
                f"{snap.id}: ok ({len(snap.manifest.files)} files, "
                f"{snap.manifest.total_bytes} bytes match their {snap.manifest.digest} digests)"
            )
        elif args.action == "delete":
            if entry.status == "partial":
                raise RuntimeError(
                    f"{entry.id} is {entry.reason}: not deleting it (a running Dormant may be "
                    "writing it; the next start removes what a crash left)"
                )
            store.delete(entry)
            print(f"deleted {entry.id} ({entry.status})")
    except SnapshotError as exc:
        raise RuntimeError(str(exc)) from exc
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """TTFT warm / after wake / after cold boot: runs the load-test client `loadtests.bench`
    (a separate program: it imports nothing from Dormant)."""
    import subprocess

    env = {**os.environ, "LOADTESTS_PROG": "dormant bench"}  # its usage line names this command
    return subprocess.call([sys.executable, "-m", "loadtests.bench", *args.bench_args], env=env)


def cmd_operator(args: argparse.Namespace) -> int:
    """`dormant operator` (deploy/operator.py): deploy is the top layer, so it is reached by
    name, never imported by the activator."""
    import importlib

    operator = importlib.import_module("deploy.operator")
    code: int = operator.main(args.operator_args)
    return code


def cmd_exec(args: argparse.Namespace) -> int:
    """The pod's entrypoint supervisor (activator/supervisor/main.py)."""
    from activator.supervisor.main import run
    from activator.supervisor.options import ExecOptions, UsageError

    try:
        options = ExecOptions.parse(args, getattr(args, "cmd", []))
    except UsageError as exc:
        return _fail(f"exec: {exc}", EXIT_CONFIG)
    return run(options)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dormant",
        description="Scale-to-zero for model and notebook servers: hibernate idle servers with "
        "CRIU, restore them on the next request.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="start the activator")
    up.add_argument("-c", "--config", help="YAML config (default: the embedded default config)")
    up.add_argument("--listen", help="HOST:PORT (default from config, 127.0.0.1:8080)")
    up.add_argument(
        "--state-dir",
        help="snapshots and logs (default $DORMANT_STATE_DIR or ~/.local/state/dormant)",
    )
    up.set_defaults(func=cmd_up)

    def admin_args(p: argparse.ArgumentParser, timeout: float, waits_for: str) -> None:
        p.add_argument(
            "--url",
            default=os.environ.get("DORMANT_URL", "http://127.0.0.1:8080"),
            help="activator URL (default $DORMANT_URL or http://127.0.0.1:8080)",
        )
        p.add_argument(
            "--token-file", help="file holding the admin token (default: $DORMANT_ADMIN_TOKEN)"
        )
        p.add_argument(
            "--timeout",
            type=float,
            default=timeout,
            help=f"seconds to wait for {waits_for} (default {timeout:g})",
        )

    status = sub.add_parser("status", help="a table of workloads and their states")
    status.add_argument("--json", action="store_true", help="print the raw JSON")
    admin_args(status, 10.0, "the answer")
    status.set_defaults(func=cmd_status)
    for name, text in (
        ("hibernate", "checkpoint a workload now and free its resources"),
        ("wake", "restore or start a workload now"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("name", help="workload name")
        # the call returns when the operation is done: a checkpoint or restore can take minutes
        admin_args(p, 600.0, f"the {name} to finish: the answer comes when it is done")
        p.set_defaults(func=cmd_lifecycle)

    check = sub.add_parser(
        "check",
        help="what this machine supports, which engine will be used, and whether the config's "
        "workloads can start here (exit 1 when one cannot)",
    )
    check.add_argument("-c", "--config", help="YAML config (default: the embedded default)")
    check.add_argument("--state-dir", help="state directory (default from config)")
    check.set_defaults(func=cmd_check)

    config = sub.add_parser(
        "config", help="print the config file's JSON Schema or its reference (docs/config.md)"
    )
    config.add_argument(
        "what",
        choices=["schema", "docs"],
        help="schema: JSON Schema for editors (YAML language servers); docs: Markdown reference",
    )
    config.add_argument(
        "--crd",
        action="store_true",
        help="schema: one workload as a Kubernetes structural OpenAPI v3 schema instead",
    )
    config.set_defaults(func=cmd_config)

    snaps = sub.add_parser(
        "snapshots",
        help="list, inspect, verify or delete snapshots",
        description="Work on the snapshot store of the activator at --url (it says which "
        "store it uses); with --state-dir or -c, or when no activator answers, on that "
        "config's (or the default) state directory. Prints the store it reads on stderr.",
    )
    snaps.add_argument("action", choices=["list", "inspect", "verify", "delete"])
    snaps.add_argument("target", nargs="?", help="snapshot id (list: a workload name to filter)")
    snaps.add_argument("-c", "--config", help="YAML config whose state_dir to use")
    snaps.add_argument("--state-dir", help="state directory to use (its snapshots/ subdirectory)")
    snaps.add_argument(
        "--url",
        default=os.environ.get("DORMANT_URL", "http://127.0.0.1:8080"),
        help="the activator to ask which store it uses "
        "(default $DORMANT_URL or http://127.0.0.1:8080)",
    )
    snaps.add_argument(
        "--token-file", help="file holding the admin token (default: $DORMANT_ADMIN_TOKEN)"
    )
    snaps.add_argument(
        "--timeout",
        type=float,
        default=5.0,
        help="seconds to wait for the activator's answer (default 5)",
    )
    snaps.set_defaults(func=cmd_snapshots)

    bench = sub.add_parser(
        "bench", help="TTFT warm / after wake / after cold boot, side by side", add_help=False
    )
    bench.add_argument(
        "bench_args",
        nargs=argparse.REMAINDER,
        help="passed to `python -m loadtests.bench` (try --help)",
    )
    bench.set_defaults(func=cmd_bench)

    operator = sub.add_parser(
        "operator",
        help="reconcile ScaleToZeroPolicies (kopf): Services, Endpoints, status, Events",
        add_help=False,
    )
    operator.add_argument(
        "operator_args", nargs=argparse.REMAINDER, help="see `dormant operator --help`"
    )
    operator.set_defaults(func=cmd_operator)

    from activator.supervisor.options import BIND_NOTE, EXIT_NOTE, add_exec_arguments

    exec_ = sub.add_parser(
        "exec",
        help="a pod's entrypoint: run CMD, restore it from the newest snapshot, checkpoint it "
        "on SIGTERM",
        usage="dormant exec [OPTIONS] -- CMD [ARG ...]",
        description="Run CMD in its own PID namespace: restore it from the newest verified "
        "snapshot in --snapshots if there is one, else boot it; answer the pod's probes and "
        "an authenticated control API (status, checkpoint, restore, suspend, resume, "
        "activity) on --control; on SIGTERM, wait for the served port to be quiet, "
        "checkpoint and exit 0 once the snapshot is committed. " + BIND_NOTE,
        epilog=EXIT_NOTE + " See docs/exec.md.",
    )
    add_exec_arguments(exec_)
    exec_.set_defaults(func=cmd_exec)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:  # everything after `bench` belongs to loadtests.bench
        return cmd_bench(argparse.Namespace(bench_args=argv[1:]))
    if argv[:1] == ["operator"]:  # its own options (deploy/operator.py)
        return cmd_operator(argparse.Namespace(operator_args=argv[1:]))
    cmd: list[str] = []
    if argv[:1] == ["exec"] and "--" in argv:  # everything after `--` is the served command
        at = argv.index("--")
        argv, cmd = argv[:at], argv[at + 1 :]
    args = build_parser().parse_args(argv)
    if args.command == "exec":
        args.cmd = cmd
    try:
        code: int = args.func(args)
        return code
    except ConfigError as exc:
        return _fail(f"bad config: {exc}", EXIT_CONFIG)
    except RuntimeError as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
