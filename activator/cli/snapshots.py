"""`dormant snapshots list|inspect|verify|delete`: the store of the running activator, or of a
config's state directory."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from activator.cli.common import EXIT_FAILED, admin_token, load, table

if TYPE_CHECKING:
    from snapshots import Entry

__all__ = ["cmd_snapshots"]


def _find_store(args: argparse.Namespace) -> tuple[Path, str]:
    """The snapshot store to work on and why that one: --state-dir or -c when given, else
    the one the activator at --url reports, else the default state directory."""
    if args.state_dir or args.config:
        why = "from --state-dir" if args.state_dir else f"from the state_dir of {args.config}"
        return load(args).state_path / "snapshots", why
    token = admin_token(args)
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
        return load(args).state_path / "snapshots", f"no activator at {args.url}; {default}"
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
        return load(args).state_path / "snapshots", f"{why} ({response.status_code}); {default}"
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
            print(table([header, *(_entry_row(e) for e in store.entries(args.target))]))
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
