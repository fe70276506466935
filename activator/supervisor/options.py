"""``dormant exec``'s command line: its options, validated once into ``ExecOptions``."""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from activator.config.errors import ConfigError
from activator.config.secrets import read_token_file
from activator.config.types import REJECTED, Count, Duration, Timeout
from activator.supervisor.lifecycle import SupervisorSettings
from warmpool import InstanceSpec
from warmpool.suspend import DEFAULT_SLEEP, DEFAULT_WAKE, Hook

__all__ = [
    "BIND_NOTE",
    "DONE_ENV",
    "EXIT_NOTE",
    "TOKEN_ENV",
    "ExecOptions",
    "UsageError",
    "add_exec_arguments",
]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")  # the snapshot store's workload names
TOKEN_ENV = "DORMANT_EXEC_TOKEN"
DONE_ENV = "DORMANT_EXEC_DONE_ON_EXIT"
DEFAULT_SNAPSHOTS = "/var/lib/dormant/snapshots"

BIND_NOTE = """\
The served command must listen on 0.0.0.0 (or ::), not on the pod IP: a restored server keeps
the listening address it was dumped with, and the pod that restores it has another IP. The
supervisor checks it on 127.0.0.1:PORT; a server that listens only elsewhere is refused at
boot with that reason."""

EXIT_NOTE = """\
exit codes: 0 terminated as asked (snapshot committed, or stopped), or, with --done-on-exit, the
command completed by itself with status 0 (its snapshots removed); 1 the checkpoint on SIGTERM
failed (the server was stopped); 2 bad usage; 3 neither a restore nor a boot worked; 4 the
served command exited by itself (with a failure, or with 0 without --done-on-exit: snapshots
kept); 5 the snapshot volume stayed locked by another instance too long. Durations are seconds
or '250ms', '30s', '5m', '1h', as in the YAML settings."""


class UsageError(ValueError):
    """Bad ``dormant exec`` arguments: the message says which and what to do."""


