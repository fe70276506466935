"""The page a browser gets while its workload wakes (``activator.routes.waking``): who
gets it, and what it says with and without an earlier wake to estimate from."""

from __future__ import annotations

import pytest

from activator.routes.waking import REFRESH_SECONDS, waking_page, wants_waking_page

BROWSER = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,*/*;q=0.8"


@pytest.mark.parametrize(
    ("method", "accept", "stream", "page"),
    [
        ("GET", BROWSER, False, True),
        ("HEAD", "text/html", False, True),
        ("GET", "application/xhtml+xml", False, True),
        ("GET", "*/*", False, False),  # curl, httpx
        ("GET", "application/json", False, False),
        ("GET", "", False, False),
        ("POST", BROWSER, False, False),  # a form post is not repeated by a reload
        ("GET", BROWSER, True, False),
        ("GET", "text/html-fragment", False, False),
    ],
)
def test_who_gets_the_waking_page(method: str, accept: str, stream: bool, page: bool) -> None:
    assert wants_waking_page(method, accept, stream) is page


def test_the_page_reloads_itself_and_estimates_from_the_last_wake() -> None:
    response = waking_page("alice<b>", 3.2, 8.0)
    assert response.status_code == 503
    assert response.headers["retry-after"] == str(REFRESH_SECONDS)
    assert response.headers["cache-control"] == "no-store"
    html = bytes(response.body).decode()
    assert f'http-equiv="refresh" content="{REFRESH_SECONDS}"' in html
    assert "alice&lt;b&gt; is waking up" in html and "<b>alice<b>" not in html
    assert "the last wake took 8.0 s (about 5 s left)" in html
    assert 'aria-valuenow="40"' in html  # 3.2 of 8 s
    assert "<script" not in html and "http://" not in html and "https://" not in html


@pytest.mark.parametrize(
    ("elapsed", "expected", "percent", "says"),
    [
        (0.0, None, 5, "no estimate yet"),
        (30.0, 8.0, 95, "any moment now"),  # longer than last time: never "done"
        (0.1, 8.0, 5, "about 8 s left"),
    ],
)
def test_progress(elapsed: float, expected: float | None, percent: int, says: str) -> None:
    html = bytes(waking_page("nb", elapsed, expected).body).decode()
    assert f'aria-valuenow="{percent}"' in html and says in html
