"""``python -m loadtests.bench``: TTFT warm / after wake from a snapshot / after a cold boot.

Starts two local Dormants one after the other, each serving the reference model (default
size ``small``, the GPT-2 124M shape): one with ``engine: auto`` (CRIU) and one with
``engine: restart``. Measures:

* warm: headless Locust, the ``warm`` scenario, one user streaming back to back;
* wake (restore): sequential httpx streaming requests, each after an admin hibernate;
* wake burst: headless Locust, the ``wake`` scenario: hibernate, then N users at once;
* cold boot: sequential httpx streaming requests on the restart engine, each after an admin
  hibernate (which stops the process there).

Prints one side-by-side table with ratios and the machine; writes ``bench.csv``,
``bench.json`` (``loadtests/report.schema.json``), ``bench_samples.csv``, ``bench.txt``,
``bench.png``, Locust's CSVs and logs (``locust/``) and each Dormant's log (``logs/``) under
``--out``. A sample that fails is retried (up to as many extra attempts as samples asked
for) and counted as failed in its row; a step that fails ends its row, not the run: the row
says why and the report is still written (exit 1). Progress goes to stderr, one line per
step. Every process it starts is stopped by PID.
Dormant listens on a free loopback port and picks one for the model server, unless
``--port`` and ``--upstream-port`` say which.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx

from loadtests.admin import AdminClient, AdminError
from loadtests.launcher import LocalDormant, StartError, port_arg
from loadtests.openai_stream import (
    StreamResult,
    completion_request,
    make_prompt,
    stream_completion,
)
from loadtests.report import (
    Machine,
    Row,
    render_table,
    to_json,
    write_chart,
    write_csv,
    write_samples_csv,
)
from loadtests.samples import Sample, read_samples
from loadtests.stats import write_json

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
PROG_ENV = "LOADTESTS_PROG"
"""How the bench names itself in its usage line: ``dormant bench`` sets it."""


class BenchError(Exception):
    """A step of the bench failed; the message says which and why."""


@dataclass(frozen=True)
class Plan:
    """How much to measure."""

    size: str
    samples: int
    cold_samples: int
    warm_seconds: int
    burst_users: int
    max_tokens: int
    prompt_length: int

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Plan:
        quick = args.quick
        size = args.size or ("tiny" if quick else "small")
        samples = args.samples or (3 if quick else 5)
        return cls(
            size=size,
            samples=samples,
            cold_samples=args.cold_samples or (2 if quick else min(samples, 3)),
            warm_seconds=args.warm_seconds or (5 if quick else 15),
            burst_users=args.burst_users or (3 if quick else 4),
            max_tokens=args.max_tokens or (8 if quick else 16),
            prompt_length=args.prompt_length,
        )


class Progress:
    """One line per step on stderr, with the time since the bench started."""

    def __init__(self, name: str = "bench") -> None:
        self.name = name
        self.started = time.monotonic()

    def __call__(self, message: str) -> None:
        print(f"[{self.name} {time.monotonic() - self.started:6.1f}s] {message}", file=sys.stderr)
        sys.stderr.flush()


def default_weights_dir() -> Path:
    """Where the reference server keeps weights by default: $DORMANT_STATE_DIR/refserver or
    ./.state/refserver; reusing it saves regenerating the small model's 500 MB each run."""
    base = os.environ.get("DORMANT_STATE_DIR")
    return Path(base) / "refserver" if base else Path(".state") / "refserver"


