"""A snapshot taken before the house moved restores after it: the store reads a manifest the
earlier code wrote (tests/golden/manifest-criu-v1.json, from a real CRIU snapshot of a small
HTTP server) as a committed snapshot, and verifies its images against it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from snapshots import Manifest, SnapshotCorrupt, SnapshotStore
from snapshots.manifest import MANIFEST_NAME

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "manifest-criu-v1.json"


def test_the_earlier_manifest_parses_as_it_was_written() -> None:
    text = GOLDEN.read_text()
    manifest = Manifest.from_json(text)
    written = json.loads(text)
    assert manifest.engine == written["engine"] == "criu"
    assert set(manifest.files) == set(written["files"])
    assert json.loads(manifest.to_json()) == written


def test_the_store_lists_it_and_verification_reads_its_digests(tmp_path: Path) -> None:
    """Laid out as the earlier store laid it out (ROOT/WORKLOAD/ID/manifest.json, 0700):
    listed as a committed snapshot; its images are not in the repo, so verification
    fails naming them, which shows it checks each file the old manifest lists."""
    snap = tmp_path / "snapshots" / "counter" / "20261206T224246-088059639-8ecd"
    snap.mkdir(parents=True)
    for d in (tmp_path / "snapshots", snap.parent, snap):
        os.chmod(d, 0o700)
    (snap / MANIFEST_NAME).write_text(GOLDEN.read_text())
    store = SnapshotStore(tmp_path / "snapshots")
    [entry] = store.entries()
    assert (entry.workload, entry.status) == ("counter", "ok")
    latest = store.latest("counter")
    assert latest is not None and latest.id == snap.name
    with pytest.raises(SnapshotCorrupt, match="images/"):
        store.verify(latest)
