"""Which traffic is a user's activity (``activator.activity``): tables over requests and
WebSocket messages as JupyterLab 4.6 sends them (captured through Dormant from headless
Chromium), with kernel messages framed by jupyter_server's own serializers."""

from __future__ import annotations

import json

import pytest
from jupyter_client.session import Session
from jupyter_server.services.kernels.connection.base import (
    serialize_binary_message,
    serialize_msg_to_ws_v1,
)

from activator.activity import (
    held_greeting,
    kernel_message_type,
    message_is_activity,
    relative_path,
    request_is_activity,
    upstream_messages_count,
)

KERNEL = "api/kernels/5f0c6a3e-14d4-4932-97e1-859efd3ee520/channels"
TERMINAL = "terminals/websocket/1"


@pytest.mark.parametrize(
    ("method", "path", "query", "counts"),
    [
        # an open tab's polling, every 10 s
        ("GET", "api/kernels", "1796597801264", False),
        ("GET", "api/sessions", "1796597801316", False),
        ("GET", "api/terminals", "1796597807443", False),
        ("GET", "lab/api/workspaces", "1796597807449", False),
        ("PUT", "lab/api/workspaces/default", "1796597801170", False),
        ("GET", "api/contents", "content=1&hash=0&1796597800653", False),  # the file browser
        ("GET", "api/contents/sub", "content=1&hash=0&1", False),  # ... in a folder
        # what a page loads or checks by itself
        ("GET", "api/kernelspecs", "1", False),
        ("GET", "api/me", "1", False),
        ("GET", "lab/api/settings", "1", False),
        ("GET", "lsp/status", "1", False),
        ("GET", "api/contents/Untitled.ipynb/checkpoints", "1", False),
        ("OPTIONS", "api/kernels", "", False),
        # what a user does
        ("GET", "lab", "token=abc", True),  # opening the page
        ("GET", "tree/work", "", True),
        ("GET", "static/lab/main.js", "v=1", True),
        ("GET", "api/contents/Untitled.ipynb", "type=notebook&content=1&hash=1&1", True),
        ("GET", "api/contents/notes.txt", "type=file&format=text&content=1", True),
        ("GET", "api/contents/Untitled.ipynb", "content=0&hash=0&1", True),  # before a save
        ("PUT", "api/contents/Untitled.ipynb", "", True),  # a save
        ("POST", "api/contents", "", True),  # a new notebook
        ("PATCH", "api/contents/a.ipynb", "", True),  # a rename
        ("DELETE", "api/contents/a.ipynb", "", True),
        ("POST", "api/kernels", "", True),
        ("POST", "api/sessions", "", True),
        ("POST", "api/kernels/k/interrupt", "", True),
        ("PUT", "lab/api/settings/@jupyterlab/notebook-extension:panel", "", True),
    ],
)
def test_notebook_requests(method: str, path: str, query: str, counts: bool) -> None:
    assert request_is_activity("jupyter", method, path, query) is counts


@pytest.mark.parametrize("method", ["GET", "PUT", "OPTIONS"])
def test_every_request_to_an_http_workload_counts(method: str) -> None:
    assert request_is_activity("http", method, "api/kernels", "")
    assert upstream_messages_count("http") and not upstream_messages_count("jupyter")


@pytest.mark.parametrize(
    ("path", "base", "relative"),
    [
        ("/notebooks/nb/api/kernels", "/notebooks/nb", "api/kernels"),
        ("/notebooks/nb/api/kernels?x=1", "/notebooks/nb", "api/kernels"),
        ("/notebooks/nb", "/notebooks/nb", ""),
        ("/notebooks/nbx/api", "/notebooks/nb", "notebooks/nbx/api"),
        ("/v1/models", "", "v1/models"),
    ],
)
def test_relative_path(path: str, base: str, relative: str) -> None:
    assert relative_path(path, base) == relative


def _message(msg_type: str) -> dict[str, object]:
    msg: dict[str, object] = Session().msg(msg_type, content={})
    return msg


def _json_frame(msg_type: str) -> str:
    return json.dumps({**_message(msg_type), "channel": "shell"}, default=str)


def _v1_frame(msg_type: str) -> bytes:
    pack = Session().pack
    return bytes(serialize_msg_to_ws_v1(_message(msg_type), "shell", pack))


def _binary_frame(msg_type: str) -> bytes:
    msg = {**_message(msg_type), "channel": "shell", "buffers": [b"\x00\x01"]}
    return bytes(serialize_binary_message(msg))


FRAMINGS = [_json_frame, _v1_frame, _binary_frame]


@pytest.mark.parametrize("frame", FRAMINGS)
@pytest.mark.parametrize(
    ("msg_type", "counts"),
    [
        ("execute_request", True),
        ("complete_request", True),
        ("inspect_request", True),
        ("input_reply", True),
        ("interrupt_request", True),
        ("shutdown_request", True),
        ("comm_msg", True),
        ("kernel_info_request", False),  # sent on every (re)connection
        ("comm_info_request", False),
        ("debug_request", False),  # the debugger's sidebar asks by itself
        ("usage_request", False),
    ],
)
def test_kernel_messages(frame: object, msg_type: str, counts: bool) -> None:
    data = frame(msg_type)  # type: ignore[operator]
    assert kernel_message_type(data) == msg_type
    assert message_is_activity("jupyter", KERNEL, data) is counts


@pytest.mark.parametrize("data", ["not json", b"\x00\x01", b"", "[]", '{"header": 3}'])
def test_a_kernel_message_that_cannot_be_read_counts(data: bytes | str) -> None:
    assert kernel_message_type(data) is None
    assert message_is_activity("jupyter", KERNEL, data)


@pytest.mark.parametrize(
    ("data", "counts"),
    [
        ('["stdin", "ls\\r"]', True),
        ('["set_size", 24, 80, 600, 800]', False),
        ("garbage", True),
    ],
)
def test_terminal_messages(data: str, counts: bool) -> None:
    assert message_is_activity("jupyter", TERMINAL, data) is counts


def test_other_sockets_count_every_client_message() -> None:
    assert message_is_activity("jupyter", "api/events/subscribe", "{}")
    assert message_is_activity("http", KERNEL, _json_frame("kernel_info_request"))


def test_a_held_terminal_is_greeted_as_its_server_would() -> None:
    """JupyterLab's terminal sends no keystroke before the server's setup message."""
    assert json.loads(held_greeting("jupyter", TERMINAL) or "") == ["setup", {}]
    assert held_greeting("jupyter", KERNEL) is None
    assert held_greeting("http", TERMINAL) is None
