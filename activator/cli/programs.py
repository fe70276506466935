"""Verbs that are programs of their own, reached by name: `dormant bench` (loadtests),
`dormant operator` (deploy), `dormant exec` (the pod's supervisor)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

from activator.cli.common import EXIT_CONFIG, fail

if TYPE_CHECKING:
    pass

__all__ = ["cmd_bench", "cmd_exec", "cmd_operator"]


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
        return fail(f"exec: {exc}", EXIT_CONFIG)
    return run(options)
