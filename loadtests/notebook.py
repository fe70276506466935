"""A Jupyter kernel driven over its WebSocket, for the ``notebook`` scenario.

Speaks the Jupyter server REST API (``POST /api/kernels``) and the kernel messaging
protocol (v5) over ``/api/kernels/ID/channels``: send an ``execute_request``, time the first
output on iopub, and finish once both the ``execute_reply`` (shell) and the kernel's return
to ``idle`` (iopub) arrived. Also decides whether a target offers
notebook workloads at all (a workload of kind ``jupyter`` in ``GET /-/workloads``).
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
from websockets.exceptions import WebSocketException
from websockets.sync.client import ClientConnection, connect

__all__ = [
    "NOTEBOOK_KIND",
    "ExecResult",
    "KernelSession",
    "NotebookAuthError",
    "NotebookError",
    "notebook_workloads",
    "unavailable_message",
]

NOTEBOOK_KIND = "jupyter"
_OUTPUTS = {"stream", "execute_result", "display_data", "error"}


class NotebookError(Exception):
    """The notebook server or kernel did not do what the scenario needs."""


class NotebookAuthError(NotebookError):
    """The Jupyter server refused us (401/403): no token or the wrong one."""


AUTH_HINT = (
    'the Jupyter server wants its token: pass --notebook-token "$(cat STATE_DIR/notebooks/'
    'WORKLOAD/token)" (Dormant generates it there at the first start; STATE_DIR is'
    " $DORMANT_STATE_DIR or ~/.local/state/dormant unless the config says otherwise)"
)


@dataclass
class ExecResult:
    """One execute: seconds to the first output and to the reply, the text output, error."""

    first_output: float | None
    e2e: float
    output: str
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def notebook_workloads(workloads: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The views of ``GET /-/workloads`` that are notebook servers."""
    return [w for w in workloads if w.get("kind") == NOTEBOOK_KIND]


def unavailable_message(target: str, workloads: list[dict[str, Any]]) -> str:
    """Why the notebook scenario cannot run on ``target``."""
    kinds = sorted({str(w.get("kind", "?")) for w in workloads}) or ["none"]
    return (
        f"notebook workloads are not available on this target: GET {target}/-/workloads lists"
        f" no workload of kind '{NOTEBOOK_KIND}' (kinds present: {', '.join(kinds)})."
        " This Dormant does not proxy notebook servers; the notebook scenario needs one that does."
    )


def execute_request(
    session: str,
    code: str,
    *,
    msg_id: str = "",
    username: str = "loadtests",
    store_history: bool = False,
) -> dict[str, Any]:
    """A Jupyter messaging v5 `execute_request` for the shell channel (WebSocket JSON)."""
    return {
        "header": {
            "msg_id": msg_id or uuid.uuid4().hex,
            "username": username,
            "session": session,
            "msg_type": "execute_request",
            "version": "5.3",
            "date": datetime.now(UTC).isoformat(),
        },
        "parent_header": {},
        "metadata": {},
        "content": {
            "code": code,
            "silent": False,
            "store_history": store_history,
            "user_expressions": {},
            "allow_stdin": False,
            "stop_on_error": True,
        },
        "channel": "shell",
        "buffers": [],
    }


def _output_text(msg_type: str, content: dict[str, Any]) -> str:
    if msg_type == "stream":
        return str(content.get("text", ""))
    if msg_type in ("execute_result", "display_data"):
        return str(content.get("data", {}).get("text/plain", ""))
    return f"{content.get('ename', 'Error')}: {content.get('evalue', '')}"


class KernelSession:
    """A kernel started on a Jupyter server at ``base_url`` and a WebSocket to it."""

    def __init__(
        self,
        base_url: str,
        token: str = "",
        timeout: float = 300.0,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._headers = {"Authorization": f"token {token}"} if token else {}
        self._clock = clock
        self._session = uuid.uuid4().hex
        self.kernel_id: str | None = None
        self._ws: ClientConnection | None = None
        self._stack = contextlib.ExitStack()

    def open(self) -> None:
        """Start a kernel (``POST /api/kernels``) and connect to its channels."""
        try:
            response = httpx.post(
                f"{self.base_url}/api/kernels",
                json={},
                headers=self._headers,
                timeout=self.timeout,
                trust_env=False,
            )
        except httpx.HTTPError as exc:
            raise NotebookError(f"POST /api/kernels: {type(exc).__name__}: {exc}") from exc
        if response.status_code in (401, 403):
            given = "the token given was refused" if self._headers else "no token was given"
            raise NotebookAuthError(
                f"POST /api/kernels: HTTP {response.status_code} ({given}); {AUTH_HINT}"
            )
        if response.status_code not in (200, 201):
            raise NotebookError(
                f"POST /api/kernels: HTTP {response.status_code}: {response.text[:200]}"
            )
        self.kernel_id = str(response.json()["id"])
        ws_url = "ws" + self.base_url.removeprefix("http")
        uri = f"{ws_url}/api/kernels/{self.kernel_id}/channels?session_id={self._session}"
        try:
            connection = connect(uri, additional_headers=self._headers, open_timeout=self.timeout)
            self._ws = self._stack.enter_context(connection)
        except (OSError, WebSocketException) as exc:
            raise NotebookError(f"WebSocket {uri}: {type(exc).__name__}: {exc}") from exc

    def execute(self, code: str) -> ExecResult:
        """Run ``code``; wait for its reply. Kernel errors come back in ``ExecResult.error``."""
        if self._ws is None:
            raise NotebookError("execute before open()")
        request = execute_request(self._session, code)
        msg_id = request["header"]["msg_id"]
        started = self._clock()
        first: float | None = None
        pieces: list[str] = []
        error: str | None = None
        deadline = started + self.timeout
        replied = idle = False  # shell and iopub are not ordered: wait for both ends
        try:
            self._ws.send(json.dumps(request))
            while not (replied and idle):
                remaining = deadline - self._clock()
                if remaining <= 0:
                    raise TimeoutError(f"execute not finished within {self.timeout:g}s")
                reply = json.loads(self._ws.recv(timeout=remaining))
                if reply.get("parent_header", {}).get("msg_id") != msg_id:
                    continue
                msg_type = reply.get("msg_type") or reply.get("header", {}).get("msg_type")
                content = reply.get("content", {})
                if msg_type in _OUTPUTS:
                    if first is None:
                        first = self._clock() - started
                    pieces.append(_output_text(msg_type, content))
                    if msg_type == "error":
                        error = pieces[-1]
                elif msg_type == "status":
                    idle = content.get("execution_state") == "idle"
                elif msg_type == "execute_reply":
                    replied = True
                    if content.get("status") != "ok" and error is None:
                        error = f"execute_reply status {content.get('status')!r}"
        except (TimeoutError, OSError, WebSocketException, ValueError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        return ExecResult(first, self._clock() - started, "".join(pieces), error)

    def close(self) -> None:
        """Close the WebSocket and shut the kernel down."""
        self._stack.close()  # closes the WebSocket
        self._ws = None
        if self.kernel_id is not None:
            # a server that is going away takes its kernels with it: nothing left to release
            with contextlib.suppress(httpx.HTTPError):
                httpx.delete(
                    f"{self.base_url}/api/kernels/{self.kernel_id}",
                    headers=self._headers,
                    timeout=30,
                    trust_env=False,
                )
            self.kernel_id = None
