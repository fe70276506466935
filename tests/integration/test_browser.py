"""JupyterLab in a real browser, through Dormant, across a hibernation.

Headless Chromium (Debian's ``chromium``, installed by ``scripts/setup-browser.sh``; driven
by Playwright over its pipe, which never downloads a browser of its own here) opens
``/notebooks/NAME/lab?token=…`` on a real ``dormant up``. Everything the page loads —
HTML, scripts, styles, the REST API, the kernel and event WebSockets — goes through
Dormant's proxy under the notebook server's ``base_url``.

The test runs a cell, hibernates the server (a CRIU checkpoint), and watches the page:
Dormant closes the kernel's WebSocket with 1012, JupyterLab reconnects at once, Dormant
holds the reconnection without waking the server (an admin's hibernate is not undone by
the page), the next cell wakes it (a restore), and sees the variable the first one set.
Another notebook, with a short ``idle_after``, is left open in a tab: the page's own
polling does not keep it awake, it hibernates with the tab open and stays so across
several idle periods, and running a cell wakes it. On failure a screenshot, the page's
HTML, the browser's console and Dormant's log are kept under ``results/browser/`` (the
path is printed).

Skipped, with the reason, only where there is no ``chromium`` (setup could not install
it); ``make test`` sets ``DORMANT_REQUIRE_BROWSER=1`` when there is one, and then a
browser that cannot start fails the test, as does a missing one.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from activator.config.settings import load_settings
from activator.notebooks import runtime_dir
from snapshots import CriuEngine, SnapshotStore
from tests.conftest import ROOT
from tests.integration.harness import Dormant

NAME = "lab"
ADMIN = "browser-admin-token"
TOKEN = "browser-jupyter-token-0123456789"
IDLE = "idle"
"""A notebook that hibernates by itself after IDLE_AFTER seconds without a user's action."""
IDLE_TOKEN = "browser-idle-token-0123456789"
IDLE_AFTER = 6.0
ARTIFACTS = ROOT / "results" / "browser"
TIMEOUT_MS = 120_000
"""Any one wait in the page (the machine running the suite may be busy)."""

