"""The `dormant` command line's verbs and options. Each verb names its handler by import
string (``module:function``), imported only when that verb runs."""

from __future__ import annotations

import argparse
import os

__all__ = ["build_parser"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dormant",
        description="Scale-to-zero for model and notebook servers: hibernate idle servers with "
        "CRIU, restore them on the next request.",
    )
    parser.add_argument("--version", action="version", version=f"dormant {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser(
        "up",
        help="start the activator",
        description="Start the activator: serve the config's workloads on its listen address "
        "(the OpenAI routes, the pass-through routes and the admin API under /-/), boot each "
        "on its first request, hibernate it when idle and restore it on the next. Stops on "
        "SIGTERM or Ctrl-C (see on_shutdown). Without -c: the embedded default config, one "
        "reference model on 127.0.0.1:8080.",
    )
    up.add_argument("-c", "--config", help="YAML config (default: the embedded default config)")
    up.add_argument("--listen", help="HOST:PORT (default from config, 127.0.0.1:8080)")
    up.add_argument(
        "--state-dir",
        help="snapshots and logs (default $DORMANT_STATE_DIR or ~/.local/state/dormant)",
    )
    up.set_defaults(func="activator.cli.up:cmd_up")

    def admin_args(p: argparse.ArgumentParser, timeout: float, waits_for: str) -> None:
        p.add_argument(
            "-c",
            "--config",
            help="talk to the activator this YAML config starts (its admin_listen or listen, "
            "its admin token)",
        )
        p.add_argument(
            "--url",
            help="activator URL (default: -c's address, else $DORMANT_URL, else "
            "http://127.0.0.1:8080)",
        )
        p.add_argument(
            "--token-file",
            help="file holding the admin token (default: $DORMANT_ADMIN_TOKEN, else -c's token)",
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
    status.set_defaults(func="activator.cli.status:cmd_status")
    for name, text in (
        ("hibernate", "checkpoint a workload now and free its resources"),
        ("wake", "restore or start a workload now"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("name", help="workload name")
        # the call returns when the operation is done: a checkpoint or restore can take minutes
        admin_args(p, 600.0, f"the {name} to finish: the answer comes when it is done")
        p.set_defaults(func="activator.cli.status:cmd_lifecycle")

    check = sub.add_parser(
        "check",
        help="what this machine supports, which engine will be used, and whether the config's "
        "workloads can start here (exit 1 when one cannot)",
    )
    check.add_argument("-c", "--config", help="YAML config (default: the embedded default)")
    check.add_argument("--state-dir", help="state directory (default from config)")
    check.set_defaults(func="activator.cli.check:cmd_check")

    completion = sub.add_parser(
        "completion",
        help="print a shell completion script",
        description="Print a completion script for bash (zsh: run `autoload -U +X bashcompinit "
        "&& bashcompinit` first). Install: `dormant completion bash > "
        '/etc/bash_completion.d/dormant`, or `eval "$(dormant completion bash)"` in ~/.bashrc.',
    )
    completion.add_argument("shell", choices=["bash", "zsh"], help="the shell")
    completion.set_defaults(func="activator.cli.completion:cmd_completion")

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
    config.set_defaults(func="activator.cli.check:cmd_config")

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
    snaps.set_defaults(func="activator.cli.snapshots:cmd_snapshots")

    bench = sub.add_parser(
        "bench", help="TTFT warm / after wake / after cold boot, side by side", add_help=False
    )
    bench.add_argument(
        "bench_args",
        nargs=argparse.REMAINDER,
        help="passed to `python -m loadtests.bench` (try --help)",
    )
    bench.set_defaults(func="activator.cli.programs:cmd_bench")

    operator = sub.add_parser(
        "operator",
        help="reconcile ScaleToZeroPolicies (kopf): Services, Endpoints, status, Events",
        add_help=False,
    )
    operator.add_argument(
        "operator_args", nargs=argparse.REMAINDER, help="see `dormant operator --help`"
    )
    operator.set_defaults(func="activator.cli.programs:cmd_operator")

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
    exec_.set_defaults(func="activator.cli.programs:cmd_exec")
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("dormant")
    except PackageNotFoundError:
        return "unknown (not installed)"
