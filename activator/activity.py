"""Which traffic is a user's activity: pure rules over a request or a WebSocket message.

For an ``http`` workload everything the proxy carries is activity (its clients are the
users). A ``jupyter`` workload serves a page that keeps itself up to date: an open
JupyterLab tab polls ``api/kernels``, ``api/sessions``, ``api/terminals``, ``api/contents``
and ``lab/api/workspaces`` (and saves its layout with ``PUT lab/api/workspaces/default``)
every 10 s, and re-asks ``kernel_info`` whenever its kernel socket reconnects. Counted
as activity, that housekeeping kept a notebook awake as long as a tab stayed open.

So, for ``jupyter``, only what a user does counts (the distinction jupyter_server's own
culler draws between tracked and untracked kernel messages, applied at the proxy):

* HTTP: a page load, and any request that changes something (``POST``, ``PUT``,
  ``PATCH``, ``DELETE``: a save, a new file or kernel, a rename) counts — except the
  page's layout save (``PUT lab/api/workspaces/…``); a ``GET``/``HEAD`` of the REST API
  (``api/``, ``lab/api/``, ``lsp/``) does not — except opening a file
  (``GET api/contents/PATH?type=notebook|file``) and the check of a file's metadata that
  precedes every save (``GET api/contents/PATH?content=0``; the page polls only folder
  listings, ``content=1`` without a ``type``).
* WebSocket, client to server: a kernel message counts unless it is one of
  ``HOUSEKEEPING_KERNEL_MESSAGES``; a terminal message counts when it is keyboard input
  (``["stdin", …]``), not a resize; on any other socket every client message counts.
* WebSocket, server to client: never (a kernel's output or a terminal's echo follows
  a user's action, which counted already; a computing kernel is seen by the reaper's
  probe, ``activator.notebooks``).

What cannot be parsed counts: a missed user action would hibernate a notebook under its
user, a missed housekeeping message only keeps it awake a little longer.
"""

from __future__ import annotations

import json
import re
from urllib.parse import parse_qs

__all__ = [
    "HOUSEKEEPING_KERNEL_MESSAGES",
    "held_greeting",
    "kernel_message_type",
    "message_is_activity",
    "relative_path",
    "request_is_activity",
    "upstream_messages_count",
]

HOUSEKEEPING_KERNEL_MESSAGES = frozenset(
    {"kernel_info_request", "comm_info_request", "debug_request", "usage_request"}
)
"""Kernel requests a page sends by itself (on connecting, for the debugger's sidebar, for a
resource monitor): jupyter_server's ``untracked_message_types`` that a client sends."""

_API = re.compile(r"^(?:api|lab/api|lsp)(?:/|$)")
_WORKSPACES = re.compile(r"^lab/api/workspaces(?:/|$)")
_CONTENTS = re.compile(r"^api/contents/(?!.*/checkpoints(?:/|$)).+")
_KERNEL_CHANNELS = re.compile(r"^api/kernels/[^/]+/channels$")
_TERMINAL = re.compile(r"^terminals/websocket/[^/]+$")
_OPENED_TYPES = ("notebook", "file")


def relative_path(path: str, base: str) -> str:
    """``path`` (query removed) below ``base`` (``/notebooks/NAME``), without a leading
    slash: ``api/kernels``; the path itself (stripped of slashes) when outside ``base``."""
    path = path.split("?", 1)[0]
    if base and (path == base or path.startswith(base + "/")):
        path = path[len(base) :]
    return path.strip("/")


def request_is_activity(kind: str, method: str, path: str, query: str) -> bool:
    """Whether an HTTP request to a ``kind`` workload is a user's activity; ``path`` is
    relative to the workload's base (see ``relative_path``), ``query`` the raw query."""
    if kind != "jupyter":
        return True
    method = method.upper()
    if method in ("GET", "HEAD"):
        if not _API.match(path):
            return True  # a page, or what a page loads
        if _CONTENTS.match(path):
            params = parse_qs(query)
            if params.get("content", ["1"])[0] == "0":
                return True  # a file's metadata: checked before each save (and at opening)
            return params.get("type", [""])[0] in _OPENED_TYPES
        return False
    if method == "OPTIONS":
        return False
    return not (method == "PUT" and _WORKSPACES.match(path))