CHROMIUM_FLAGS = [  # and --headless, from Playwright
    "--no-sandbox",  # root, as in CI
    "--disable-gpu",
    "--disable-dev-shm-usage",  # containers with a small /dev/shm
    # The machine's network is closed: without these Chromium keeps dialling out.
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

RECORD_WEBSOCKETS = """
(() => {
  const Native = window.WebSocket;
  const sockets = (window.__dormantSockets = []);
  window.WebSocket = class extends Native {
    constructor(...args) {
      super(...args);
      const entry = { url: String(args[0]), opened: false, code: null };
      sockets.push(entry);
      this.addEventListener('open', () => { entry.opened = true; });
      this.addEventListener('close', (event) => { entry.code = event.code; });
    }
  };
})();
"""
"""Runs in the page before JupyterLab: every WebSocket it opens, and its close code."""

RECONNECTED = """
(kernel) => {
  const mine = window.__dormantSockets.filter(
    (s) => s.url.includes(`/api/kernels/${kernel}/channels`));
  const closed = mine.findIndex((s) => s.code === 1012);
  return closed >= 0 && mine.slice(closed + 1).some((s) => s.opened);
}
"""
"""True once the kernel's socket was closed with 1012 and a later one for it is open."""

KERNEL_CONNECTED = """
() => window.__dormantSockets.some((s) => s.url.includes('/channels?') && s.opened)
"""
"""True once a kernel's WebSocket is open (JupyterLab can run code then, not before)."""

HELD_KERNEL_SOCKET = """
() => {
  const mine = window.__dormantSockets.filter((s) => s.url.includes('/channels?'));
  const closed = mine.findIndex((s) => s.code === 1012);
  return closed >= 0 && mine.slice(closed + 1).some((s) => s.opened && s.code === null);
}
"""
"""True once a kernel socket was closed with 1012 and a later one is open now."""

TERMINAL_RECONNECTED = """
() => {
  const mine = window.__dormantSockets.filter((s) => s.url.includes('/terminals/websocket/'));
  const closed = mine.findIndex((s) => s.code === 1012);
  return closed >= 0 && mine.slice(closed + 1).some((s) => s.opened);
}
"""
"""True once the terminal's socket was closed with 1012 and a later one for it is open."""

TERMINAL_CONNECTED = """
() => window.__dormantSockets.some((s) => s.url.includes('/terminals/websocket/') && s.opened)
"""

NOTEBOOK_CARD = '.jp-LauncherCard[data-category="Notebook"]'
KERNEL_IDLE = '.jp-NotebookPanel .jp-Notebook-ExecutionIndicator[data-status="idle"]'
TERMINAL_CARD = '.jp-LauncherCard[data-category="Other"]:has-text("Terminal")'
CELLS = ".jp-NotebookPanel .jp-Notebook .jp-Cell"


@pytest.fixture(scope="module")
def chromium() -> str:
    """Debian's chromium, or skip (fail under DORMANT_REQUIRE_BROWSER=1)."""
    path = shutil.which("chromium")
    if path is not None:
        return path
    reason = (
        "no `chromium` on PATH: `make setup` installs Debian's chromium "
        "(scripts/setup-browser.sh; needs root and apt-get)"
    )
    if os.environ.get("DORMANT_REQUIRE_BROWSER") == "1":
        pytest.fail(f"a browser is required (DORMANT_REQUIRE_BROWSER=1) but there is {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def lab(
    tmp_path_factory: pytest.TempPathFactory, criu: CriuEngine, chromium: str
) -> Iterator[Dormant]:
    tmp = tmp_path_factory.mktemp("browser")
    (tmp / "admin-token").write_text(ADMIN + "\n")
    (tmp / "lab-token").write_text(TOKEN + "\n")
    (tmp / "idle-token").write_text(IDLE_TOKEN + "\n")
    lab_dirs = [
        "--LabApp.user_settings_dir={state_dir}/notebooks/{name}/lab/user-settings",
        "--LabApp.workspaces_dir={state_dir}/notebooks/{name}/lab/workspaces",
    ]
    d = Dormant(
        tmp,
        [
            {
                "name": IDLE,
                "kind": "jupyter",
                "token_file": str(tmp / "idle-token"),
                "idle_after": IDLE_AFTER,
                "args": lab_dirs,
            },
            {
                "name": NAME,
                "kind": "jupyter",
                "token_file": str(tmp / "lab-token"),
                "idle_after": 0,
                # JupyterLab keeps its settings and open tabs (the workspace) under ~ by
                # default; this server's own pair (as docs/notebooks.md suggests) keeps
                # the test from reading an earlier run's.
                "args": [
                    "--LabApp.user_settings_dir={state_dir}/notebooks/{name}/lab/user-settings",
                    "--LabApp.workspaces_dir={state_dir}/notebooks/{name}/lab/workspaces",
                ],
            },
        ],
        admin_token_file=str(tmp / "admin-token"),
    )
    d.start()
    yield d
    d.stop()
    for w in load_settings(d.config).workloads:  # a short runtime dir may be outside tmp
        shutil.rmtree(runtime_dir(w, d.state), ignore_errors=True)


@dataclass
class Tab:
    """A browser page and what its console said (with seconds since the browser started)."""

    page: Any
    console: list[str] = field(default_factory=list)


@pytest.fixture
def tab(tmp_path: Path, chromium: str) -> Iterator[Tab]:
    """A page in a fresh headless Chromium profile, with its console recorded."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:  # dev extra not installed, yet chromium is here
        pytest.fail(f"chromium is installed but Playwright is not ({exc}): pip install -e .[dev]")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=chromium,
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 800},
        )
        try:
            context.set_default_timeout(TIMEOUT_MS)
            context.add_init_script(RECORD_WEBSOCKETS)
            tab = Tab(context.pages[0] if context.pages else context.new_page())
            started = time.monotonic()

            def record(kind: str, text: str) -> None:
                tab.console.append(f"{time.monotonic() - started:8.3f} {kind}: {text}")

            tab.page.on("console", lambda m: record(m.type, m.text))
            tab.page.on("pageerror", lambda e: record("pageerror", str(e)))
            tab.page.on("requestfailed", lambda r: record("requestfailed", f"{r.url} {r.failure}"))
            yield tab
        finally:
            context.close()


@contextmanager
def _evidence_on_failure(tab: Tab, d: Dormant) -> Iterator[None]:
    """On any failure inside: keep a screenshot, the page's HTML, the browser's console
    and Dormant's log under results/browser/, and print where."""
    try:
        yield
    except BaseException:
        where = ARTIFACTS / time.strftime("%Y%m%dT%H%M%S")
        where.mkdir(parents=True, exist_ok=True)
        try:
            tab.page.screenshot(path=str(where / "screenshot.png"), full_page=True, timeout=10_000)
            (where / "page.html").write_text(tab.page.content())
        except Exception as exc:  # the page itself may be what broke
            (where / "screenshot-failed.txt").write_text(repr(exc))
        (where / "console.log").write_text("\n".join(tab.console) + "\n")
        shutil.copy(d.log_path, where / "dormant.log")
        print(f"browser test evidence (screenshot, page, console, Dormant log): {where}")
        raise


def _admin(d: Dormant, method: str, path: str) -> dict[str, Any]:
    response = d.admin(method, path, headers={"Authorization": f"Bearer {ADMIN}"})
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    return data


def _run_cell(page: Any, index: int, code: str) -> Any:
    """Type ``code`` into cell ``index`` (0-based), run it with Shift+Enter; returns the cell."""
    cell = page.locator(CELLS).nth(index)
    cell.locator(".cm-content").click()
    page.keyboard.type(code)
    page.keyboard.press("Shift+Enter")
    return cell


def test_lab_runs_a_cell_across_hibernation_in_a_real_browser(lab: Dormant, tab: Tab) -> None:
    page = tab.page
    timings: dict[str, float] = {}
    mark = time.monotonic()

    def lap(what: str) -> None:
        nonlocal mark
        now = time.monotonic()
        timings[what] = now - mark
        mark = now

    base = f"{lab.url}/notebooks/{NAME}"
    with _evidence_on_failure(tab, lab):
        page.goto(f"{base}/lab?token={TOKEN}")
        page.locator(NOTEBOOK_CARD).first.click()  # the Launcher's "Python 3" notebook
        page.wait_for_function(KERNEL_CONNECTED)
        page.locator(KERNEL_IDLE).wait_for()
        lap("lab loaded, notebook open, kernel idle")
        assert "token=" not in page.url, "JupyterLab takes the token out of the address bar"

        first = _run_cell(page, 0, "x = 41 + 1")
        first.locator('.jp-InputPrompt:has-text("[1]:")').wait_for()
        lap("first cell ran")
        kernels = httpx.get(
            f"{base}/api/kernels", headers={"Authorization": f"token {TOKEN}"}, timeout=60
        ).json()
        assert len(kernels) == 1, kernels
        kernel = kernels[0]["id"]
        assert _admin(lab, "GET", f"/workloads/{NAME}")["counters"]["boots"] == 1

        hibernated = _admin(lab, "POST", f"/workloads/{NAME}/hibernate")
        lap("hibernated (admin call)")
        assert hibernated["state"] == "hibernated", hibernated
        snapshot = hibernated["last_checkpoint"]["snapshot"]
        store = SnapshotStore(lab.state / "snapshots")
        assert snapshot in [s.id for s in store.list(NAME)], "the snapshot is in the store"

        # JupyterLab saw its kernel socket closed with 1012 and opened a new one; Dormant
        # holds that connection without waking the server: the page reconnecting is not
        # its user acting, and must not undo the admin's hibernate.
        page.wait_for_function(RECONNECTED, arg=kernel, timeout=TIMEOUT_MS)
        lap("page reconnected (held)")
        time.sleep(1.0)  # the page's kernel_info_request and polls arrive meanwhile
        view = _admin(lab, "GET", f"/workloads/{NAME}")
        assert view["state"] == "hibernated", view
        assert view["counters"]["restores"] == 0, view["counters"]

        second = _run_cell(page, 1, "print(x)")  # the user acts: this wakes it
        output = second.locator(".jp-OutputArea-output")
        output.wait_for()
        assert output.inner_text().strip() == "42"
        second.locator('.jp-InputPrompt:has-text("[2]:")').wait_for()
        lap("print(x) answered 42 (restore)")
        view = _admin(lab, "GET", f"/workloads/{NAME}")
        assert view["state"] == "ready", view
        assert view["last_wake"]["path"] == "restore", view["last_wake"]
        assert view["counters"]["boots"] == 1 and view["counters"]["restores"] == 1
        listed = httpx.get(
            f"{base}/api/kernels", headers={"Authorization": f"token {TOKEN}"}, timeout=60
        ).json()
        assert [k["id"] for k in listed] == [kernel], "the same kernel, not a restarted one"
        workspaces = lab.state / "notebooks" / NAME / "lab" / "workspaces"  # from `args`
        _wait(
            "JupyterLab keeps its layout in the server's own directory",
            lambda: any(workspaces.glob("*.jupyterlab-workspace")),
        )
    print("browser test: " + ", ".join(f"{k} {v:.2f}s" for k, v in timings.items()))


def _processes(pid: int) -> list[tuple[int, str]]:
    """``pid`` and its descendants, with their command names."""
    out = [(pid, Path(f"/proc/{pid}/comm").read_text().strip())]
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            out += _processes(int(child))
    return out


def _wait(what: str, ready: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f}s"
        time.sleep(0.1)


def _type_line(page: Any, line: str) -> None:
    page.keyboard.type(line)
    page.keyboard.press("Enter")


def test_lab_terminal_across_hibernation_in_a_real_browser(
    lab: Dormant, tab: Tab, tmp_path: Path
) -> None:
    """A terminal opened from JupyterLab's launcher (xterm.js over the terminal
    WebSocket): `less` running full-screen does not keep the server from hibernating
    (it holds /dev/pts/N, not /dev/tty); the shell's state survives; a process holding
    /dev/tty does block it, with CRIU's reason, until it lets go."""
    page = tab.page
    base = f"{lab.url}/notebooks/{NAME}"
    out = tmp_path / "out"  # the terminal writes here; the test reads from the disk
    out.mkdir()
    with _evidence_on_failure(tab, lab):
        page.goto(f"{base}/lab/workspaces/terminal?token={TOKEN}")  # a fresh layout
        page.locator(TERMINAL_CARD).first.click()
        page.wait_for_function(TERMINAL_CONNECTED)
        page.locator(".jp-Terminal").first.click()  # keyboard focus
        _type_line(page, f"export DT=kept-$((6 * 7)); echo up > {out}/up; less /etc/services")
        _wait("the shell ran the line", (out / "up").exists)
        pid = _admin(lab, "GET", f"/workloads/{NAME}")["pid"]
        _wait("less is running", lambda: "less" in {c for _, c in _processes(pid)})

        hibernated = _admin(lab, "POST", f"/workloads/{NAME}/hibernate")
        assert hibernated["state"] == "hibernated", hibernated
        page.wait_for_function(TERMINAL_RECONNECTED, timeout=TIMEOUT_MS)
        page.keyboard.press("q")  # quit less, restored mid-screen
        _type_line(page, f'echo "$DT $(whoami) $(id -u)" > {out}/after')
        _wait("the restored shell answered", lambda: (out / "after").exists())
        _wait("the line was written", lambda: (out / "after").read_text() != "")
        assert (out / "after").read_text() == "kept-42 root 0\n"
        assert _admin(lab, "GET", f"/workloads/{NAME}")["last_wake"]["path"] == "restore"

        _type_line(page, f"exec 3</dev/tty; echo held > {out}/held")
        _wait("the shell opened /dev/tty", (out / "held").exists)
        response = lab.admin(
            "POST", f"/workloads/{NAME}/hibernate", headers={"Authorization": f"Bearer {ADMIN}"}
        )
        assert response.status_code == 500, response.text
        assert "holds /dev/tty open" in response.json()["error"]["message"]
        assert _admin(lab, "GET", f"/workloads/{NAME}")["state"] == "ready"

        _type_line(page, f"exec 3<&-; echo let-go > {out}/closed")
        _wait("the shell closed /dev/tty", (out / "closed").exists)
        assert _admin(lab, "POST", f"/workloads/{NAME}/hibernate")["state"] == "hibernated"


def _wait_state(d: Dormant, name: str, state: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        view = _admin(d, "GET", f"/workloads/{name}")
        if view["state"] == state:
            return view
        assert time.monotonic() < deadline, f"{name} not {state} within {timeout:.0f}s: {view}"
        time.sleep(0.25)


def test_a_tab_left_open_lets_the_notebook_hibernate(lab: Dormant, tab: Tab) -> None:
    """The issue: an open JupyterLab tab polls api/kernels, api/sessions, api/terminals,
    api/contents, lab/api/workspaces (and saves its layout) every 10 s; with idle_after
    20 s the server never hibernated. Here the tab stays open across several idle
    periods: the server hibernates, stays hibernated while the page polls and reconnects,
    and the next cell wakes it with its variable intact."""
    page = tab.page
    base = f"{lab.url}/notebooks/{IDLE}"
    polls: list[tuple[float, str]] = []
    page.on(
        "request",
        lambda r: (
            polls.append((time.monotonic(), r.url))
            if f"/notebooks/{IDLE}/api/" in r.url or f"/notebooks/{IDLE}/lab/api/" in r.url
            else None
        ),
    )
    with _evidence_on_failure(tab, lab):
        page.goto(f"{base}/lab?token={IDLE_TOKEN}")
        page.locator(NOTEBOOK_CARD).first.click()
        page.wait_for_function(KERNEL_CONNECTED)
        page.locator(KERNEL_IDLE).wait_for()
        first = _run_cell(page, 0, "x = 41 + 1")
        first.locator('.jp-InputPrompt:has-text("[1]:")').wait_for()
        acted = time.monotonic()
        assert _admin(lab, "GET", f"/workloads/{IDLE}")["state"] == "ready"

        # Hands off: only the page's own housekeeping from now on.
        view = _wait_state(lab, IDLE, "hibernated", IDLE_AFTER + 60)
        slept = time.monotonic()
        assert slept - acted >= IDLE_AFTER - 0.5
        assert view["counters"]["checkpoints"] == 1, view["counters"]
        # Two more idle periods with the tab open: it polls, reconnects, and stays asleep.
        # (Waiting in the page lets Playwright deliver its request events meanwhile.)
        page.wait_for_timeout((2 * IDLE_AFTER + 2) * 1000)
        view = _admin(lab, "GET", f"/workloads/{IDLE}")
        assert view["state"] == "hibernated", view
        assert view["counters"]["restores"] == 0 and view["counters"]["boots"] == 1, view
        # The page kept at it meanwhile: it polled, and its kernel socket, closed by the
        # hibernation (1012), reconnected at once and was held.
        since_acted = [url for at, url in polls if at > acted]
        assert any("/api/kernels" in url for url in since_acted), since_acted
        assert page.evaluate(HELD_KERNEL_SOCKET), "the page's kernel socket was reconnected"

        second = _run_cell(page, 1, "print(x)")  # the user comes back
        output = second.locator(".jp-OutputArea-output")
        output.wait_for()
        assert output.inner_text().strip() == "42", "the variable survived"
        view = _admin(lab, "GET", f"/workloads/{IDLE}")
        assert view["state"] == "ready" and view["last_wake"]["path"] == "restore", view
        assert view["counters"]["boots"] == 1 and view["counters"]["restores"] == 1

        # And again: the tab still open, the next idle period hibernates it.
        view = _wait_state(lab, IDLE, "hibernated", IDLE_AFTER + 60)
        assert view["counters"]["checkpoints"] == 2, view["counters"]
    log = lab.log()
    assert f"{IDLE}: ready -> draining (idle for" in log