def add_exec_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``dormant exec`` (the command comes after ``--``)."""
    p.add_argument(
        "--snapshots",
        default=os.environ.get("DORMANT_SNAPSHOTS", DEFAULT_SNAPSHOTS),
        help=f"snapshot directory, the pod's volume (default $DORMANT_SNAPSHOTS or "
        f"{DEFAULT_SNAPSHOTS}); one instance at a time holds DIR/.lock",
    )
    p.add_argument("--name", default="server", help="snapshot name under DIR; keep it across pods")
    p.add_argument(
        "--port", type=int, default=8000, help="the port CMD serves on; {port} in CMD is it (8000)"
    )
    p.add_argument("--health-path", default="/health", help="CMD's health path (/health)")
    p.add_argument(
        "--control",
        default="0.0.0.0:8081",
        help="HOST:PORT of the probes and control API (0.0.0.0:8081)",
    )
    p.add_argument(
        "--token-file",
        help=f"bearer token of the control API (default ${TOKEN_ENV}; with none, the "
        "control API answers only on loopback)",
    )
    p.add_argument(
        "--on-term",
        choices=["checkpoint", "stop"],
        default="checkpoint",
        help="what SIGTERM does (checkpoint)",
    )
    p.add_argument(
        "--grace",
        default=25.0,
        help="seconds SIGTERM may take: the pod's terminationGracePeriodSeconds minus a "
        "margin (25)",
    )
    p.add_argument(
        "--drain-timeout",
        default=10.0,
        help="of --grace, the longest wait for the served port to be quiet (10); the "
        "checkpoint gets the rest",
    )
    p.add_argument(
        "--term-delay",
        default=5.0,
        help="on SIGTERM, first: readiness fails and CMD serves on this long while Endpoints "
        "and proxies move traffic away (5); then the quiet wait and the checkpoint",
    )
    p.add_argument("--quiet", default=2.0, help="seconds without data that count as quiet (2)")
    p.add_argument(
        "--lock-timeout",
        help="seconds to wait for DIR/.lock held by another instance (default --grace + 15)",
    )
    p.add_argument("--keep", type=int, default=1, help="usable snapshots kept (1)")
    p.add_argument("--start-timeout", default=300.0, help="seconds a boot may take (300)")
    p.add_argument("--restore-timeout", default=120.0, help="seconds a restore may take (120)")
    p.add_argument(
        "--engine",
        choices=["auto", "criu", "restart"],
        default="auto",
        help="criu: refuse to start without a working CRIU; auto: CRIU when it works (auto)",
    )
    p.add_argument(
        "--suspend",
        choices=["none", "hooks", "cuda"],
        default="none",
        help="engine of POST /suspend and /resume (none)",
    )
    p.add_argument(
        "--done-on-exit",
        action="store_true",
        default=None,
        help=f"for a Job only: CMD exiting by itself with status 0 means its work is done, so "
        f"its snapshots are removed and exec exits 0 (default ${DONE_ENV}, else off: exec exits "
        "4 and keeps them, so the pod restarts and restores)",
    )
    p.add_argument(
        "--keep-caps",
        action="store_true",
        help="CMD keeps every capability exec has, the ones for CRIU included. Default: "
        "util-linux's setpriv drops all but a container runtime's default set, IPC_LOCK and "
        "SYS_NICE before CMD starts (SYS_ADMIN too, unless CRIU is the engine: CRIU needs it "
        "in the dumped tree); exec refuses to start without setpriv",
    )
    p.add_argument("--hook-sleep", default=DEFAULT_SLEEP, help=f"hooks: ({DEFAULT_SLEEP})")
    p.add_argument("--hook-wake", default=DEFAULT_WAKE, help=f"hooks: ({DEFAULT_WAKE})")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


@dataclass(frozen=True)
class ExecOptions:
    """``dormant exec``'s validated options."""

    command: tuple[str, ...]
    snapshots: Path
    name: str
    port: int
    health_path: str
    control: tuple[str, int]
    token: str
    on_term: str
    grace: float
    drain_timeout: float
    term_delay: float
    quiet: float
    lock_timeout: float
    keep: int
    start_timeout: float
    restore_timeout: float
    engine: str
    suspend: str
    hooks: dict[str, str]
    log_level: str
    done_on_exit: bool = False
    keep_caps: bool = False
    """CMD runs with exec's capabilities; False: without those ``warmpool`` drops."""

    @classmethod
    def parse(cls, args: argparse.Namespace, command: Sequence[str]) -> ExecOptions:
        """Validate; UsageError saying what is wrong otherwise."""
        if not command:
            raise UsageError(
                "no command: put it after --, e.g. dormant exec --snapshots DIR -- "
                "vllm serve MODEL --host 0.0.0.0 --port {port}"
            )
        if not _NAME.match(args.name):
            raise UsageError(
                f"--name must be letters, digits, '.', '_' or '-' (at most 63, not starting "
                f"with a dot or dash), got {args.name!r}"
            )
        if not 0 < args.port < 65536:
            raise UsageError(
                f"--port must be 1-65535 (a fixed port: restores keep it), got {args.port}"
            )
        if not args.health_path.startswith("/"):
            raise UsageError(f"--health-path must start with '/', got {args.health_path!r}")
        host, sep, port = args.control.rpartition(":")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not host:
            raise UsageError(f"--control must be HOST:PORT, got {args.control!r}")
        if int(port) == args.port:
            raise UsageError(f"--control and --port must differ (both {args.port})")
        grace = _typed("--grace", Timeout, args.grace)
        drain_timeout = _typed("--drain-timeout", Timeout, args.drain_timeout)
        term_delay = _typed("--term-delay", Duration, args.term_delay)
        quiet = _typed("--quiet", Duration, args.quiet)
        lock_timeout = (
            grace + 15
            if args.lock_timeout is None
            else _typed("--lock-timeout", Duration, args.lock_timeout)
        )
        keep = _typed("--keep", Count, args.keep)
        start_timeout = _typed("--start-timeout", Timeout, args.start_timeout)
        restore_timeout = _typed("--restore-timeout", Timeout, args.restore_timeout)
        if drain_timeout >= grace:
            raise UsageError(
                f"--drain-timeout ({drain_timeout:g}) must be less than --grace "
                f"({grace:g}): the checkpoint gets what is left"
            )
        if term_delay + drain_timeout >= grace:
            raise UsageError(
                f"--term-delay ({term_delay:g}) plus --drain-timeout ({drain_timeout:g}) must be "
                f"less than --grace ({grace:g}): the checkpoint gets what is left"
            )
        for flag in ("hook_sleep", "hook_wake"):
            try:
                Hook.parse(getattr(args, flag))
            except ValueError as exc:
                raise UsageError(f"--{flag.replace('_', '-')}: {exc}") from exc
        return cls(
            command=tuple(command),
            snapshots=Path(args.snapshots).resolve(),
            name=args.name,
            port=args.port,
            health_path=args.health_path,
            control=(host.strip("[]"), int(port)),
            token=_token(args.token_file),
            on_term=args.on_term,
            grace=grace,
            drain_timeout=drain_timeout,
            term_delay=term_delay,
            quiet=quiet,
            lock_timeout=lock_timeout,
            keep=keep,
            start_timeout=start_timeout,
            restore_timeout=restore_timeout,
            engine=args.engine,
            suspend=args.suspend,
            hooks={"sleep": args.hook_sleep, "wake": args.hook_wake},
            log_level=args.log_level,
            done_on_exit=_done_on_exit(args.done_on_exit),
            keep_caps=args.keep_caps,
        )

    def spec(self) -> InstanceSpec:
        return InstanceSpec(
            name=self.name,
            command=self.command,
            port=self.port,
            health_path=self.health_path,
            start_timeout=self.start_timeout,
            checkpoint_timeout=self.grace - self.drain_timeout - self.term_delay,
            restore_timeout=self.restore_timeout,
            keep_snapshots=self.keep,
            suspend=self.suspend,
            hooks=self.hooks,
        )

    def settings(self) -> SupervisorSettings:
        return SupervisorSettings(
            quiet=self.quiet,
            drain_timeout=self.drain_timeout,
            grace=self.grace,
            on_term=self.on_term,
            term_delay=self.term_delay,
            restore_attempts=self.keep,
        )


def _token(path: str | None) -> str:
    if not path:
        return os.environ.get(TOKEN_ENV, "").strip()
    try:
        return read_token_file(path, "--token-file")
    except ConfigError as exc:
        raise UsageError(str(exc)) from exc


def _typed(flag: str, kind: Any, raw: object) -> Any:
    """``raw`` read as the YAML settings read a value of ``kind`` (``activator.config.types``:
    durations like '30s', finite and not negative), or UsageError with its one-line reason."""
    try:
        return TypeAdapter(kind).validate_python(raw)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        ctx = error.get("ctx") or {}
        reason = str(ctx["message"]) if error["type"] == REJECTED else error["msg"]
        raise UsageError(f"{flag}: {reason}") from None


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")


def _done_on_exit(flag: bool | None) -> bool:
    if flag:
        return True
    raw = os.environ.get(DONE_ENV, "").strip().lower()
    if raw not in _TRUE + _FALSE:
        raise UsageError(f"${DONE_ENV} must be true or false (1/0, yes/no), got {raw!r}")
    return raw in _TRUE
