"""Locust users that stream OpenAI-compatible completions and record TTFT, ITL and E2E.

Targets Dormant or any OpenAI-compatible server (``--host``). Each streamed request records,
as separate Locust request types named by the model:

* ``TTFT``: time to the first non-empty content chunk (``TTFT-wake`` when the request waited
  for a wake: the response carries ``X-Dormant-Wake``, or it opened a ``wake`` burst);
* ``ITL``: inter-token latency, one sample per gap between content chunks;
* ``TPOT``: time per output token of one request, (E2E - TTFT) / (tokens - 1), for requests
  with at least two tokens (one sample per request, where ITL has one per gap);
* ``E2E``: the whole request. Every request has exactly one E2E sample, and failures (non-200,
  no content, broken stream) are recorded there, so E2E's failure ratio is the request
  failure ratio. TTFT and E2E carry the token count (content chunks) as response_length.

Scenarios (``--scenario``): warm, wake, churn, notebook; see ``loadtests.scenarios``. warm and
churn send one unrecorded request per model before any user starts (``--no-prewarm`` skips it),
so that what they measure is warm. ``--report-json FILE`` writes every request type's sample
count and percentiles (``loadtests/report.schema.json``'s ``locust`` shape).
SLO gates (``--slo-ttft-p50/--slo-ttft-p95/--slo-fail-ratio/--slo``) are judged on quit and
make the process exit 1 when one fails. Examples::

    locust -f loadtests/locustfile.py --headless -u 4 -r 4 --run-time 30s \\
        -H http://127.0.0.1:8080 --scenario warm --model ref-small --slo-ttft-p95 1.5
    locust -f loadtests/locustfile.py --headless -u 8 -r 8 --run-time 60s \\
        -H http://127.0.0.1:8080 --scenario wake --model ref-small --wake-idle 5
"""

from __future__ import annotations

import logging
import time
import uuid
from argparse import Namespace
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gevent
import httpx
from gevent.event import Event
from locust import User, events, task
from locust.argument_parser import LocustArgumentParser
from locust.env import Environment
from locust.exception import StopUser
from locust.runners import MasterRunner, WorkerRunner

from loadtests.admin import AdminClient, AdminError
from loadtests.gates import Gate, Summary, evaluate, parse_gates, standard_gates
from loadtests.notebook import KernelSession, NotebookAuthError, NotebookError, notebook_workloads
from loadtests.notebook import unavailable_message as notebook_unavailable
from loadtests.openai_stream import StreamResult, completion_request, make_prompt
from loadtests.openai_stream import stream_completion as stream
from loadtests.samples import Sample, write_samples
from loadtests.scenarios import SCENARIOS, ZipfPicker, parse_models
from loadtests.stats import locust_report, write_json

log = logging.getLogger("loadtests")
logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request otherwise

ABORT_EXIT_CODE = 2


class RequestFailed(Exception):
    """A streamed request that did not deliver a complete answer."""


@dataclass
class _Run:
    """What the users of one test run share."""

    go: Event = field(default_factory=Event)
    abort: str | None = None
    models: list[str] = field(default_factory=list)
    zipf: ZipfPicker | None = None
    gates: list[Gate] = field(default_factory=list)
    burst_left: int = 0
    notebook: str = ""
    started: float = 0.0
    keep_samples: bool = False
    samples: list[Sample] = field(default_factory=list)


RUN = _Run()


def options(environment: Environment) -> Namespace:
    """The parsed command line (always there when Locust runs this file)."""
    if environment.parsed_options is None:
        raise RuntimeError("the load test options were not parsed")
    return environment.parsed_options


