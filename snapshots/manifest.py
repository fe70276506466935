"""What a snapshot holds: a JSON manifest with a digest of every chunk of every file.

The manifest is written last, so a directory without one is never a snapshot. A
manifest is validated strictly when it is read (``Manifest.from_json``): anything but
the expected shape raises ``ManifestInvalid``, never a ``KeyError`` or ``TypeError``.

Formats:

* 1 — sha256; each file has ``size``, ``sha256`` (whole file) and, optionally,
  ``chunks`` (sha256 of each 32 MiB piece). Still read and verified.
* 2 — the digest is named in the manifest (``"digest": "blake3"`` for new snapshots,
  ``"sha256"`` also accepted) with ``chunk_bytes``; each file has ``size`` and
  ``chunks``, the digest of each ``chunk_bytes`` piece, which together cover every byte.
  BLAKE3 needs 2.7x less CPU time than SHA-256 here (docs/measurements.md) and detects
  the same damage.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import blake3

from snapshots.errors import ManifestInvalid

__all__ = [
    "CANNOT_READ_NOW",
    "CHUNK_BYTES",
    "DEFAULT_DIGEST",
    "DIGESTS",
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "FileEntry",
    "Manifest",
    "check_files",
    "digest_files",
]

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 2
DIGESTS = ("blake3", "sha256")
DEFAULT_DIGEST = "blake3"
CHUNK_BYTES = 32 << 20
"""New manifests digest files in pieces of this size, so that verification before a
restore (which the request is waiting on) can hash one file on every core."""
MAX_MANIFEST_BYTES = 64 << 20
"""A manifest larger than this is refused unread (a real one is a few KB per file)."""

_FORMAT1_CHUNK_BYTES = 32 << 20
_READ = 1 << 20
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_PIPE = re.compile(r"^pipe:\[[0-9]+\]$")
_tls = threading.local()
CANNOT_READ_NOW = frozenset(
    {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EAGAIN, errno.EACCES, errno.EPERM, errno.EIO}
)
"""Errors reading a snapshot's file that are the machine's, not the file's: verification
raises them (as StoreFailed) instead of calling the file corrupt."""


@dataclass(frozen=True)
class FileEntry:
    """One file of a snapshot: its size in bytes and the hex digest of each chunk."""

    size: int
    chunks: tuple[str, ...] = ()
    """Digest of each ``chunk_bytes`` piece, in order; none for an empty file."""
    whole: str = ""
    """Format 1 only: sha256 of the whole file (used when ``chunks`` is empty)."""


@dataclass(frozen=True)
class Manifest:
    """Everything known about one snapshot.

    ``meta`` is engine-specific (for CRIU: the upstream ``port``, the dumped
    ``stdio_pipe`` inode, the regular ``files`` the process had mapped with their sizes,
    the ``health_path``, the ``fingerprint`` of what was started — see
    ``snapshots.fingerprint``; absent in older manifests); those keys are type-checked
    when a manifest is read.
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
    digest: str = DEFAULT_DIGEST
    """The digest algorithm of ``files``: 'blake3' or 'sha256'."""
    chunk_bytes: int = CHUNK_BYTES

    @property
    def total_bytes(self) -> int:
        """Bytes of all files the manifest lists."""
        return sum(entry.size for entry in self.files.values())

    def to_json(self) -> str:
        files: dict[str, dict[str, Any]] = {}
        for name, entry in sorted(self.files.items()):
            if self.format == 1:
                files[name] = {"size": entry.size, "sha256": entry.whole, "chunks": entry.chunks}
            else:
                files[name] = {"size": entry.size, "chunks": list(entry.chunks)}
        data: dict[str, Any] = {
            "format": self.format,
            "id": self.id,
            "workload": self.workload,
            "engine": self.engine,
            "engine_version": self.engine_version,
            "created": self.created,
            "checkpoint_seconds": self.checkpoint_seconds,
            "meta": dict(self.meta),
            "files": files,
            "total_bytes": self.total_bytes,
        }
        if self.format != 1:
            data["digest"] = self.digest
            data["chunk_bytes"] = self.chunk_bytes
        return json.dumps(data, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        """Parse and validate; raises ManifestInvalid saying what is wrong."""
        if len(text) > MAX_MANIFEST_BYTES:
            raise ManifestInvalid(f"manifest is {len(text)} bytes (limit {MAX_MANIFEST_BYTES})")
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise ManifestInvalid(f"manifest is not JSON ({exc})") from None
        return _parse(data)


# -- validation ------------------------------------------------------------------------


def _invalid(where: str, problem: str) -> ManifestInvalid:
    return ManifestInvalid(f"manifest {where}: {problem}")


def _get(data: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str = "") -> Any:
    if key not in data:
        raise _invalid(f"{where}{key}", "missing")
    value = data[key]
    # bool is an int in Python; it is never a valid number or string here
    if isinstance(value, bool) or not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise _invalid(f"{where}{key}", f"expected {names}, got {json.dumps(value)[:60]}")
    return value


def _number(data: Mapping[str, Any], key: str, default: float | None = None) -> float:
    if default is not None and key not in data:
        return default
    value = float(_get(data, key, (int, float)))
    if not math.isfinite(value) or value < 0:
        raise _invalid(key, f"expected a finite number >= 0, got {value}")
    return value


def safe_file_name(name: str) -> bool:
    """A relative path inside the snapshot: no '..', '.', empty parts, absolute paths or
    backslashes, and never the manifest itself."""
    parts = PurePosixPath(name).parts
    return (
        bool(name)
        and "\\" not in name
        and "\0" not in name
        and not name.startswith("/")
        and "/".join(parts) == name
        and all(p not in ("", ".", "..") for p in parts)
        and name != MANIFEST_NAME
    )


def _parse_files(raw: Any, fmt: int, chunk_bytes: int) -> dict[str, FileEntry]:
    if not isinstance(raw, dict):
        raise _invalid("files", f"expected an object, got {json.dumps(raw)[:60]}")
    files = {}
    for name, entry in raw.items():
        where = f"files[{json.dumps(name)[:80]}]"
        if not safe_file_name(name):
            raise _invalid(where, "not a plain relative path inside the snapshot")
        if not isinstance(entry, dict):
            raise _invalid(where, "expected an object")
        size = _get(entry, "size", int, f"{where}.")
        if size < 0:
            raise _invalid(f"{where}.size", f"negative ({size})")
        chunks_raw = entry.get("chunks", [] if fmt == 1 else None)
        if not isinstance(chunks_raw, list) or not all(
            isinstance(c, str) and _HEX64.match(c) for c in chunks_raw
        ):
            raise _invalid(f"{where}.chunks", "expected a list of 64-digit hex digests")
        whole = ""
        if fmt == 1:
            whole = _get(entry, "sha256", str, f"{where}.")
            if not _HEX64.match(whole):
                raise _invalid(f"{where}.sha256", "expected a 64-digit hex digest")
        expected = math.ceil(size / chunk_bytes)
        if len(chunks_raw) != expected and not (fmt == 1 and not chunks_raw):
            raise _invalid(
                f"{where}.chunks",
                f"{len(chunks_raw)} digests for {size} bytes (expected {expected})",
            )
        files[name] = FileEntry(size, tuple(chunks_raw), whole)
    return files


def _check_meta(meta: Mapping[str, Any]) -> None:
    """The keys a runtime reads back from ``meta`` must have the type it expects."""
    if "port" in meta:
        port = _get(meta, "port", int, "meta.")
        if not 1 <= port <= 65535:
            raise _invalid("meta.port", f"not a port number ({port})")
    if meta.get("stdio_pipe") is not None:
        pipe = _get(meta, "stdio_pipe", str, "meta.")
        if not _PIPE.match(pipe):
            raise _invalid("meta.stdio_pipe", f"expected 'pipe:[INODE]', got {pipe!r}")
    if "files" in meta:
        mapped = _get(meta, "files", dict, "meta.")
        for path, size in mapped.items():
            if not path.startswith("/") or isinstance(size, bool) or not isinstance(size, int):
                raise _invalid("meta.files", f"expected absolute path: size, got {path!r}")
    if "health_path" in meta:
        _get(meta, "health_path", str, "meta.")
    if "fingerprint" in meta:
        parts = _get(meta, "fingerprint", dict, "meta.")
        if not all(isinstance(v, str) and _HEX64.match(v) for v in parts.values()):
            raise _invalid("meta.fingerprint", "expected part: 64-digit hex digest")


def _parse(data: Any) -> Manifest:
    if not isinstance(data, dict):
        raise ManifestInvalid(f"manifest is not a JSON object (got {type(data).__name__})")
    fmt = data.get("format")
    if isinstance(fmt, bool) or fmt not in (1, 2):
        raise ManifestInvalid(
            f"unsupported manifest format {fmt!r} (this Dormant reads formats 1 and 2)"
        )
    snap_id = _get(data, "id", str)
    workload = _get(data, "workload", str)
    for key, value in (("id", snap_id), ("workload", workload)):
        if not _NAME.match(value):
            raise _invalid(key, f"not a plain name ({value[:80]!r})")
    engine = _get(data, "engine", str)
    if fmt == 1:
        digest, chunk_bytes = "sha256", _FORMAT1_CHUNK_BYTES
    else:
        digest = _get(data, "digest", str)
        if digest not in DIGESTS:
            raise _invalid("digest", f"unknown algorithm {digest[:40]!r} (known: blake3, sha256)")
        chunk_bytes = _get(data, "chunk_bytes", int)
        if chunk_bytes <= 0:
            raise _invalid("chunk_bytes", f"must be positive ({chunk_bytes})")
    meta = data.get("meta", {})
    if not isinstance(meta, dict):
        raise _invalid("meta", "expected an object")
    _check_meta(meta)
    engine_version = data.get("engine_version", "")
    if not isinstance(engine_version, str):
        raise _invalid("engine_version", "expected a string")
    return Manifest(
        id=snap_id,
        workload=workload,
        engine=engine,
        created=_number(data, "created"),
        files=_parse_files(data.get("files"), fmt, chunk_bytes),
        engine_version=engine_version,
        checkpoint_seconds=_number(data, "checkpoint_seconds", 0.0),
        meta=meta,
        format=fmt,
        digest=digest,
        chunk_bytes=chunk_bytes,
    )


# -- digests ---------------------------------------------------------------------------


def _hasher(algorithm: str) -> Any:
    # One thread per hasher: parallelism comes from hashing chunks on several threads.
    return blake3.blake3() if algorithm == "blake3" else hashlib.sha256()


def _buffer() -> memoryview:
    view: memoryview | None = getattr(_tls, "buffer", None)
    if view is None:
        view = _tls.buffer = memoryview(bytearray(_READ))
    return view


def _hash_range(path: Path, offset: int, length: int, algorithm: str) -> str:
    """Digest of ``length`` bytes at ``offset``; raises OSError when the file is shorter.
    Reads into one reused buffer per thread (the hashers release the GIL)."""
    h = _hasher(algorithm)
    buf = _buffer()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        end = offset + length
        while offset < end:
            n = os.preadv(fd, [buf[: min(_READ, end - offset)]], offset)
            if n == 0:
                raise OSError(f"{path}: shorter than expected (ends at {offset})")
            h.update(buf[:n])
            offset += n
    finally:
        os.close(fd)
    return str(h.hexdigest())


def _pieces(size: int, chunk_bytes: int) -> list[tuple[int, int]]:
    return [(o, min(chunk_bytes, size - o)) for o in range(0, size, chunk_bytes)]


def _workers(jobs: int) -> int:
    return max(1, min(jobs, os.cpu_count() or 1, 8))


def _run(jobs: list[Any], fn: Callable[[Any], Any]) -> list[Any]:
    if len(jobs) <= 1:
        return [fn(j) for j in jobs]
    with ThreadPoolExecutor(_workers(len(jobs))) as pool:
        return list(pool.map(fn, jobs))


def digest_files(
    root: Path,
    names: Iterable[str],
    algorithm: str = DEFAULT_DIGEST,
    chunk_bytes: int | None = None,
) -> dict[str, FileEntry]:
    """Size and chunk digests of each named file under ``root``, every chunk of every
    file on a pool of threads. Raises OSError when a file cannot be read."""
    chunk = chunk_bytes or CHUNK_BYTES
    sizes = {name: os.stat(root / name).st_size for name in sorted(names)}
    jobs = [(n, o, ln) for n, size in sizes.items() for o, ln in _pieces(size, chunk)]
    digests = _run(jobs, lambda j: _hash_range(root / j[0], j[1], j[2], algorithm))
    chunks: dict[str, list[str]] = {name: [] for name in sizes}
    for (name, _, _), digest in zip(jobs, digests, strict=True):
        chunks[name].append(digest)
    return {name: FileEntry(sizes[name], tuple(chunks[name])) for name in sizes}


def check_files(root: Path, manifest: Manifest, names: Iterable[str]) -> list[str]:
    """Problems with the content of the named files (sizes already checked): one line per
    file whose digest does not match, or that cannot be read. Every chunk of every file
    is hashed, spread over all cores; format-1 files without chunks are hashed whole."""
    jobs: list[tuple[str, int, int, str]] = []
    for name in sorted(names):
        entry = manifest.files[name]
        if entry.chunks:
            pieces = _pieces(entry.size, manifest.chunk_bytes)
            if len(pieces) != len(entry.chunks):
                jobs.append((name, 0, 0, "manifest lists the wrong number of chunks"))
                continue
            jobs += [(name, o, ln, d) for (o, ln), d in zip(pieces, entry.chunks, strict=True)]
        elif entry.size or entry.whole:
            jobs.append((name, 0, entry.size, entry.whole))

    def run(job: tuple[str, int, int, str]) -> str:
        name, offset, length, expected = job
        if not _HEX64.match(expected):
            return f"{name}: {expected}"
        try:
            ok = _hash_range(root / name, offset, length, manifest.digest) == expected
        except OSError as exc:
            if exc.errno in CANNOT_READ_NOW:
                raise  # the machine refused to read it: says nothing about the snapshot
            return f"{name}: unreadable ({exc.strerror or exc})"
        return "" if ok else f"{name}: {manifest.digest} mismatch"

    problems = dict.fromkeys(p for p in _run(jobs, run) if p)
    return list(problems)
