"""`dormant status`, `hibernate`, `wake`: the running activator's admin API, as tables."""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import TYPE_CHECKING, Any

import httpx

from activator.cli.common import admin_token, table

if TYPE_CHECKING:
    pass

__all__ = ["cmd_lifecycle", "cmd_status", "status_text"]


DEFAULT_URL = "http://127.0.0.1:8080"


def target(args: argparse.Namespace) -> tuple[str, str]:
    """The activator's base URL and the admin token to send: --url, else the config's
    (-c) admin address (``admin_listen``, else ``listen``), else $DORMANT_URL, else
    127.0.0.1:8080; --token-file or $DORMANT_ADMIN_TOKEN, else the config's token."""
    token = admin_token(args)
    if args.url:
        return args.url, token
    if getattr(args, "config", None):
        from activator.cli.common import load

        settings = load(args)
        address = settings.admin_listen or settings.listen
        host, _, port = address.rpartition(":")
        if host.strip("[]") in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        return f"http://{host}:{port}", token or settings.resolved_admin_token()
    return os.environ.get("DORMANT_URL") or DEFAULT_URL, token


def _admin(args: argparse.Namespace, method: str, path: str) -> dict[str, Any]:
    base, token = target(args)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    url = base.rstrip("/") + path
    try:
        response = httpx.request(
            method, url, headers=headers, timeout=args.timeout, trust_env=False
        )
    except httpx.HTTPError as exc:
        raise RuntimeError(
            f"cannot reach the activator at {base} ({exc}); is `dormant up` running? "
            "(-c FILE talks to that config's listen address, --url to any)"
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
    print(json.dumps(data, indent=2) if args.json else status_text(data, args.url))
    return 0


def status_text(data: dict[str, Any], base: str = "") -> str:
    """The `dormant status` table for an activator's ``GET /-/workloads`` answer; then
    each notebook's (and path-prefixed workload's) address below ``base``."""
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
    return "\n".join([*lines, table([header, *rows]), *_phases(data), *_addresses(data, base)])


def _phases(data: dict[str, Any]) -> list[str]:
    """Where each last wake's seconds went, where the runtime says (Kubernetes): ``ref: restore
    2.10s: scaled 0.03s, scheduled 0.10s, running 1.20s, ready 1.90s``."""
    lines = []
    for w in data["workloads"]:
        wake = w.get("last_wake") or {}
        if wake.get("phases"):
            steps = ", ".join(f"{k} {v:.2f}s" for k, v in wake["phases"].items())
            lines.append(f"{w['name']}: {wake['path']} {wake['seconds']:.2f}s: {steps}")
    return ["", "last wake, step by step (seconds since it began):", *lines] if lines else []


def _addresses(data: dict[str, Any], base: str) -> list[str]:
    """Where users open each workload that has an address of its own (a notebook, a
    path prefix), below ``base`` (the activator's URL); a notebook says where its token is."""
    lines = []
    for w in data["workloads"]:
        if not w.get("url"):
            continue
        url = base.rstrip("/") + w["url"]
        if w.get("kind") == "jupyter":
            token = w.get("token_file") or f"STATE_DIR/notebooks/{w['name']}/token"
            lines.append(f"notebook {w['name']}: {url} (log in with the token in {token})")
        else:
            lines.append(f"{w['name']}: {url}")
    return ["", *lines] if lines else []


def _size(value: int | None) -> str:
    from warmpool.units import format_size

    return format_size(value) if value else "-"


def cmd_lifecycle(args: argparse.Namespace) -> int:
    data = _admin(args, "POST", f"/-/workloads/{args.name}/{args.command}")
    print(table([["NAME", "STATE", "WHY"], [data["name"], data["state"], data.get("reason", "")]]))
    return 0
