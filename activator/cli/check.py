"""`dormant check` (what this machine supports, whether a config's workloads can start here) and
`dormant config` (the config file's schema and reference)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING

from activator.cli.common import EXIT_FAILED, load

if TYPE_CHECKING:
    pass

__all__ = ["cmd_check", "cmd_config"]


def cmd_check(args: argparse.Namespace) -> int:
    """The machine (informational: e.g. no GPU is fine), then whether the config's
    workloads can start here; exit 1 when one cannot."""
    from activator.check import (
        listen_findings,
        machine_report,
        state_dir_finding,
        workload_findings,
    )

    settings = load(args)
    findings, _setup = machine_report(settings)
    findings.append(state_dir_finding(settings.state_path))
    listens = listen_findings(settings)
    workloads = workload_findings(settings)
    shown = [*findings, *listens, *workloads]
    width = max(15, *(len(f.item) for f in shown))
    for f in shown:
        mark = "NO " if not f.ok else "!! " if f.warning else "ok "
        print(f"{mark} {f.item:<{width}} {f.detail}")
    return 0 if all(f.ok for f in [*listens, *workloads]) else EXIT_FAILED


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