@events.init_command_line_parser.add_listener
def add_options(parser: LocustArgumentParser) -> None:
    """The scenario, request shape, admin and SLO options."""
    parser.add_argument(
        "--scenario",
        choices=sorted(SCENARIOS),
        default="warm",
        help="; ".join(f"{k}: {v}" for k, v in SCENARIOS.items()),
    )
    parser.add_argument(
        "--model",
        default="ref-small",
        help="model name(s), comma-separated; warm and wake use the first, churn all of them",
    )
    parser.add_argument(
        "--api", choices=["completions", "chat"], default="completions", help="which endpoint"
    )
    parser.add_argument("--max-tokens", type=int, default=16, help="max_tokens per request")
    parser.add_argument(
        "--prompt-length",
        type=int,
        default=64,
        help="prompt length in characters (= tokens for byte-level tokenizers)",
    )
    parser.add_argument(
        "--think-time", type=float, default=0.0, help="seconds a user waits between requests"
    )
    parser.add_argument("--request-timeout", type=float, default=300.0, help="seconds")
    parser.add_argument(
        "--admin-token",
        default="",
        env_var="DORMANT_ADMIN_TOKEN",
        is_secret=True,
        help="bearer token for Dormant's /-/* admin API",
    )
    parser.add_argument(
        "--workload",
        default="",
        help="workload to hibernate (wake, notebook); default: the one serving the first model",
    )
    parser.add_argument(
        "--wake-idle",
        type=float,
        default=0.0,
        help="wake: seconds to stay hibernated before the burst",
    )
    parser.add_argument(
        "--burst-only",
        action="store_true",
        default=False,
        help="wake: stop the test once every user's burst request finished",
    )
    parser.add_argument(
        "--zipf-s", type=float, default=1.1, help="churn: Zipf exponent over --model's names"
    )
    parser.add_argument(
        "--notebook-url",
        default="",
        help="notebook: Jupyter server base URL (default: HOST/notebooks/WORKLOAD)",
    )
    parser.add_argument(
        "--notebook-token",
        default="",
        is_secret=True,
        help="notebook: the Jupyter server's token (Dormant keeps it in"
        " STATE_DIR/notebooks/WORKLOAD/token)",
    )
    parser.add_argument("--notebook-code", default="print(6 * 7)", help="notebook: code to run")
    parser.add_argument("--samples-out", default="", help="write every raw sample to this CSV")
    parser.add_argument(
        "--report-json",
        default="",
        help="write n, mean and percentiles per request type, and output tokens/s, as JSON",
    )
    parser.add_argument(
        "--no-prewarm",
        action="store_true",
        default=False,
        help="warm, churn: do not send one unrecorded request per model before the run",
    )
    parser.add_argument(
        "--slo-ttft-p50", type=float, default=None, help="gate: TTFT p50 <= SECONDS"
    )
    parser.add_argument(
        "--slo-ttft-p95", type=float, default=None, help="gate: TTFT p95 <= SECONDS"
    )
    parser.add_argument(
        "--slo-fail-ratio",
        type=float,
        default=None,
        help="gate: failed requests / requests (E2E; EXEC for notebook) <= RATIO",
    )
    parser.add_argument(
        "--slo",
        default="",
        help="more gates, TYPE:METRIC=LIMIT comma-separated, e.g. 'TTFT-wake:p95=5,ITL:p99=0.2'"
        " (METRIC: p50 p90 p95 p99 max avg fail_ratio)",
    )


@events.init.add_listener
def configure(environment: Environment, **_: Any) -> None:
    """Validate the options once; a bad option ends the run before any user starts."""
    opts = environment.parsed_options
    if opts is None:
        return
    try:
        RUN.models = parse_models(opts.model)
        RUN.zipf = ZipfPicker(RUN.models, opts.zipf_s)
        requests_type = "EXEC" if opts.scenario == "notebook" else "E2E"
        RUN.gates = standard_gates(
            opts.slo_ttft_p50, opts.slo_ttft_p95, opts.slo_fail_ratio, requests_type
        )
        RUN.gates += parse_gates(opts.slo)
        if opts.max_tokens < 1 or opts.prompt_length < 1:
            raise ValueError("--max-tokens and --prompt-length must be >= 1")
    except ValueError as exc:
        raise SystemExit(f"loadtests: {exc}") from None
    RUN.keep_samples = bool(opts.samples_out)
    if opts.scenario == "churn":
        shares = ", ".join(f"{m} {p:.0%}" for m, p in RUN.zipf.probabilities().items())
        log.info("churn over %d models (Zipf s=%g): %s", len(RUN.models), opts.zipf_s, shares)


def _abort(environment: Environment, message: str) -> None:
    """Stop the run with ``message`` and exit code 2: the scenario cannot run on this target."""
    RUN.abort = message
    log.error("%s", message)
    environment.process_exit_code = ABORT_EXIT_CODE
    RUN.go.set()
    if environment.runner is not None:
        gevent.spawn(environment.runner.quit)


def _fire(
    environment: Environment,
    request_type: str,
    name: str,
    seconds: float,
    length: int = 0,
    error: str | None = None,
) -> None:
    environment.events.request.fire(
        request_type=request_type,
        name=name,
        response_time=seconds * 1000.0,
        response_length=length,
        exception=RequestFailed(error) if error else None,
        context={},
    )


def _admin(environment: Environment) -> AdminClient:
    opts = options(environment)
    host = environment.host or OpenAIStreamUser.host
    return AdminClient(host, opts.admin_token, timeout=opts.request_timeout)


