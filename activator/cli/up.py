"""`dormant up`: the activator (and its admin listener), served by uvicorn."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import resource
import sys
from types import FrameType
from typing import Any

from activator.cli.common import EXIT_CONFIG, fail, load
from activator.config.settings import ConfigError, Settings
from warmpool.process.statelock import StateLock

__all__ = ["busy_message", "cmd_up"]


def busy_message(state_dir: object, lock: StateLock) -> str:
    """The one line for a state dir another Dormant holds."""
    return (
        f"state_dir {state_dir} is in use by another Dormant ({lock.holder()}); stop that "
        "one first, or give this one another state_dir"
    )


def cmd_up(args: argparse.Namespace) -> int:
    from activator.check import check_state_dir

    settings = load(args)
    # Config errors that need the filesystem, before anything starts (exit 2, one line):
    check_state_dir(settings.state_path)
    settings.check_token_files()
    # One Dormant per state dir, held until this process ends: a second one stops here,
    # before it has touched anything of the first's (its snapshots, criu, instances).
    lock = StateLock(settings.state_path)
    try:
        if not lock.try_acquire():
            return fail(busy_message(settings.state_path, lock), EXIT_CONFIG)
    except OSError as exc:
        raise ConfigError(f"state_dir: cannot lock {lock.path} ({exc.strerror or exc})") from exc
    try:
        return _serve(settings)
    finally:
        lock.release()


def _raise_open_file_limit(want: int = 65536) -> None:
    """Every proxied request holds two sockets: the default soft limit (often 1,024) would
    refuse connections at a few hundred streams. Raise it towards the hard limit; the
    servers Dormant starts inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def _serve(settings: Settings) -> int:
    import uvicorn

    from activator.app import create_admin_app, create_app
    from activator.check import detect_engine
    from activator.limits import BoundedHttpToolsProtocol
    from activator.logformat import configure_logging

    _require_free_addresses(settings)
    configure_logging(settings.log_level, settings.log_format)
    _raise_open_file_limit()
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
        # requests held for a wake may wait wake_timeout: let them finish (bounded)
        "timeout_graceful_shutdown": max(1, round(settings.shutdown_timeout)),
        # the client address is the socket's: never X-Forwarded-For
        "proxy_headers": False,
    }
    main_server = _handing_over_server(
        uvicorn.Config(app, host=settings.host, port=settings.port, **options), app
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


def _require_free_addresses(settings: Settings) -> None:
    """A taken port is one line before anything starts, not "serving on" and a traceback."""
    from activator.check import listen_problem

    for key in ("listen", "admin_listen"):
        address = getattr(settings, key)
        problem = listen_problem(address) if address else None
        if problem:
            raise RuntimeError(
                f"{problem}: something else listens there (another `dormant up`?); stop it, or "
                f"choose another address with --listen or {key} in the config"
            )


def _print_addresses(settings: Settings, token: str) -> None:
    """Where Dormant serves, and where its admin API is (one line each, on stderr)."""
    access = "token required" if token else "no admin token: open to anyone who can reach it"
    serving = f"dormant: serving on http://{settings.listen}"
    if settings.admin_listen:
        lines = [serving, f"dormant: admin API on http://{settings.admin_listen} ({access})"]
    else:
        lines = [f"{serving} (admin API on the same address, {access})"]
    for line in [*lines, *_notebook_lines(settings)]:
        print(line, file=sys.stderr, flush=True)


def _notebook_lines(settings: Settings) -> list[str]:
    """Each notebook's address and where its token is (generated now when the config
    names no ``token_file``, so the file exists before the first visit)."""
    from activator.notebooks import ensure_token

    lines = []
    for w in settings.workloads:
        if w.kind != "jupyter":
            continue
        url = f"http://{settings.listen}{w.path_prefix}/"
        try:
            token = ensure_token(w, settings.state_path)
        except (OSError, ValueError) as exc:
            lines.append(f"dormant: notebook {w.name} at {url} (its token: {exc})")
            continue
        lines.append(
            f"dormant: notebook {w.name} at {url} — log in with the token in {token} "
            f"(or open {url}?token=$(cat {token}))"
        )
    return lines


def _handing_over_server(config: Any, app: Any) -> Any:
    """A uvicorn server whose first SIGTERM/SIGINT hands over first (below); uvicorn is imported
    here, not at the module's import (``--help`` stays fast)."""
    import uvicorn

    class _HandingOverServer(uvicorn.Server):
        """uvicorn, but the first SIGTERM/SIGINT first lets the workloads' source hand over what
        another activator can take (``app.state.hand_over``: the Leases, with runtime kubernetes)
        while this one still accepts; then the usual graceful shutdown. A second signal, or a
        source with nothing to hand over, stops at once as uvicorn does."""

        app: Any = None
        _handing_over: asyncio.Task[None] | None = None

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            hand_over = getattr(getattr(self.app, "state", None), "hand_over", None)
            if self._handing_over is not None or self.should_exit or hand_over is None:
                super().handle_exit(sig, frame)
                return
            self._captured_signals.append(sig)
            loop = asyncio.get_event_loop()

            async def then_exit() -> None:
                try:
                    await hand_over()
                except Exception as exc:  # stopping is still right
                    print(f"dormant: handing over failed: {exc}", file=sys.stderr, flush=True)
                finally:
                    self.should_exit = True

            self._handing_over = loop.create_task(then_exit())

    server = _HandingOverServer(config)
    server.app = app
    return server
