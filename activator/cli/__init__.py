"""The ``dormant`` command line: ``main`` parses the verb and runs its handler, named by import
string in ``activator.cli.parser`` and imported only then (``dormant status`` never loads the
web stack, ``dormant exec`` never loads the activator).

Three verbs take the rest of the command line as it is: ``bench`` (``loadtests.bench``'s
options), ``operator`` (``deploy.operator``'s) and ``exec`` (everything after ``--`` is the
served command).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from activator.cli.common import EXIT_CONFIG, fail
from activator.config.settings import ConfigError

__all__ = ["main", "resolve"]

PASSTHROUGH = {
    "bench": ("activator.cli.programs:cmd_bench", "bench_args"),
    "operator": ("activator.cli.programs:cmd_operator", "operator_args"),
}
"""Verbs whose arguments belong to another program: handler, and the namespace key for them."""


def resolve(target: str) -> Callable[[argparse.Namespace], int]:
    """The handler ``module:function`` names."""
    module, _, function = target.partition(":")
    handler: Callable[[argparse.Namespace], int] = getattr(
        importlib.import_module(module), function
    )
    return handler


def main(argv: Sequence[str] | None = None) -> int:
    from activator.cli.parser import build_parser

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] and argv[0] in PASSTHROUGH:
        target, key = PASSTHROUGH[argv[0]]
        return resolve(target)(argparse.Namespace(**{key: argv[1:]}))
    cmd: list[str] = []
    if argv[:1] == ["exec"] and "--" in argv:  # everything after `--` is the served command
        at = argv.index("--")
        argv, cmd = argv[:at], argv[at + 1 :]
    args = build_parser().parse_args(argv)
    if args.command == "exec":
        args.cmd = cmd
    try:
        return resolve(args.func)(args)
    except ConfigError as exc:
        return fail(f"bad config: {exc}", EXIT_CONFIG)
    except RuntimeError as exc:
        return fail(str(exc))
    except KeyboardInterrupt:
        return 130