def _hibernate(environment: Environment, admin: AdminClient, name: str) -> None:
    """Bring ``name`` to a snapshot (or to cold, on the restart engine), timed as ADMIN."""
    view = admin.workload(name)
    if view.get("state") not in ("ready", "hibernated"):
        log.info("wake: %s is %s; waking it first so it can hibernate", name, view.get("state"))
        admin.wake(name)
    began = time.perf_counter()
    view = admin.hibernate(name)
    took = time.perf_counter() - began
    _fire(environment, "ADMIN", f"hibernate {name}", took)
    snapshot = view.get("snapshot") or {}
    log.info(
        "%s is %s after %.2fs (snapshot %s bytes)",
        name,
        view.get("state"),
        took,
        snapshot.get("bytes", "-"),
    )


def _prepare_wake(environment: Environment) -> None:
    opts = options(environment)
    with _admin(environment) as admin:
        name = opts.workload or admin.workload_for_model(RUN.models[0])
        _hibernate(environment, admin, name)
    if opts.wake_idle > 0:
        log.info("wake: staying hibernated for %.1fs before the burst", opts.wake_idle)
        gevent.sleep(opts.wake_idle)


def _prepare_notebook(environment: Environment) -> None:
    opts = options(environment)
    with _admin(environment) as admin:
        workloads = admin.workloads()
        notebooks = notebook_workloads(workloads)
        if not notebooks:
            _abort(environment, notebook_unavailable(admin.base_url, workloads))
            return
        name = opts.workload or str(notebooks[0]["name"])
        RUN.notebook = name
        _hibernate(environment, admin, name)


def _prewarm(environment: Environment) -> None:
    """One unrecorded request per model the scenario asks for, so the run starts warm."""
    opts = options(environment)
    models = RUN.models if opts.scenario == "churn" else RUN.models[:1]
    host = environment.host or OpenAIStreamUser.host
    with httpx.Client(
        base_url=host, timeout=httpx.Timeout(opts.request_timeout, connect=30.0), trust_env=False
    ) as client:
        for model in models:
            began = time.perf_counter()
            path, body = completion_request(opts.api, model, make_prompt(8, "prewarm"), 1)
            result = stream(client, path, body)
            if not result.ok:
                raise PrewarmFailed(f"pre-warm request for {model!r} failed: {result.error}")
            log.info(
                "pre-warm: %s answered in %.2fs (not recorded)", model, time.perf_counter() - began
            )


class PrewarmFailed(Exception):
    """The unrecorded request before the run failed: the target does not serve the model."""


@events.test_start.add_listener
def on_test_start(environment: Environment, **_: Any) -> None:
    """Pre-warm (warm, churn) or hibernate (wake, notebook) before any user starts; users of
    wake and notebook wait for the go signal."""
    RUN.go.clear()
    RUN.abort = None
    RUN.samples.clear()
    RUN.started = time.time()
    opts = options(environment)
    scenario = opts.scenario
    if isinstance(environment.runner, WorkerRunner):
        return  # the master (or the local runner) prepares; workers wait for spawning
    try:
        if scenario == "wake":
            _prepare_wake(environment)
        elif scenario == "notebook":
            _prepare_notebook(environment)
        elif not opts.no_prewarm:
            _prewarm(environment)
            RUN.started = time.time()
    except (AdminError, NotebookError, PrewarmFailed) as exc:
        _abort(environment, f"{scenario} scenario cannot start: {exc}")
    if scenario not in ("wake", "notebook"):
        RUN.go.set()


@events.spawning_complete.add_listener
def on_spawning_complete(user_count: int, **_: Any) -> None:
    """Every user exists: release the burst at once."""
    RUN.burst_left = user_count
    RUN.go.set()


@events.request.add_listener
def keep_sample(
    request_type: str,
    name: str,
    response_time: float,
    response_length: int,
    exception: BaseException | None = None,
    **_: Any,
) -> None:
    """Keep exact samples for ``--samples-out``."""
    if not RUN.keep_samples:
        return
    RUN.samples.append(
        Sample(
            request_type,
            name,
            response_time / 1000.0,
            int(response_length or 0),
            exception is None,
            "" if exception is None else str(exception),
        )
    )


def summaries(environment: Environment) -> dict[str, Summary]:
    """Locust's stats merged per request type (over all names)."""
    out: dict[str, Summary] = {}
    for entry in environment.stats.entries.values():
        summary = out.setdefault(entry.method or "", Summary())
        summary.add(entry.response_times, entry.num_failures)
        summary.length += int(entry.total_content_length)
    return out


