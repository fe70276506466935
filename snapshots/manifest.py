"""What a snapshot holds: a JSON manifest with a digest of every file.

The manifest is written last, so a directory without one is never a snapshot.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["MANIFEST_NAME", "FileEntry", "Manifest", "digest_files"]

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1
_CHUNK = 4 << 20


@dataclass(frozen=True)
class FileEntry:
    """One file of a snapshot: its size in bytes and sha256 (hex)."""

    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """Everything known about one snapshot.

    ``meta`` is engine-specific (for CRIU: the upstream port, the dumped stdio pipe
    inode, and the regular files the process had mapped, with their sizes).
    """

    id: str
    workload: str
    engine: str
    created: float
    files: Mapping[str, FileEntry]
    engine_version: str = ""
    checkpoint_seconds: float = 0.0
    meta: Mapping[str, Any] = field(default_factory=dict)
    format: int = FORMAT_VERSION

    @property
    def total_bytes(self) -> int:
        """Bytes of all files the manifest lists."""
        return sum(entry.size for entry in self.files.values())

    def to_json(self) -> str:
        data = asdict(self)
        data["files"] = {name: asdict(entry) for name, entry in sorted(self.files.items())}
        data["total_bytes"] = self.total_bytes
        return json.dumps(data, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        data = json.loads(text)
        if data.get("format") != FORMAT_VERSION:
            raise ValueError(f"unsupported manifest format {data.get('format')!r}")
        return cls(
            id=str(data["id"]),
            workload=str(data["workload"]),
            engine=str(data["engine"]),
            created=float(data["created"]),
            files={n: FileEntry(int(e["size"]), str(e["sha256"])) for n, e in data["files"].items()},
            engine_version=str(data.get("engine_version", "")),
            checkpoint_seconds=float(data.get("checkpoint_seconds", 0.0)),
            meta=dict(data.get("meta", {})),
        )


def _digest(path: Path) -> FileEntry:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return FileEntry(size, h.hexdigest())


def digest_files(root: Path, names: Iterable[str]) -> dict[str, FileEntry]:
    """sha256 and size of each named file under ``root`` (hashed on two threads:
    hashlib releases the GIL, and restore waits on this)."""
    names = sorted(names)
    workers = max(1, min(len(names), os.cpu_count() or 1, 4))
    with ThreadPoolExecutor(workers) as pool:
        entries = pool.map(lambda n: _digest(root / n), names)
        return dict(zip(names, entries, strict=True))
