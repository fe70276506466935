"""Which workload does a request belong to, and which path does it get?

`http` workloads are routed by ``Host`` or by ``path_prefix``. A prefix is a boundary:
the routing decision is made on the path as the upstream will understand it
(percent-decoded once, ``\\`` read as ``/``, dot segments removed, ``..;x`` read as
``..``), and a request whose decoded path routes differently from the bytes it was
sent with, or climbs out of its prefix with ``..`` (even to come back), is refused
with 400. What is forwarded is always the path exactly as the client wrote it (minus
the prefix when ``strip_prefix``): never decoded and re-encoded.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import quote

from activator.errors import BadPath, NotFound
from activator.workload import Workload

if TYPE_CHECKING:
    from warmpool.pool import Pool

__all__ = ["Registry", "Route", "confined", "decision_path"]

_PERCENT = re.compile(rb"%([0-9A-Fa-f]{2})")
_SEPARATORS = re.compile(rb"[/\\]")
_PCHAR = "/:@!$&'()*+,;=-._~"  # what may stay unencoded in a path (RFC 3986)


@dataclass(frozen=True)
class Route:
    """Where an `http` request goes: the workload and the raw path to forward."""

    workload: Workload
    path: str


def _segments(raw: bytes) -> list[bytes]:
    """The path's segments as the upstream may read them: percent-decoded once, split on
    '/' and '\\' (some servers read a backslash as a separator), without the leading one."""
    decoded = _PERCENT.sub(lambda m: bytes([int(m.group(1), 16)]), raw)
    return _SEPARATORS.split(decoded)[1:]


def _dot(segment: bytes) -> bytes:
    """'..' for '..', '..;x' (path parameters), '.' likewise; else the segment."""
    base = segment.split(b";", 1)[0]
    return base if base in (b".", b"..") else segment


def decision_path(raw: str) -> bytes:
    """The path routing is decided on: ``raw`` decoded once, dot segments removed
    (RFC 3986 5.2.4; a '..' at the root stays at the root)."""
    out: list[bytes] = []
    segments = _segments(raw.encode("latin-1"))
    for segment in segments:
        kind = _dot(segment)
        if kind == b"..":
            if out:
                out.pop()
        elif kind != b".":
            out.append(segment)
    if segments and _dot(segments[-1]) in (b".", b".."):
        out.append(b"")  # "/a/b/.." is "/a/"
    return b"/" + b"/".join(out)


def _climbs(remainder: str) -> bool:
    """Whether the part after a prefix goes above its own root with '..' at any point."""
    depth = 0
    for segment in _segments(remainder.encode("latin-1")):
        kind = _dot(segment)
        if kind == b"..":
            depth -= 1
            if depth < 0:
                return True
        elif kind != b".":
            depth += 1
    return False


def _under(path: bytes, prefix: bytes) -> bool:
    return path == prefix or path.startswith(prefix + b"/")


def confined(raw_path: str, prefix: str) -> str:
    """``raw_path`` when it is under ``prefix`` as written and stays there once decoded
    and normalised (for /v1/*, routed by model, not by path); else ``BadPath``."""
    raw = raw_path.encode("latin-1")
    if not (_under(raw, prefix.encode()) and _under(decision_path(raw_path), prefix.encode())):
        raise BadPath(f"path {raw_path[:200]!r} is not under {prefix}/ once decoded and normalised")
    if _climbs(raw_path[len(prefix) :]):
        raise BadPath(f"path {raw_path[:200]!r} climbs out of {prefix}/ with '..'")
    return raw_path


class Registry:
    """All workloads, by name and by the OpenAI model names they serve (and the warm pool
    they share, when there is one)."""

    def __init__(self, workloads: Iterable[Workload], pool: Pool | None = None) -> None:
        self.pool = pool
        self._by_name = {w.name: w for w in workloads}
        self._index()

    def add(self, workload: Workload) -> None:
        """Serve ``workload`` from now on (runtime kubernetes: a policy appeared). ValueError
        when its name or one of its models is taken already."""
        if workload.name in self._by_name:
            raise ValueError(f"a workload named {workload.name!r} is served already")
        taken = [m for m in workload.settings.models if m in self._by_model]
        if taken:
            raise ValueError(f"model {taken[0]!r} is served by {self._by_model[taken[0]].name!r}")
        self._by_name[workload.name] = workload
        self._index()

    def remove(self, name: str) -> Workload | None:
        """Stop routing to workload ``name`` (its requests in flight go on); it, or None."""
        workload = self._by_name.pop(name, None)
        if workload is not None:
            self._index()
        return workload

    def _index(self) -> None:
        """The lookups by model and prefix, rebuilt whenever the set of workloads changes."""
        self._by_model = {m: w for w in self._by_name.values() for m in w.settings.models}
        # each prefix as a client writes it on the wire (percent-encoded where it must
        # be) and as it reads once decoded
        self._prefixes = {
            w.name: (
                quote(w.settings.path_prefix, safe=_PCHAR).encode(),
                w.settings.path_prefix.encode(),
            )
            for w in self._by_name.values()
            if w.settings.path_prefix
        }

    def __iter__(self) -> Iterator[Workload]:
        return iter(list(self._by_name.values()))  # a copy: the set may change meanwhile

    def __len__(self) -> int:
        return len(self._by_name)

    @property
    def models(self) -> list[str]:
        return sorted(self._by_model)

    def by_name(self, name: str) -> Workload:
        try:
            return self._by_name[name]
        except KeyError:
            raise NotFound(
                f"no workload named {name!r}; known: {', '.join(sorted(self._by_name))}"
            ) from None

    def _longest(self, path: bytes, decoded: bool) -> Workload | None:
        """The workload with the longest prefix ``path`` is under (raw or decoded form)."""
        best, length = None, -1
        for name, forms in self._prefixes.items():
            prefix = forms[decoded]
            if len(prefix) > length and _under(path, prefix):
                best, length = self._by_name[name], len(prefix)
        return best

    def by_route(self, raw_path: str, host: str) -> Route | None:
        """The `http` workload for this Host (port ignored) or, failing that, the longest
        ``path_prefix`` the path is under; None when there is none. ``raw_path`` is the
        path as the client sent it (ASGI ``raw_path``). Raises ``BadPath`` (400) when the
        decoded, normalised path routes elsewhere or climbs out of the prefix."""
        raw = raw_path.encode("latin-1")
        name = host.rsplit(":", 1)[0].lower() if host and not host.startswith("[") else host
        hosted = next((w for w in self._by_name.values() if name in w.settings.hosts), None)
        if hosted is not None:
            forms = self._prefixes.get(hosted.name)
            if hosted.settings.strip_prefix and forms and _under(raw, forms[0]):
                return Route(hosted, self._remainder(hosted, raw_path))
            return Route(hosted, raw_path)
        by_raw = self._longest(raw, decoded=False)
        normalised = decision_path(raw_path)
        if by_raw is not self._longest(normalised, decoded=True):
            raise BadPath(
                f"path {raw_path[:200]!r} reads {normalised.decode('latin-1')[:200]!r} once "
                "decoded and normalised, which is routed elsewhere; send the path without "
                "encoded dots or slashes"
            )
        if by_raw is None:
            return None
        remainder = self._remainder(by_raw, raw_path)
        return Route(by_raw, remainder if by_raw.settings.strip_prefix else raw_path)

    def _remainder(self, workload: Workload, raw_path: str) -> str:
        """The raw path after the workload's prefix; refused when it climbs out of it."""
        remainder = raw_path[len(self._prefixes[workload.name][0]) :]
        if _climbs(remainder):
            raise BadPath(
                f"path {raw_path[:200]!r} climbs out of {workload.name}'s prefix "
                f"{workload.settings.path_prefix} with '..' (encoded or not)",
                workload=workload.name,
            )
        return remainder or "/"

    def by_model(self, model: str) -> Workload:
        try:
            return self._by_model[model]
        except KeyError:
            raise NotFound(
                f"model {model!r} is not served here; available models: {', '.join(self.models)}",
                extra={"available_models": self.models},
            ) from None
