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

__all__ = ["MANIFEST_NAME", "FileEntry", "Manifest", "digest_files", "mismatched_files"]

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1
_READ = 4 << 20
CHUNK_BYTES = 32 << 20
"""Files are also digested in chunks of this size, so that verification before a
restore (which the request is waiting on) can hash one file on every core."""


@dataclass(frozen=True)
class FileEntry:
    """One file of a snapshot: its size in bytes, sha256 (hex) of the whole file, and
    sha256 of each CHUNK_BYTES chunk."""

    size: int
    sha256: str
    chunks: tuple[str, ...] = ()


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
            files={
                n: FileEntry(int(e["size"]), str(e["sha256"]), tuple(e.get("chunks", ())))
                for n, e in data["files"].items()
            },
            engine_version=str(data.get("engine_version", "")),
            checkpoint_seconds=float(data.get("checkpoint_seconds", 0.0)),
            meta=dict(data.get("meta", {})),
        )


def _digest(path: Path) -> FileEntry:
    whole = hashlib.sha256()
    chunks: list[str] = []
    size = 0
    with open(path, "rb", buffering=0) as f:
        while True:
            part = hashlib.sha256()
            read = 0
            while read < CHUNK_BYTES and (data := f.read(min(_READ, CHUNK_BYTES - read))):
                whole.update(data)
                part.update(data)
                read += len(data)
            if not read:
                break
            chunks.append(part.hexdigest())
            size += read
    return FileEntry(size, whole.hexdigest(), tuple(chunks))


def _workers(jobs: int) -> int:
    return max(1, min(jobs, os.cpu_count() or 1, 8))


def digest_files(root: Path, names: Iterable[str]) -> dict[str, FileEntry]:
    """Size, sha256 and chunk digests of each named file under ``root`` (on several
    threads: hashlib releases the GIL)."""
    names = sorted(names)
    with ThreadPoolExecutor(_workers(len(names))) as pool:
        entries = pool.map(lambda n: _digest(root / n), names)
        return dict(zip(names, entries, strict=True))


def _chunk_ok(path: Path, index: int, expected: str) -> bool:
    fd = os.open(path, os.O_RDONLY)
    try:
        h = hashlib.sha256()
        offset, end = index * CHUNK_BYTES, (index + 1) * CHUNK_BYTES
        while offset < end and (data := os.pread(fd, min(_READ, end - offset), offset)):
            h.update(data)
            offset += len(data)
        return h.hexdigest() == expected
    finally:
        os.close(fd)


def mismatched_files(root: Path, expected: Mapping[str, FileEntry]) -> list[str]:
    """Names whose content does not match ``expected``. Every chunk of every file is
    hashed, spread over all cores; files without chunk digests are hashed whole."""
    jobs = []
    for name, entry in expected.items():
        if entry.chunks:
            jobs += [(name, i, digest) for i, digest in enumerate(entry.chunks)]
        else:
            jobs.append((name, -1, entry.sha256))

    def run(job: tuple[str, int, str]) -> bool:
        name, index, digest = job
        if index < 0:
            return _digest(root / name).sha256 == digest
        return _chunk_ok(root / name, index, digest)

    with ThreadPoolExecutor(_workers(len(jobs))) as pool:
        results = list(pool.map(run, jobs))
    return sorted({name for (name, _, _), ok in zip(jobs, results, strict=True) if not ok})
