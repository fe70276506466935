"""The page a browser gets while its workload wakes: it says so, shows how far along the
wake probably is (from how long the last one took), and reloads itself until the real
page answers. No script, no external asset: a meta refresh and inline CSS.

Only for a ``GET``/``HEAD`` that asks for HTML (``Accept: text/html``, what a browser
sends when it opens an address) and is not a stream; API clients keep waiting as before.
"""

from __future__ import annotations

from html import escape

from fastapi.responses import HTMLResponse

__all__ = ["REFRESH_SECONDS", "waking_page", "wants_waking_page"]

REFRESH_SECONDS = 1
"""How often the page reloads itself (and its Retry-After)."""


def wants_waking_page(method: str, accept: str, stream: bool) -> bool:
    """Whether a request that finds its workload asleep gets the waking page."""
    if stream or method.upper() not in ("GET", "HEAD"):
        return False
    kinds = {part.split(";", 1)[0].strip().lower() for part in accept.split(",")}
    return "text/html" in kinds or "application/xhtml+xml" in kinds


def _progress(elapsed: float, expected: float | None) -> tuple[int, str]:
    """(percent shown, the sentence under the bar). Never 100% before it is ready."""
    if expected is None or expected <= 0:
        return 5, (
            f"Waking for {elapsed:.0f} s. This is its first start here, so there is no "
            "estimate yet (a cold boot can take a while)."
        )
    percent = max(5, min(95, round(100 * elapsed / expected)))
    left = expected - elapsed
    when = f"about {left:.0f} s left" if left >= 1 else "any moment now"
    return percent, f"Waking for {elapsed:.0f} s; the last wake took {expected:.1f} s ({when})."


def waking_page(name: str, elapsed: float, expected: float | None) -> HTMLResponse:
    """503 + Retry-After with a small page that reloads itself every REFRESH_SECONDS."""
    percent, sentence = _progress(elapsed, expected)
    title = f"{escape(name)} is waking up"
    body = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="{REFRESH_SECONDS}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} — Dormant</title>
<style>
body {{ font: 16px/1.5 system-ui, sans-serif; max-width: 36em; margin: 15vh auto;
       padding: 0 1em; color: #222; }}
.bar {{ height: .6em; background: #e4e4e4; border-radius: .3em; overflow: hidden; }}
.bar div {{ height: 100%; width: {percent}%; background: #3b7dd8; }}
small {{ color: #666; }}
</style></head>
<body data-dormant="waking" data-workload="{escape(name)}">
<h1>{title}</h1>
<p><b>{escape(name)}</b> was asleep to free its resources; Dormant is restoring it now.
This page reloads by itself and shows it as soon as it is ready.</p>
<div class="bar" role="progressbar" aria-valuenow="{percent}" aria-valuemin="0"
 aria-valuemax="100"><div></div></div>
<p><small>{escape(sentence)}</small></p>
</body></html>
"""
    return HTMLResponse(
        body,
        status_code=503,
        headers={"Retry-After": str(REFRESH_SECONDS), "Cache-Control": "no-store"},
    )
