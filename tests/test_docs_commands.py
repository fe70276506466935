"""Every shell command in README.md and loadtests/README.md runs as written against what the
docs say to start (item 5 of the "new user's first hour" issue).

The fenced ``sh`` blocks are extracted and each command is classified below; a command the
table does not know fails the test, so a new one gets checked too. Cheap commands run for
real, with shorter durations (``--run-time``, users, ``--wake-idle``), against a Dormant the
test starts from the config the docs start (``make run``'s embedded default, with the tiny
reference model instead of the small one under the same name ``ref-small``, so the test
does not generate 500 MB of weights; ``examples/churn.yaml``; ``examples/notebooks.yaml``),
on a free port instead of 8080/8081 (``DORMANT_URL`` points the CLI there) and with a
temporary state directory. Expensive ones (``make``, the benches, ``dormant up``) are
parsed: ``make -n``, the bench's own argument parser, ``dormant check -c`` for a config.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import pytest
import yaml

from loadtests.launcher import DormantProcess
from loadtests.stats import SCHEMA_PATH
from snapshots import CriuEngine
from tests.conftest import ROOT, free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

DOCS = [ROOT / "README.md", ROOT / "loadtests" / "README.md"]
RUN_TIME = {"warm": "5s", "wake": "20s", "churn": "10s", "notebook": "40s"}


def shell_commands(text: str) -> list[str]:
    """The commands of every fenced ``sh`` block: continuations joined, comments dropped."""
    commands = []
    for block in re.findall(r"^```sh\n(.*?)^```", text, re.M | re.S):
        joined = re.sub(r"\\\n\s*", "", block)
        for line in joined.splitlines():
            line = re.sub(r"\s+#\s.*$", "", line).strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


@dataclass(frozen=True)
class Plan:
    target: str  # which Dormant it needs: default, churn, notebooks, or "" (none)
    mode: str  # run, make, bench, config


def classify(command: str) -> Plan:
    """What the test does with ``command`` (AssertionError for one it does not know)."""
    if command.startswith("make "):
        return Plan("", "make")
    if command.startswith(".venv/bin/dormant up -c "):
        return Plan("", "config")
    if re.match(r"\.venv/bin/python -m loadtests\.(bench|pool_bench) ", command):
        return Plan("", "bench")
    if command.startswith(".venv/bin/locust "):
        scenario = re.search(r"--scenario (\w+)", command)
        assert scenario, command
        name = scenario.group(1)
        target = {"churn": "churn", "notebook": "notebooks"}.get(name, "default")
        return Plan(target, "run")
    if command.startswith(".venv/bin/dormant ") and " alice" in command:
        return Plan("notebooks", "run")
    if command.startswith(("curl ", ".venv/bin/dormant ")):
        return Plan("default", "run")
    raise AssertionError(f"a documented command this test does not know: {command}")


def adapt(command: str, port: int, state: Path, results: Path) -> str:
    """The command with the test's port, state directory, results and short durations."""
    out = re.sub(r"(127\.0\.0\.1|localhost):808[01]", f"127.0.0.1:{port}", command)
    scenario = re.search(r"--scenario (\w+)", out)
    if scenario:
        out = re.sub(r"--run-time \d+s", f"--run-time {RUN_TIME[scenario.group(1)]}", out)
    out = re.sub(r"-u \d+ -r \d+", "-u 2 -r 2", out)
    out = re.sub(r"--wake-idle \d+", "--wake-idle 1", out)
    out = out.replace("~/.local/state/dormant/", f"{state}/").replace(".state/", f"{state}/")
    return out.replace("results/", f"{results}/")


def test_every_documented_command_is_known() -> None:
    commands = [c for doc in DOCS for c in shell_commands(doc.read_text())]
    assert len(commands) >= 15, commands
    plans = [classify(c) for c in commands]
    assert {p.target for p in plans} >= {"default", "churn", "notebooks"}


def _config(source: Path, port: int, state: Path) -> dict[str, object]:
    config = yaml.safe_load(source.read_text())
    config["listen"] = f"127.0.0.1:{port}"
    config["state_dir"] = str(state)
    for workload in config["workloads"]:
        command = workload.get("command")
        if command and "--size" in command:  # the small reference model, as tiny
            command[command.index("--size") + 1] = "tiny"
    return config


SOURCES = {
    "default": ROOT / "activator" / "default.yaml",
    "churn": ROOT / "examples" / "churn.yaml",
    "notebooks": ROOT / "examples" / "notebooks.yaml",
}


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("results")


def _run(command: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", command],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
        env=env,
        check=False,
    )


def _check_locust(command: str, done: subprocess.CompletedProcess[str], results: Path) -> None:
    output = done.stdout + done.stderr
    # exit 1 only for a latency gate: a failed request, an abort or a crash fails the test
    assert done.returncode in (0, 1), output[-3000:]
    if done.returncode == 1:
        failed = [line for line in output.splitlines() if "SLO gate FAILED" in line]
        assert failed and not any("fail_ratio" in line for line in failed), output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    report = re.search(r"--report-json (\S+)", command)
    if report:
        data = json.loads(Path(report.group(1)).read_text())
        jsonschema.validate(data, json.loads(SCHEMA_PATH.read_text()))
        assert data["aborted"] is None and data["request_types"]["E2E"]["failures"] == 0


@contextlib.contextmanager
def _dormant(target: str, tmp: Path) -> Iterator[tuple[DormantProcess, Path]]:
    port, state = free_port(), tmp / f"state-{target}"
    process = DormantProcess(tmp / f"run-{target}", _config(SOURCES[target], port, state))
    process.start(timeout=120)
    try:
        yield process, state
    finally:
        process.stop()


@pytest.mark.parametrize("target", ["default", "churn", "notebooks"])
def test_documented_commands_run_as_written(
    target: str, tmp_path: Path, results: Path, criu: CriuEngine
) -> None:
    commands = [c for doc in DOCS for c in shell_commands(doc.read_text())]
    mine = [c for c in commands if classify(c).target == target]
    assert mine
    with _dormant(target, tmp_path) as (process, state):
        env = dict(os.environ, DORMANT_URL=process.url, DORMANT_STATE_DIR=str(state))
        for command in mine:
            adapted = adapt(command, process.port, state, results)
            done = _run(adapted, env)
            if command.startswith(".venv/bin/locust "):
                _check_locust(adapted, done, results)
            else:
                assert done.returncode == 0, f"{adapted}\n{done.stdout}\n{done.stderr}"
                if command.startswith("curl "):
                    assert "data: [DONE]" in done.stdout, done.stdout


def test_expensive_commands_parse(tmp_path: Path) -> None:
    from loadtests import bench, pool_bench

    commands = [c for doc in DOCS for c in shell_commands(doc.read_text())]
    env = dict(os.environ, DORMANT_STATE_DIR=str(tmp_path / "state"))
    for command in commands:
        plan = classify(command)
        argv = shlex.split(command)
        if plan.mode == "make":
            done = subprocess.run(
                ["make", "-n", *argv[1:]], capture_output=True, text=True, cwd=ROOT, timeout=60
            )
            assert done.returncode == 0, done.stderr
        elif plan.mode == "bench":
            module = bench if argv[2] == "loadtests.bench" else pool_bench
            module.parse_args(argv[3:])
        elif plan.mode == "config":
            config = argv[argv.index("-c") + 1]
            done = _run(f".venv/bin/dormant check -c {shlex.quote(config)}", env)
            assert done.returncode == 0, done.stdout + done.stderr