def upstream_messages_count(kind: str) -> bool:
    """Whether a server's messages to a ``kind`` workload's WebSocket clients are activity."""
    return kind != "jupyter"


def message_is_activity(kind: str, path: str, frame: bytes | str) -> bool:
    """Whether a client's WebSocket message to a ``kind`` workload is a user's activity;
    ``path`` is the socket's path relative to the workload's base."""
    if kind != "jupyter":
        return True
    if _KERNEL_CHANNELS.match(path):
        return kernel_message_type(frame) not in HOUSEKEEPING_KERNEL_MESSAGES
    if _TERMINAL.match(path):
        return _terminal_message_kind(frame) in ("stdin", None)
    return True


def held_greeting(kind: str, path: str) -> str | None:
    """What a socket held while its workload sleeps (``activator.parking``) is told first,
    standing in for the server: a Jupyter terminal's client sends nothing, keystrokes
    included, until the server's ``["setup", {}]`` (jupyter_server_terminals sends it on
    every connection; the restored server sends its own again, which the page ignores).
    None: nothing."""
    if kind == "jupyter" and _TERMINAL.match(path):
        return '["setup", {}]'
    return None


def _terminal_message_kind(frame: bytes | str) -> str | None:
    """The first element of a terminal message (``stdin``, ``set_size``), None if odd."""
    try:
        message = json.loads(frame)
    except (ValueError, UnicodeDecodeError):
        return None
    if isinstance(message, list) and message and isinstance(message[0], str):
        return message[0]
    return None


def kernel_message_type(frame: bytes | str) -> str | None:
    """The ``msg_type`` of a client's kernel message in any of Jupyter's WebSocket
    formats: JSON text (the default protocol), the binary framing of the
    ``v1.kernel.websocket.jupyter.org`` protocol, or the default protocol's binary form
    (a message with buffers). None when it is none of these."""
    try:
        if isinstance(frame, str):
            return _msg_type(json.loads(frame).get("header"))
        return _v1_msg_type(frame) or _legacy_binary_msg_type(frame)
    except (ValueError, UnicodeDecodeError, AttributeError):
        return None


def _msg_type(header: object) -> str | None:
    if isinstance(header, dict) and isinstance(header.get("msg_type"), str):
        return str(header["msg_type"])
    return None


def _v1_msg_type(frame: bytes) -> str | None:
    """v1: 8-byte little-endian count N, N offsets; parts: channel, header, parent, ..."""
    if len(frame) < 8:
        return None
    count = int.from_bytes(frame[:8], "little")
    if not 3 <= count <= 1024 or len(frame) < 8 * (count + 1):
        return None
    offsets = [int.from_bytes(frame[8 * i : 8 * i + 8], "little") for i in range(1, count + 1)]
    if offsets[0] != 8 * (count + 1) or offsets != sorted(offsets) or offsets[-1] > len(frame):
        return None
    return _msg_type(json.loads(frame[offsets[1] : offsets[2]]))


def _legacy_binary_msg_type(frame: bytes) -> str | None:
    """Default protocol with buffers: 4-byte big-endian count N, N offsets; part 0 is
    the whole message as JSON."""
    if len(frame) < 8:
        return None
    count = int.from_bytes(frame[:4], "big")
    if not 1 <= count <= 1024 or len(frame) < 4 * (count + 1):
        return None
    start = int.from_bytes(frame[4:8], "big")
    end = int.from_bytes(frame[8:12], "big") if count > 1 else len(frame)
    if not 4 * (count + 1) <= start <= end <= len(frame):
        return None
    message = json.loads(frame[start:end])
    return _msg_type(message.get("header")) if isinstance(message, dict) else None
