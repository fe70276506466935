"""What a user types to run the benches: `make help`, `dormant bench --help`, the port options,
and the CLI's timeouts (`status` answers quickly; `hibernate`/`wake` wait for the operation)."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from loadtests import bench, bench_proxy
from tests.conftest import ROOT


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(command), capture_output=True, text=True, timeout=60, cwd=ROOT, check=False
    )


def test_make_help_lists_every_target() -> None:
    makefile = (ROOT / "Makefile").read_text()
    phony = re.search(r"^\.PHONY:(.*)$", makefile, re.M)
    assert phony is not None
    targets = set(phony.group(1).split()) - {"help"}
    defined = set(re.findall(r"^([a-z][a-z-]*):", makefile, re.M)) - {"help"}
    assert defined <= targets, f"targets missing from .PHONY: {defined - targets}"
    done = _run("make", "--no-print-directory", "help")
    assert done.returncode == 0, done.stderr
    listed = set(re.findall(r"^make ([a-z][a-z-]*) +- ", done.stdout, re.M))
    assert listed == targets, (
        f"make help is missing {targets - listed}, or lists {listed - targets}"
    )


def test_dormant_bench_help_names_the_command_it_was_run_as() -> None:
    through_cli = _run(sys.executable, "-m", "activator", "bench", "--help")
    assert through_cli.returncode == 0, through_cli.stderr
    assert through_cli.stdout.startswith("usage: dormant bench "), through_cli.stdout[:200]
    assert "--port PORT" in through_cli.stdout and "--upstream-port" in through_cli.stdout
    wrong = _run(sys.executable, "-m", "activator", "bench", "--samples", "0")
    assert wrong.returncode == 2 and "dormant bench: error: --samples must be >= 1" in wrong.stderr
    direct = _run(sys.executable, "-m", "loadtests.bench", "--help")
    assert direct.stdout.startswith("usage: python -m loadtests.bench "), direct.stdout[:200]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--port", "0"], "--port: expected a TCP port 1-65535, got '0'"),
        (["--upstream-port", "http"], "--upstream-port: expected a TCP port 1-65535, got 'http'"),
        (["--port", "9000", "--upstream-port", "9000"], "must differ (both 9000)"),
    ],
)
def test_bench_port_options_are_checked(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    for parse in (bench.parse_args, bench_proxy._parse_args):
        with pytest.raises(SystemExit) as exit_:
            parse(argv)
        assert exit_.value.code == 2
        assert message in capsys.readouterr().err


def test_bench_ports_reach_the_config(tmp_path: Path) -> None:
    args = bench.parse_args(["--port", "18123", "--upstream-port", "18124"])
    ports = (args.port, args.upstream_port)
    assert ports == (18123, 18124)
    plan = bench.Plan.from_args(args)
    runner = bench.Bench(plan, tmp_path, tmp_path, bench.Progress(), ports)
    dormant = runner._dormant(tmp_path, "restart")
    assert dormant.config()["listen"] == "127.0.0.1:18123"
    assert dormant.url == "http://127.0.0.1:18123"
    assert dormant.config()["workloads"][0]["port"] == 18124
    proxy = bench_proxy._dormant(tmp_path, 18125, 18126)
    assert proxy.config()["listen"] == "127.0.0.1:18125"
    assert proxy.config()["workloads"][0]["port"] == 18126
    free = bench_proxy._dormant(tmp_path)
    assert "port" not in free.config()["workloads"][0]  # Dormant picks a free one


def test_bench_proxy_says_when_its_port_is_taken(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = _run(
            sys.executable,
            "-m",
            "loadtests.bench_proxy",
            "--port",
            str(port),
            "--client",
            "python",
            "--out",
            str(tmp_path),
        )
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"FAILED: listen port {port} is not free on 127.0.0.1" in done.stdout
    assert "Traceback" not in done.stderr


def test_status_answers_quickly_and_lifecycle_calls_wait_for_the_operation() -> None:
    from activator.cli.parser import build_parser  # here: the other tests need only loadtests

    parser = build_parser()
    assert parser.parse_args(["status"]).timeout == 10.0
    for command in ("hibernate", "wake"):
        assert parser.parse_args([command, "ref"]).timeout == 600.0
    status_help = _run(sys.executable, "-m", "activator", "status", "--help").stdout
    assert "seconds to wait for the answer (default 10)" in status_help
    wake_help = _run(sys.executable, "-m", "activator", "wake", "--help").stdout
    assert "seconds to wait for the wake to finish" in wake_help and "(default 600)" in wake_help
