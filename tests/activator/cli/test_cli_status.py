"""`dormant status` as a table (``status_text`` over an activator's /-/workloads answer):
the pool's columns, and a recovered workload's last error."""

from __future__ import annotations

from typing import Any

from activator.cli.status import status_text

ENGINE = {"name": "criu", "reason": "ok"}


def _workload(**extra: Any) -> dict[str, Any]:
    return {
        "name": "a",
        "state": "ready",
        "models": ["m"],
        "pid": 42,
        "in_flight": 0,
        "waiting": 0,
        "last_wake": {"path": "boot", "seconds": 2.93},
        "snapshot": None,
        "reason": "boot",
        "last_error": "",
        **extra,
    }


def test_status_shows_the_pool_and_each_workloads_tier_and_memory() -> None:
    out = status_text(
        {
            "engine": ENGINE,
            "pool": {"kind": "cpu", "used_bytes": 900 << 20, "budget_bytes": 2 << 30},
            "workloads": [
                _workload(tier="resident", memory={"held_bytes": 900 << 20}),
                _workload(name="b", state="hibernated", tier="hibernated", memory={}),
            ],
        }
    )
    engine, pool, header, first, second = out.splitlines()
    assert engine == "engine: criu (ok)"
    assert pool == "pool: cpu, 900.0MiB of 2.0GiB in use"
    assert header.split()[:4] == ["NAME", "STATE", "TIER", "MEMORY"]
    assert first.split()[:4] == ["a", "ready", "resident", "900.0MiB"]
    assert second.split()[:4] == ["b", "hibernated", "hibernated", "-"]


def test_status_without_a_pool_has_no_pool_columns() -> None:
    out = status_text({"engine": ENGINE, "pool": None, "workloads": [_workload()]})
    assert "pool:" not in out and "TIER" not in out
    assert out.splitlines()[2].split()[:3] == ["a", "ready", "m"]


def test_status_says_why_a_recovered_workload_had_trouble() -> None:
    """A restore that failed verification and fell back to a boot is not a plain 'ready'."""
    failed = _workload(last_error="restore failed: blake3 mismatch", last_error_at=1e9)
    out = status_text({"engine": ENGINE, "workloads": [failed]})
    assert "last error at" in out and "blake3 mismatch" in out


def test_status_shows_where_each_notebook_is_and_where_its_token_is() -> None:
    notebooks = [
        _workload(name="alice", kind="jupyter", url="/notebooks/alice/", models=[]),
        _workload(name="bob", kind="jupyter", url="/notebooks/bob/", token_file="/etc/bob.token"),
        _workload(name="web", kind="http", url="/apps/web/"),
        _workload(name="llm", kind="http", url=None),
    ]
    out = status_text({"engine": ENGINE, "workloads": notebooks}, "http://127.0.0.1:8080/")
    addresses = out.split("\n\n", 1)[1].splitlines()
    assert addresses == [
        "notebook alice: http://127.0.0.1:8080/notebooks/alice/ "
        "(log in with the token in STATE_DIR/notebooks/alice/token)",
        "notebook bob: http://127.0.0.1:8080/notebooks/bob/ (log in with the token in "
        "/etc/bob.token)",
        "web: http://127.0.0.1:8080/apps/web/",
    ]


def test_status_says_where_a_wakes_seconds_went_when_the_runtime_says() -> None:
    phases = {"scaled": 0.02, "scheduled": 0.1, "running": 1.25, "ready": 1.9}
    out = status_text(
        {
            "engine": ENGINE,
            "workloads": [
                _workload(
                    name="ref", last_wake={"path": "restore", "seconds": 2.0, "phases": phases}
                ),
                _workload(name="plain"),
            ],
        }
    )
    assert "ref: restore 2.00s: scaled 0.02s, scheduled 0.10s, running 1.25s, ready 1.90s" in out
    assert "plain:" not in out