class Bench:
    """Runs the plan against local Dormants and collects the rows."""

    def __init__(
        self,
        plan: Plan,
        out: Path,
        weights_dir: Path,
        say: Progress,
        ports: tuple[int | None, int | None] = (None, None),
    ) -> None:
        self.plan = plan
        self.out = out
        self.weights_dir = weights_dir
        self.say = say
        self.port, self.upstream_port = ports

    def _dormant(self, workdir: Path, engine: str) -> LocalDormant:
        return LocalDormant.reference(
            workdir,
            engine,
            self.plan.size,
            self.weights_dir,
            port=self.port,
            upstream_port=self.upstream_port,
        )

    # -- one request -----------------------------------------------------------------------

    def _request(self, client: httpx.Client, model: str) -> StreamResult:
        """Stream one completion; BenchError when it did not deliver a first token."""
        prompt = make_prompt(self.plan.prompt_length, salt=uuid.uuid4().hex[:12])
        path, body = completion_request("completions", model, prompt, self.plan.max_tokens)
        result = stream_completion(client, path, body)
        if not result.ok or result.ttft is None:
            raise BenchError(f"streamed request to {model} failed: {result.error}")
        return result

    def _warm_up(self, dormant: LocalDormant, client: httpx.Client) -> None:
        began = time.monotonic()
        self._request(client, dormant.model)
        with AdminClient(dormant.url) as admin:
            view = admin.workload(dormant.workload)
        wake = view.get("last_wake") or {}
        self.say(
            f"{dormant.engine}: first request took {time.monotonic() - began:.1f}s"
            f" ({wake.get('path', '?')} {wake.get('seconds', 0):.2f}s; warm-up, not measured)"
        )

    # -- locust ----------------------------------------------------------------------------

    def _locust(self, label: str, dormant: LocalDormant, args: list[str], limit: float) -> Path:
        """Run headless Locust; return its raw samples CSV. Failed requests make Locust exit 1
        and are in the samples (the row counts them); no samples at all is a BenchError."""
        folder = self.out / "locust"
        folder.mkdir(parents=True, exist_ok=True)
        samples = folder / f"{label}_samples.csv"
        command = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless"]
        command += ["-H", dormant.url, "--model", dormant.model, "--csv", str(folder / label)]
        command += ["--max-tokens", str(self.plan.max_tokens)]
        command += ["--prompt-length", str(self.plan.prompt_length)]
        command += ["--samples-out", str(samples), "--only-summary", *args]
        log = folder / f"{label}.log"
        with log.open("wb") as out:
            try:
                proc = subprocess.run(
                    command, stdout=out, stderr=subprocess.STDOUT, timeout=limit, check=False
                )
            except subprocess.TimeoutExpired as exc:
                raise BenchError(f"locust {label} ran past {limit:g}s; see {log}") from exc
        if proc.returncode not in (0, 1) or not samples.exists():
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
            raise BenchError(f"locust {label} exited {proc.returncode}; {log}:\n{tail}")
        return samples

    def warm(self, dormant: LocalDormant, engine: str) -> Row:
        seconds = self.plan.warm_seconds
        self.say(f"{dormant.engine}: warm: headless locust, 1 user, {seconds}s")
        path = self._locust(
            "warm", dormant, ["-u", "1", "-r", "1", "--run-time", f"{seconds}s"], seconds + 120
        )
        row = Row("warm", engine, f"locust, 1 user, {seconds}s", duration_s=float(seconds))
        fill_from_samples(row, read_samples(path), "TTFT")
        if not row.ttfts:
            raise BenchError(f"locust warm recorded no TTFT samples ({path})")
        self.say(f"{dormant.engine}: warm: {len(row.ttfts)} TTFT, {len(row.failures)} failed")
        return row

    def burst(self, dormant: LocalDormant) -> Row:
        users = self.plan.burst_users
        self.say(f"{dormant.engine}: wake burst: headless locust, hibernate then {users} users")
        args = ["--scenario", "wake", "--burst-only", "-u", str(users), "-r", str(users)]
        path = self._locust("wake_burst", dormant, [*args, "--run-time", "600s"], 660)
        row = Row(f"wake burst x{users}", "criu", f"locust, {users} users at once")
        fill_from_samples(row, read_samples(path), "TTFT-wake")
        if not row.ttfts:
            raise BenchError(
                f"wake burst: none of {users} users got a first token"
                + (f"; first failure: {row.failures[0]}" if row.failures else "")
            )
        with AdminClient(dormant.url) as admin:
            view = admin.workload(dormant.workload)
        wake = view.get("last_wake") or {}
        snapshot = (view.get("snapshot") or {}).get("bytes")
        how = wake.get("path", "?")
        self.say(
            f"{dormant.engine}: wake burst: {len(row.ttfts)} TTFT-wake samples after a {how},"
            f" {len(row.failures)} failed"
        )
        row.snapshot_bytes = snapshot
        row.server_wake = [float(wake["seconds"])] if how == "restore" else []
        row.note = (
            f"{users} concurrent first requests share one {how};"
            " a server that generates one request at a time makes the later ones queue"
            + ("" if how == "restore" else f" (not a restore: {view.get('last_error')})")
        )
        return row

    # -- sequential wake / cold samples ----------------------------------------------------

    def cycles(self, dormant: LocalDormant, scenario: str, expect: str, count: int) -> Row:
        """``count`` samples of: hibernate through the admin API, then one streamed request.

        A wake that took another path than ``expect`` (a restore that failed and fell back to
        a boot) is not a sample of this row: it is reported in the row's note and retried; a
        hibernate or a request that fails is counted as a failure of the row and retried; up
        to ``count`` extra attempts in all.
        """
        row = Row(scenario, "criu" if expect == "restore" else "restart", "httpx, sequential")
        sizes: list[int] = []
        other: list[str] = []
        with (
            AdminClient(dormant.url) as admin,
            httpx.Client(base_url=dormant.url, timeout=600, trust_env=False) as client,
        ):
            for attempt in range(1, 2 * count + 1):
                if len(row.ttfts) == count:
                    break
                try:
                    view = admin.hibernate(dormant.workload)
                    if (view.get("snapshot") or {}).get("bytes"):
                        sizes.append(int(view["snapshot"]["bytes"]))
                    result = self._request(client, dormant.model)
                    view = admin.workload(dormant.workload)
                except (BenchError, AdminError, httpx.HTTPError) as exc:
                    row.failures.append(f"attempt {attempt}: {exc}")
                    self.say(f"{dormant.engine}: {scenario} attempt {attempt} FAILED: {exc}")
                    continue
                ttft, header = result.ttft or 0.0, result.wake
                wake = view.get("last_wake") or {}
                if wake.get("path") != expect or not header:
                    why = view.get("last_error") or "no reason given"
                    other.append(f"{wake.get('path', 'no wake')} ({why})")
                    self.say(
                        f"{dormant.engine}: {scenario} attempt {attempt}: expected a {expect},"
                        f" got {other[-1]} (X-Dormant-Wake: {header}); not counted"
                    )
                    continue
                add_result(row, result)
                row.server_wake.append(float(wake["seconds"]))
                self.say(
                    f"{dormant.engine}: {scenario} {len(row.ttfts)}/{count}: TTFT {ttft:.3f}s"
                    f" (X-Dormant-Wake: {header})"
                )
        if other:
            row.note = f"{len(other)} wake(s) were not a {expect}: {'; '.join(other)}"
        if not row.ttfts:
            why = "; ".join(other + row.failures)
            raise BenchError(f"{scenario}: no wake was a {expect}: {why}")
        if sizes:
            row.snapshot_bytes = sorted(sizes)[len(sizes) // 2]
        return row

    # -- the two Dormants ------------------------------------------------------------------

    def run_criu(self, workdir: Path, rows: list[Row]) -> list[Row]:
        with self._dormant(workdir, "auto") as dormant:
            self.say(f"auto: Dormant up at {dormant.url} (log {dormant.log_path})")
            with AdminClient(dormant.url) as admin:
                engine = admin.engine()
            with httpx.Client(base_url=dormant.url, timeout=600, trust_env=False) as client:
                self._warm_up(dormant, client)
            rows.append(self.warm(dormant, str(engine.get("name", "?"))))
            if engine.get("name") != "criu":
                why = f"engine auto chose {engine.get('name')}: {engine.get('reason')}"
                self.say(f"auto: no snapshots here ({why}); skipping the wake rows")
                rows.append(Row("wake (restore)", "criu", "-", note=f"not measured: {why}"))
                return rows
            rows.append(self.cycles(dormant, "wake (restore)", "restore", self.plan.samples))
            rows.append(self.burst(dormant))
            self.say("auto: stopping Dormant")
        return rows

    def run_restart(self, workdir: Path, rows: list[Row]) -> list[Row]:
        with self._dormant(workdir, "restart") as dormant:
            self.say(f"restart: Dormant up at {dormant.url} (log {dormant.log_path})")
            with httpx.Client(base_url=dormant.url, timeout=600, trust_env=False) as client:
                self._warm_up(dormant, client)
            rows.append(self.cycles(dormant, "cold boot", "boot", self.plan.cold_samples))
            self.say("restart: stopping Dormant")
        return rows

    def keep_log(self, workdir: Path, engine: str) -> Path | None:
        """Copy that Dormant's log under ``--out/logs`` (its workdir is temporary)."""
        source = workdir / "dormant.log"
        if not source.exists():
            return None
        target = self.out / "logs" / f"dormant-{engine}.log"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        return target

    def phase(self, workdir: Path, engine: str, rows: list[Row], planned: list[str]) -> bool:
        """Run one Dormant's rows into ``rows``; a failure becomes a row saying why (and
        where its log is kept) for each row not measured. True when nothing failed."""
        measured: list[Row] = []
        run = self.run_criu if engine == "auto" else self.run_restart
        try:
            measured = run(workdir, measured)
            return not any(r.failures for r in measured)
        except (BenchError, StartError, AdminError, httpx.HTTPError) as exc:
            log = self.keep_log(workdir, engine)
            where = f"; Dormant's log: {log}" if log else ""
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            self.say(f"{engine}: FAILED: {exc}{where}")
            done = {r.scenario for r in measured}
            for scenario in planned:
                if scenario not in done:
                    measured.append(Row(scenario, "-", "-", note=f"FAILED: {first}{where}"))
            return False
        finally:
            self.keep_log(workdir, engine)
            rows += measured


def fill_from_samples(row: Row, samples: list[Sample], first_token_type: str) -> None:
    """A Locust run's raw samples into ``row``: TTFT of ``first_token_type``, TPOT, ITL, and
    E2E with its tokens; failed E2E samples as the row's failures."""
    for s in samples:
        if s.request_type == first_token_type and s.ok:
            row.ttfts.append(s.seconds)
        elif s.request_type == "TPOT" and s.ok:
            row.tpots.append(s.seconds)
        elif s.request_type == "ITL" and s.ok:
            row.itls.append(s.seconds)
        elif s.request_type == "E2E":
            if s.ok:
                row.e2es.append(s.seconds)
                row.tokens.append(s.length)
            else:
                row.failures.append(s.error)


def add_result(row: Row, result: StreamResult) -> None:
    """One successful streamed request into ``row``."""
    if result.ttft is not None:
        row.ttfts.append(result.ttft)
        if result.tokens > 1:
            row.tpots.append((result.e2e - result.ttft) / (result.tokens - 1))
    row.itls.extend(result.gaps)
    row.e2es.append(result.e2e)
    row.tokens.append(result.tokens)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=os.environ.get(PROG_ENV) or "python -m loadtests.bench",
        description="TTFT warm / after wake from a snapshot / after a cold boot, side by side.",
    )
    parser.add_argument("--out", type=Path, default=Path("results"), help="results directory")
    parser.add_argument("--size", choices=["tiny", "small"], help="reference model size")
    parser.add_argument("--samples", type=int, help="wake samples (default 5, quick 3)")
    parser.add_argument("--cold-samples", type=int, help="cold boot samples (default 3)")
    parser.add_argument("--warm-seconds", type=int, help="warm locust run-time (default 15)")
    parser.add_argument("--burst-users", type=int, help="wake burst users (default 4)")
    parser.add_argument("--max-tokens", type=int, help="max_tokens per request (default 16)")
    parser.add_argument("--prompt-length", type=int, default=64, help="prompt characters")
    parser.add_argument(
        "--weights-dir",
        type=Path,
        help="reference model weights (default $DORMANT_STATE_DIR/refserver or .state/refserver)",
    )
    parser.add_argument(
        "--port",
        type=port_arg,
        help="Dormant's listen port on 127.0.0.1, for both Dormants in turn (default: a free one)",
    )
    parser.add_argument(
        "--upstream-port",
        type=port_arg,
        help="the reference model server's port (default: a free one Dormant picks)",
    )
    parser.add_argument("--quick", action="store_true", help="size tiny, fewer samples: for tests")
    args = parser.parse_args(argv)
    if args.port is not None and args.port == args.upstream_port:
        parser.error(f"--port and --upstream-port must differ (both {args.port})")
    for name in ("samples", "cold_samples", "warm_seconds", "burst_users", "max_tokens"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the bench; 0 when every row was measured without a failed sample, 1 otherwise (the
    report is written either way)."""
    args = parse_args(argv)
    plan = Plan.from_args(args)
    say = Progress()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    weights = (args.weights_dir or default_weights_dir()).resolve()
    machine = Machine.here(plan.size)
    say(f"plan: {plan}; weights in {weights}; results in {out}")
    bench = Bench(plan, out, weights, say, (args.port, args.upstream_port))
    rows: list[Row] = []
    burst = f"wake burst x{plan.burst_users}"
    with tempfile.TemporaryDirectory(prefix="dormant-bench-") as tmp:
        ok = bench.phase(Path(tmp) / "auto", "auto", rows, ["warm", "wake (restore)", burst])
        ok = bench.phase(Path(tmp) / "restart", "restart", rows, ["cold boot"]) and ok
    table = render_table(rows, machine)
    print(table)
    (out / "bench.txt").write_text(table + "\n")
    write_csv(rows, machine, out / "bench.csv")
    write_json(out / "bench.json", to_json(rows, machine))
    write_samples_csv(rows, out / "bench_samples.csv")
    write_chart(rows, machine, out / "bench.png")
    say(
        f"wrote {out}/bench.txt, bench.csv, bench.json, bench_samples.csv, bench.png,"
        " locust/, logs/"
    )
    if not ok:
        say(
            "FAILED: some samples or steps failed; the table says which, the logs are in"
            f" {out}/logs and {out}/locust"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
