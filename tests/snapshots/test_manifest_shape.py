"""Manifests that are valid JSON of the wrong shape : ``Manifest.from_json``
rejects them with ManifestInvalid saying what is wrong, and the store lists such a
snapshot as 'invalid' with that reason, never returns it as usable, never crashes on it,
and retires it at the next prune."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from snapshots import Manifest, ManifestInvalid, Snapshot, SnapshotNotFound, SnapshotStore

Mutation = Callable[[dict[str, Any]], Any]


def _set(path: str, value: Any) -> Mutation:
    """``path``: keys separated by '|' (file names contain '/' and '.')."""

    def mutate(data: dict[str, Any]) -> dict[str, Any]:
        *parents, last = path.split("|")
        node = data
        for key in parents:
            node = node[key]
        node[last] = value
        return data

    return mutate


def _drop(key: str) -> Mutation:
    return lambda d: {k: v for k, v in d.items() if k != key}


def _rename_file(new: str) -> Mutation:
    def mutate(data: dict[str, Any]) -> dict[str, Any]:
        data["files"][new] = data["files"].pop("images/pages-1.img")
        return data

    return mutate


CASES: list[tuple[str, Mutation, str]] = [
    ("a list", lambda d: [], "not a JSON object"),
    ("a string", lambda d: "manifest", "not a JSON object"),
    ("files null", _set("files", None), "files: expected an object"),
    ("files a list", _set("files", []), "files: expected an object"),
    ("file entry null", _set("files|images/core.img", None), "expected an object"),
    ("size a string", _set("files|images/core.img|size", "4"), "size: expected int"),
    ("size negative", _set("files|images/core.img|size", -1), "negative"),
    ("size a bool", _set("files|images/core.img|size", True), "size: expected int"),
    ("size a float", _set("files|images/core.img|size", 4.0), "size: expected int"),
    ("chunks null", _set("files|images/core.img|chunks", None), "chunks: expected a list"),
    ("chunks not hex", _set("files|images/core.img|chunks", ["zz"]), "64-digit hex"),
    ("chunks too few", _set("files|images/core.img|chunks", []), "0 digests for 4 bytes"),
    ("created a word", _set("created", "yesterday"), "created: expected int or float"),
    ("created NaN", _set("created", float("nan")), "created: expected a finite number"),
    ("created missing", _drop("created"), "created: missing"),
    ("id missing", _drop("id"), "id: missing"),
    ("id a number", _set("id", 7), "id: expected str"),
    ("id escapes", _set("id", "../../x"), "id: not a plain name"),
    ("workload missing", _drop("workload"), "workload: missing"),
    ("engine missing", _drop("engine"), "engine: missing"),
    ("files missing", _drop("files"), "files: expected an object"),
    ("format missing", _drop("format"), "unsupported manifest format None"),
    ("format a string", _set("format", "2"), "unsupported manifest format '2'"),
    ("format true", _set("format", True), "unsupported manifest format True"),
    ("format 3", _set("format", 3), "unsupported manifest format 3"),
    ("digest unknown", _set("digest", "md5"), "digest: unknown algorithm 'md5'"),
    ("chunk_bytes zero", _set("chunk_bytes", 0), "chunk_bytes: must be positive"),
    ("chunk_bytes a string", _set("chunk_bytes", "1"), "chunk_bytes: expected int"),
    ("meta a string", _set("meta", "x"), "meta: expected an object"),
    ("port a string", _set("meta|port", "8080"), "meta.port: expected int"),
    ("port out of range", _set("meta|port", 70000), "meta.port: not a port number"),
    ("stdio_pipe a number", _set("meta|stdio_pipe", 5), "meta.stdio_pipe: expected str"),
    ("mapped files a list", _set("meta|files", []), "meta.files: expected dict"),
    ("mapped file relative", _set("meta|files", {"w.bin": 1}), "meta.files: expected absolute"),
    ("absolute file name", _rename_file("/etc/passwd"), "not a plain relative path"),
    ("dot-dot file name", _rename_file("../../etc/passwd"), "not a plain relative path"),
    ("dot-dot inside", _rename_file("images/../../x.img"), "not a plain relative path"),
    ("dot segment", _rename_file("./images/pages-1.img"), "not a plain relative path"),
    ("double slash", _rename_file("images//pages-1.img"), "not a plain relative path"),
    ("the manifest itself", _rename_file("manifest.json"), "not a plain relative path"),
]


def _commit(store: SnapshotStore) -> Snapshot:
    with store.begin("m") as pending:
        (pending.path / "images").mkdir()
        (pending.path / "images" / "pages-1.img").write_bytes(b"p" * 3000)
        (pending.path / "images" / "core.img").write_bytes(b"core")
        return store.commit(
            pending, engine="criu", meta={"port": 8001, "stdio_pipe": "pipe:[1]", "files": {}}
        )


@pytest.mark.parametrize(("mutate", "problem"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_wrong_shape_is_invalid_everywhere(tmp_path: Path, mutate: Mutation, problem: str) -> None:
    store = SnapshotStore(tmp_path)
    snap = _commit(store)
    text = json.dumps(mutate(json.loads((snap.path / "manifest.json").read_text())))
    with pytest.raises(ManifestInvalid) as info:
        Manifest.from_json(text)
    assert problem in str(info.value)

    (snap.path / "manifest.json").write_text(text)
    [entry] = store.entries()
    assert (entry.id, entry.status) == (snap.id, "invalid")
    assert problem in entry.reason
    assert store.list() == [] and store.latest("m") is None
    with pytest.raises(SnapshotNotFound, match="not usable"):
        store.get(snap.id)

    store.prune("m", keep=1)
    [entry] = store.entries()
    assert entry.status == "bad" and problem in entry.reason, "retired, reason kept"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "not JSON"),
        ("{", "not JSON"),
        ("[" * 100_000 + "]" * 100_000, "not JSON"),
        ("null", "not a JSON object"),
        ('{"format": 2, "id": "a"}', "workload: missing"),
    ],
    ids=["empty", "truncated", "deeply nested", "null", "keys missing"],
)
def test_unparseable_manifests(tmp_path: Path, text: str, problem: str) -> None:
    with pytest.raises(ManifestInvalid, match=problem):
        Manifest.from_json(text)
    store = SnapshotStore(tmp_path)
    snap = _commit(store)
    (snap.path / "manifest.json").write_text(text)
    assert [(e.status, problem in e.reason) for e in store.entries()] == [("invalid", True)]
    assert store.latest("m") is None


def test_manifest_in_the_wrong_directory(tmp_path: Path) -> None:
    """A manifest copied into another snapshot's (or workload's) directory is not trusted:
    its id and workload must be the directory's."""
    store = SnapshotStore(tmp_path)
    first, second = _commit(store), _commit(store)
    (second.path / "manifest.json").write_bytes((first.path / "manifest.json").read_bytes())
    moved = tmp_path / "other" / first.id
    moved.parent.mkdir()
    first.path.rename(moved)
    reasons = {e.path: e.reason for e in store.entries() if e.status == "invalid"}
    assert f"manifest says m/{first.id}, but it is in m/{second.id}" in reasons[second.path]
    assert f"manifest says m/{first.id}, but it is in other/{first.id}" in reasons[moved]
    assert store.list() == []


def test_huge_manifest_is_refused_unread(tmp_path: Path) -> None:
    from snapshots.manifest import MAX_MANIFEST_BYTES

    store = SnapshotStore(tmp_path)
    snap = _commit(store)
    with open(snap.path / "manifest.json", "r+b") as f:
        f.truncate(MAX_MANIFEST_BYTES + 10)
    [entry] = store.entries()
    assert entry.status == "invalid" and "limit" in entry.reason
