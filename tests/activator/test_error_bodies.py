"""Error bodies go to any client: never an internal address (the API server's, a pod's), and
a 503/504 always says when to come back (activator.errors.scrub, activator.edge)."""

from __future__ import annotations

import pytest

from activator.edge import error_response
from activator.errors import QueueFull, UpstreamError, WakeFailed, WakeTimeout, scrub

API_DOWN = (
    "ref could not start: GET /apis/apps/v1/namespaces/x/deployments/m/scale: the API server "
    "did not answer (HTTPSConnectionPool(host='10.244.2.1', port=6443): Max retries exceeded "
    "with url: /apis/apps/v1 (Caused by NewConnectionError('Failed to establish a new "
    "connection: [Errno 111] Connection refused')))"
)


@pytest.mark.parametrize(
    ("text", "gone", "kept"),
    [
        (API_DOWN, ["10.244.2.1"], ["ref could not start", "Connection refused"]),
        ("pod 10.1.2.3:8000 answered 502", ["10.1.2.3"], ["answered 502"]),
        ("at [fd00::1]:8000 or fe80::2", ["fd00::1", "fe80::2"], ["at "]),
        ("see https://api.internal:6443/readyz", ["api.internal", "https://"], ["see"]),
        ("host='api.internal'", ["api.internal"], ["host="]),
        ("waited 01:40:12, v1.2.3, 3:4, 2.5s", [], ["01:40:12", "v1.2.3", "3:4", "2.5s"]),
    ],
)
def test_scrub_removes_addresses_and_keeps_the_rest(
    text: str, gone: list[str], kept: list[str]
) -> None:
    out = scrub(text)
    assert not [g for g in gone if g in out], out
    assert all(k in out for k in kept), out


@pytest.mark.parametrize(
    "error",
    [
        WakeFailed(API_DOWN, workload="ref"),
        WakeTimeout("ref could not take the request within 25s", workload="ref"),
        UpstreamError("upstream 10.244.2.7:8000 closed the connection"),
        QueueFull("ref: 64 requests already wait", headers={"Retry-After": "7"}),
    ],
)
def test_every_unavailable_answer_has_retry_after_and_no_address(error: Exception) -> None:
    assert isinstance(error, WakeFailed | WakeTimeout | UpstreamError | QueueFull)
    response = error_response(error)
    body = bytes(response.body).decode()
    assert "10.244" not in body
    if response.status_code in (503, 504):
        assert int(response.headers["retry-after"]) >= 1
    assert error.message in str(error)  # the log (and the admin view) keep the whole text