@events.quitting.add_listener
def on_quitting(environment: Environment, **_: Any) -> None:
    """Write raw samples; judge the SLO gates and set the exit code."""
    opts = environment.parsed_options
    if opts is None:
        return
    if opts.samples_out and not isinstance(environment.runner, MasterRunner):
        write_samples(Path(opts.samples_out), RUN.samples)
    if opts.report_json and not isinstance(environment.runner, WorkerRunner):
        report = locust_report(
            opts.scenario, summaries(environment), time.time() - (RUN.started or time.time())
        )
        report["aborted"] = RUN.abort
        write_json(Path(opts.report_json), report)
    if not RUN.gates or isinstance(environment.runner, WorkerRunner):
        return
    if RUN.abort:
        print(f"SLO gates not judged: the run was aborted ({RUN.abort})", flush=True)
        return
    verdicts = evaluate(RUN.gates, summaries(environment))
    for verdict in verdicts:
        print(verdict, flush=True)
    failed = [v for v in verdicts if not v.passed]
    if failed:
        print(f"SLO gates: {len(failed)} of {len(verdicts)} FAILED", flush=True)
        environment.process_exit_code = 1
    else:
        print(f"SLO gates: all {len(verdicts)} passed", flush=True)


class OpenAIStreamUser(User):
    """Streams completions in a loop; what it asks for depends on ``--scenario``."""

    host = "http://127.0.0.1:8080"

    def wait_time(self) -> float:
        return float(options(self.environment).think_time)

    def on_start(self) -> None:
        opts = options(self.environment)
        self.opts = opts
        self.scenario: str = opts.scenario
        self.http = httpx.Client(
            base_url=self.host,
            timeout=httpx.Timeout(opts.request_timeout, connect=30.0),
            trust_env=False,
        )
        self.kernel: KernelSession | None = None
        self.bursting = self.scenario in ("wake", "notebook")
        if self.bursting:
            RUN.go.wait(timeout=opts.request_timeout)

    def on_stop(self) -> None:
        self.http.close()
        if self.kernel is not None:
            self.kernel.close()

    @task
    def request(self) -> None:
        if RUN.abort:
            raise StopUser()
        wake, self.bursting = self.bursting, False
        if self.scenario == "notebook":
            self._execute(wake)
        else:
            model = RUN.zipf.pick() if self.scenario == "churn" and RUN.zipf else RUN.models[0]
            self._complete(model, wake)
        if wake and self.scenario == "wake" and self.opts.burst_only:
            RUN.burst_left -= 1
            if RUN.burst_left <= 0 and self.environment.runner is not None:
                gevent.spawn(self.environment.runner.quit)
            raise StopUser()

    def _complete(self, model: str, wake: bool) -> None:
        opts = self.opts
        prompt = make_prompt(opts.prompt_length, salt=uuid.uuid4().hex[:12])
        path, body = completion_request(opts.api, model, prompt, opts.max_tokens)
        result: StreamResult = stream(self.http, path, body)
        env = self.environment
        if result.ttft is not None:
            waited = wake or result.wake is not None
            _fire(env, "TTFT-wake" if waited else "TTFT", model, result.ttft, result.tokens)
        for gap in result.gaps:
            _fire(env, "ITL", model, gap)
        if result.ok and result.ttft is not None and result.tokens > 1:
            _fire(env, "TPOT", model, (result.e2e - result.ttft) / (result.tokens - 1))
        _fire(env, "E2E", model, result.e2e, result.tokens, result.error)

    def _execute(self, wake: bool) -> None:
        opts = self.opts
        name = "kernel"
        began = time.perf_counter()
        if self.kernel is None:
            # Dormant serves a notebook workload NAME under /notebooks/NAME/
            default_url = f"{(self.host or '').rstrip('/')}/notebooks/{RUN.notebook}"
            kernel = KernelSession(
                opts.notebook_url or default_url, opts.notebook_token, opts.request_timeout
            )
            try:
                kernel.open()
            except NotebookAuthError as exc:  # every request would fail the same way
                _fire(self.environment, "EXEC", name, time.perf_counter() - began, 0, str(exc))
                if not RUN.abort:
                    _abort(self.environment, f"notebook scenario cannot run: {exc}")
                raise StopUser() from None
            except NotebookError as exc:
                _fire(self.environment, "EXEC", name, time.perf_counter() - began, 0, str(exc))
                return
            self.kernel = kernel
        opened = time.perf_counter() - began
        result = self.kernel.execute(opts.notebook_code)
        if result.first_output is not None:
            kind = "FIRST-OUTPUT-wake" if wake else "FIRST-OUTPUT"
            _fire(self.environment, kind, name, opened + result.first_output)
        _fire(self.environment, "EXEC", name, opened + result.e2e, len(result.output), result.error)
