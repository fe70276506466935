"""Settings: the YAML file, validated once into frozen, typed values.

One definition (pydantic dataclasses) gives the loader, the JSON Schema
(``dormant config schema``), the Kubernetes CRD schema of a workload and
docs/config.md (``dormant config docs``); see ``activator.config.schema``.

Every field has a default (but a workload's ``name`` and the list of ``workloads``),
a one-line doc with its unit, and a concern (``group``) that orders the docs. Existing
keys stay flat. A new family of settings (a ``device:`` or ``kubernetes:`` section) is
a nested ``@dataclass(frozen=True, config=_CONFIG)`` whose fields use the value types
of ``activator.config.types`` and ``_group(...)`` with a docstring each, and a field
of ``Settings`` (or ``WorkloadSettings``) with ``default_factory``; give it a
``mode="before"`` validator calling ``_check_keys`` for "did you mean" on unknown keys.
Its errors read ``device.memory_budget: ...``; docs/config.md gets a ``device`` section.

A bad file fails at load with the key path and the reason, never a traceback:
``workloads[1].idle_after: expected a duration like '30s' or '5m', got 'soon'``.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    model_validator,
)
from pydantic.dataclasses import dataclass
from pydantic_core import ArgsKwargs

import activator.config.jupyter as jupyter
from activator.config.errors import ConfigError
from activator.config.secrets import read_token_file
from activator.config.types import (
    KINDS,
    REJECTED,
    Args,
    BodyBytes,
    Bool,
    Command,
    Count,
    CountOrZero,
    DeviceKind,
    Duration,
    Engine,
    Env,
    ExistingFile,
    HealthPath,
    HookCall,
    Hosts,
    Kind,
    Listen,
    ListenOrEmpty,
    LogFormat,
    LogLevel,
    Memory,
    Models,
    Name,
    OnShutdown,
    PathPrefix,
    Port,
    Priority,
    ReapInterval,
    RuntimeName,
    Size,
    SizeOrZero,
    Str,
    SuspendKind,
    TemplatePath,
    Timeout,
    Tracing,
    is_host_port,
    listen_problem,
    reject,
)
from warmpool.placement import Member, Tier, fits_ever

__all__ = [
    "DEFAULT_CONFIG",
    "GROUPS",
    "JUPYTER_ONLY",
    "NOT_FOR_JUPYTER",
    "ConfigError",
    "DeviceSettings",
    "HooksSettings",
    "KubernetesSettings",
    "Settings",
    "WorkloadSettings",
    "default_state_dir",
    "format_command",
    "load_settings",
    "parse_listen",
    "parse_settings",
    "pool_problems",
]

DEFAULT_CONFIG = Path(__file__).parents[1] / "default.yaml"

GROUPS: dict[str, str] = {
    "server": "Where Dormant listens, keeps its state and what it logs.",
    "security": "Who may use the admin API and read the metrics.",
    "engine": "How state is captured (see `dormant check`).",
    "routing": "Which requests go to a workload.",
    "process": "The server Dormant starts for a workload.",
    "lifecycle": "When servers are hibernated, retried, kept and stopped.",
    "timeouts": "How long each step may take (durations: '250ms', '30s', '5m', '1h' or seconds).",
    "limits": "How much may wait or be in flight at once.",
    "notebooks": "Workloads of kind 'jupyter' only.",
    "pool": "Several workloads sharing one device: the warm pool (docs/warm-pool.md). "
    "A workload's pool keys act only with a `device:` section.",
    "kubernetes": "runtime kubernetes: the workloads are the ScaleToZeroPolicies of a namespace, "
    "their instances the pods of their targets (docs/kubernetes.md).",
}
"""Concerns, in the order docs/config.md lists them; every field names one."""

_WILDCARD_HOSTS = ("0.0.0.0", "::", "")


def _group(group: str, default: Any = dataclasses.MISSING, **extra: Any) -> Any:
    assert group in GROUPS, group
    schema_extra = {"x-dormant-group": group, **extra}
    if default is dataclasses.MISSING:
        return Field(json_schema_extra=schema_extra)
    return Field(default, json_schema_extra=schema_extra)


# -- the definition -----------------------------------------------------------------------

_CONFIG = ConfigDict(extra="forbid", use_attribute_docstrings=True, revalidate_instances="never")
JUPYTER_ONLY = ("root_dir", "python", "args", "token_file")
"""Workload keys only a 'jupyter' workload may use."""
NOT_FOR_JUPYTER = {
    "command": "Dormant builds it; use 'args' for extra arguments and 'python' for the interpreter",
    "models": "notebook servers are routed by path, not by model",
    "path_prefix": "it is always /notebooks/NAME",
    "strip_prefix": "Jupyter's base_url includes the prefix",
    "hosts": "notebook servers are routed by path (/notebooks/NAME/)",
    "health_path": "it is always /notebooks/NAME/api",
}
"""Workload keys a 'jupyter' workload may not use, and why."""
_NOT_EMPTY = ("python", "root_dir", "token_file")


_MEANING = {
    "idle_timeout": "idle_after",
    "idle": "idle_after",
    "hibernate_after": "idle_after",
    "scale_down_after": "idle_after",
    "scaledown_delay": "idle_after",
    "ttl": "idle_after",
    "model": "models",
    "cmd": "command",
    "timeout": "wake_timeout",
    "max_queue": "queue_depth",
    "health": "health_path",
    "healthcheck": "health_path",
}
"""Keys other tools use, and the key that means the same here (suggested before spelling)."""


def _check_keys(data: dict[Any, Any], allowed: Iterable[str]) -> None:
    allowed = list(allowed)
    for key in data:
        if key not in allowed:
            meant = _MEANING.get(str(key).lower().replace("-", "_"))
            close = [meant] if meant in allowed else []
            close = close or difflib.get_close_matches(str(key), allowed, n=1)
            hint = (
                f" (did you mean {close[0]!r}?)" if close else f"; known keys: {', '.join(allowed)}"
            )
            reject(f"unknown key{hint}", str(key))


@dataclass(frozen=True, config=_CONFIG)
class HooksSettings:
    """The server's own API for `suspend: hooks` (vLLM's shown; SGLang:
    POST /release_memory_occupation, POST /resume_memory_occupation)."""

    sleep: HookCall = _group("pool", "POST /sleep?level=1")
    """'METHOD /path' that parks the server's device memory in host RAM."""
    wake: HookCall = _group("pool", "POST /wake_up")
    """'METHOD /path' that brings it back."""


@dataclass(frozen=True, config=_CONFIG)
class DeviceSettings:
    """The device the workloads share (the warm pool). With this section, a workload
    comes in only when it fits; others are suspended or hibernated to make room."""

    kind: DeviceKind = _group("pool", "auto")
    """'nvidia' (NVML: total and per-process memory), 'cpu' (host RAM with memory_budget),
    or 'auto' (nvidia when NVML answers, else cpu)."""
    memory_budget: Size | None = _group("pool", None)
    """Bytes the pool may use ('6GiB'): required on CPU; on a GPU the default is the
    device's total memory minus reserve."""
    reserve: SizeOrZero = _group("pool", 0)
    """Bytes kept free for everything else (taken off the budget)."""
    max_defer: Duration = _group("pool", 30.0)
    """Seconds a workload waiting to come in lets busy residents serve their queues before
    they may be swapped out too (the starvation bound)."""
    index: CountOrZero = _group("pool", 0)
    """kind nvidia: which GPU (NVML index)."""


@dataclass(frozen=True, config=_CONFIG)
class KubernetesSettings:
    """runtime kubernetes: which policies the activator serves and how it reaches their pods.
    The model pods run `dormant exec` (docs/exec.md); the activator asks their supervisors."""

    namespace: Str = _group("kubernetes", "")
    """Namespace whose ScaleToZeroPolicies are the workloads (empty = $POD_NAMESPACE, else the
    service account's namespace, else 'default')."""
    kubeconfig: Str = _group("kubernetes", "")
    """A kubeconfig file (empty = the pod's service account inside a cluster, else
    $KUBECONFIG or ~/.kube/config)."""
    advertise: ListenOrEmpty = _group("kubernetes", "")
    """HOST:PORT where pods and Services reach this activator: a policy's Endpoints point
    here while its pods are not ready (empty = $POD_IP and the port of `listen`)."""
    control_port: Port = _group("kubernetes", 8081)
    """Port of the control API of `dormant exec` in the model pods (its --control)."""
    control_token_file: ExistingFile = _group("kubernetes", "")
    """File holding the bearer token of that control API (empty = $DORMANT_EXEC_TOKEN)."""
    poll_interval: Timeout = _group("kubernetes", 1.0)
    """Seconds between looks at a pod or Endpoints while waiting for them to change."""
    route_timeout: Timeout = _group("kubernetes", 30.0)
    """Seconds the operator may take to point a policy's Endpoints where the activator asked
    (the pods or the activator) before the activator gives up that step."""
    lease_duration: Timeout = _group("kubernetes", 15.0)
    """Seconds a policy's Lease (one activator owns each policy's lifecycle) stays another
    activator's without renewal before this one takes it over."""

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            _check_keys(data, (f.name for f in dataclasses.fields(cls)))
        return data


@dataclass(frozen=True, config=_CONFIG)
class WorkloadSettings:
    """One workload: a server Dormant starts, hibernates and wakes."""

    name: Name = _group("routing")
    """Unique name (required): admin URLs, snapshot directories, /notebooks/NAME."""
    command: Command = _group("process", ())
    """argv (required but for kind jupyter, whose command Dormant builds); may use {port},
    {python}, {state_dir}, {name}."""
    models: Models = _group("routing", ())
    """OpenAI model names this workload serves (routes /v1/* by the `model` field)."""
    kind: Kind = _group("routing", "openai")
    """'openai' (routed by the JSON `model` field), 'http' (routed by path_prefix / hosts) or
    'jupyter' (a notebook server Dormant runs, served under /notebooks/NAME/)."""
    path_prefix: PathPrefix = _group("routing", "")
    """kind http: requests whose path starts with this prefix go here (e.g. '/apps/grafana')."""
    strip_prefix: Bool = _group("routing", False)
    """kind http: remove path_prefix before forwarding."""
    hosts: Hosts = _group("routing", ())
    """kind http: requests whose Host header (without port) is one of these go here."""
    port: Port = _group("process", 0)
    """Port the server listens on; 0 = pick a free one at start."""
    health_path: HealthPath = _group("process", "/health")
    """GET path that answers 200 once the server is ready."""
    env: Env = _group("process", ())
    """Extra environment variables for the command (a mapping NAME: value)."""
    cwd: Str | None = _group("process", None)
    """Working directory for the command (default: Dormant's)."""
    idle_after: Duration = _group("lifecycle", 300.0)
    """Seconds with nothing in flight before it is hibernated; 0 = never. A failed
    attempt is retried after another idle_after."""
    start_timeout: Timeout = _group("timeouts", 300.0)
    """Seconds a cold boot may take until healthy."""
    wake_timeout: Timeout = _group("timeouts", 120.0)
    """Seconds a request may wait in the queue for a wake before 504."""
    queue_depth: Count = _group("limits", 256)
    """Requests that may wait (for a wake or a free slot); more get 503 + Retry-After."""
    max_in_flight: CountOrZero = _group("limits", 0)
    """Requests forwarded at once; more wait in the queue (0 = no limit)."""
    connect_timeout: Timeout = _group("timeouts", 10.0)
    """Seconds to connect to the upstream."""
    first_byte_timeout: Timeout = _group("timeouts", 300.0)
    """Seconds from forwarding a request to the upstream's response headers."""
    stream_idle_timeout: Timeout = _group("timeouts", 300.0)
    """Seconds a response body may go without a byte; there is no total-duration limit."""
    wake_keepalive: Duration = _group("timeouts", 2.0)
    """For `stream: true` requests that wait for a wake: answer at once and send an SSE
    comment this often (seconds) until the first real chunk, so clients and proxies see
    the wait instead of silence and do not time out (0 = off: wait silently)."""
    drain_timeout: Timeout = _group("timeouts", 30.0)
    """Seconds to wait for in-flight requests before giving up a hibernation."""
    checkpoint_timeout: Timeout = _group("timeouts", 120.0)
    """Seconds a checkpoint (CRIU dump and snapshot commit) may take."""
    restore_timeout: Timeout = _group("timeouts", 60.0)
    """Seconds a restore plus the first healthy answer may take."""
    stop_timeout: Timeout = _group("timeouts", 10.0)
    """Seconds between SIGTERM and SIGKILL when stopping."""
    retry_backoff: Duration = _group("lifecycle", 5.0)
    """After a failed start, seconds during which requests fail fast with the reason."""
    keep_snapshots: Count = _group("lifecycle", 1)
    """Verified snapshots kept per workload (older ones are deleted)."""
    memory: Memory = _group("pool", None)
    """Bytes it holds on the device when resident ('900MiB'), or 'auto' (unset): measured
    while it runs (NVML on a GPU; its cgroup or PSS on CPU)."""
    pin: Bool = _group("pool", False)
    """Never swapped out to make room for another workload."""
    priority: Priority = _group("pool", 0)
    """Higher stays resident longer: victims are chosen lowest priority first, then least
    recently used."""
    min_resident: Duration = _group("pool", 0.0)
    """Seconds it stays resident after coming in, whatever the demand (anti-thrash)."""
    suspend: SuspendKind = _group("pool", "none")
    """How it leaves the device when its process may stay: 'none' (hibernate or stop),
    'cuda' (the CUDA driver parks its GPU memory in host RAM) or 'hooks' (its server's API)."""
    hooks: HooksSettings = _group("pool", HooksSettings())
    """suspend hooks: the calls that park and restore its device memory."""
    root_dir: TemplatePath = _group("notebooks", "")
    """kind jupyter: the notebook directory served; may use {state_dir}, {name}
    (default {state_dir}/notebooks/{name}/files, created at start)."""
    python: TemplatePath = _group("notebooks", "")
    """kind jupyter: the Python that runs jupyter_server and the kernels (default: Dormant's)."""
    args: Args = _group("notebooks", ())
    """kind jupyter: extra `jupyter server` arguments, after Dormant's own (so they win)."""
    token_file: ExistingFile = _group("notebooks", "")
    """kind jupyter: file holding the Jupyter token (default: generated at first start into
    {state_dir}/notebooks/{name}/token, mode 0600)."""

    @model_validator(mode="before")
    @classmethod
    def _keys_for_the_kind(cls, data: Any) -> Any:
        """The keys first: unknown ones, then what the kind needs and what it cannot use."""
        if isinstance(data, ArgsKwargs):  # built by code (a copy), not read from YAML
            return data
        if not isinstance(data, dict):
            reject(f"expected a mapping, got {type(data).__name__}")
        _check_keys(data, (f.name for f in dataclasses.fields(cls)))
        kind = data.get("kind", "openai")
        if kind not in KINDS:
            reject(f"must be 'openai', 'http' or 'jupyter' (got {kind!r})", "kind")
        if kind == "jupyter":
            for key, why in NOT_FOR_JUPYTER.items():
                if key in data:
                    reject(f"not used by a 'jupyter' workload ({why})", key)
        else:
            for key in JUPYTER_ONLY:
                if key in data:
                    reject("only for workloads of kind 'jupyter'", key)
        for required in ("name",) if kind == "jupyter" else ("name", "command"):
            if required not in data:
                reject("required", required)
        for key in _NOT_EMPTY:
            if data.get(key) == "":
                reject("must not be empty", key)
        return data

    @model_validator(mode="after")
    def _complete(self) -> WorkloadSettings:
        if self.kind == "jupyter" and not self.command:
            # Dormant runs the notebook server: its command and routes are not the user's.
            built = jupyter.jupyter_command(self.name, self.python, self.root_dir, self.args)
            object.__setattr__(self, "command", built)
            object.__setattr__(self, "path_prefix", jupyter.base_path(self.name))
            object.__setattr__(self, "health_path", jupyter.health_path(self.name))  # no token
        if self.kind == "openai" and not self.models:
            reject("an 'openai' workload needs at least one model name", "models")
        if self.kind == "http" and not (self.path_prefix or self.hosts):
            reject("an 'http' workload needs a path_prefix or hosts to route by")
        return self


def _workloads(value: Any) -> Any:
    if isinstance(value, tuple):  # already validated (a copy); runtime kubernetes has none
        return value
    if not isinstance(value, list) or not value:
        reject("expected a non-empty list")
    return value


@dataclass(frozen=True, config=_CONFIG)
class Settings:
    """The whole activator."""

    workloads: Annotated[tuple[WorkloadSettings, ...], BeforeValidator(_workloads)] = _group(
        "server", (), minItems=1
    )
    """What Dormant fronts (required, at least one, with runtime local; none with runtime
    kubernetes, whose workloads are ScaleToZeroPolicies)."""
    listen: Listen = _group("server", "127.0.0.1:8080")
    """HOST:PORT the activator listens on (`dormant up --listen` wins)."""
    state_dir: Str = _group("server", "")
    """Snapshots, logs, generated models (default $DORMANT_STATE_DIR or ~/.local/state/dormant;
    `--state-dir` wins)."""
    engine: Engine = _group("engine", "auto")
    """'auto' (CRIU when it works here, else restart), 'criu' (required) or 'restart'."""
    criu_path: ExistingFile = _group("engine", "")
    """A criu binary to use instead of searching (must exist; see `dormant check`)."""
    admin_token: Str = _group("security", "")
    """Bearer token required on /-/* admin routes (empty = $DORMANT_ADMIN_TOKEN, else none)."""
    admin_token_file: ExistingFile = _group("security", "")
    """File holding the admin token (wins over admin_token); an empty file is an error."""
    reap_interval: ReapInterval = _group("lifecycle", 1.0)
    """Seconds between idle checks (at least 50ms)."""
    max_body_bytes: BodyBytes = _group("limits", 8 << 20)
    """Largest request body accepted on /v1/* (bytes)."""
    log_level: LogLevel = _group("server", "info")
    """debug, info, warning or error."""
    log_format: LogFormat = _group("server", "text")
    """'text' (one readable line per event) or 'json' (one JSON object a line; access lines
    carry request_id, workload, status, outcome, wake and timings as fields)."""
    tracing: Tracing = _group("server", "off")
    """OpenTelemetry traces (the `otel` extra): 'off', 'otlp' (OTLP/HTTP to
    $OTEL_EXPORTER_OTLP_ENDPOINT, default http://localhost:4318) or 'console' (stdout): a span
    per request, its wake a child span."""
    on_shutdown: OnShutdown = _group("lifecycle", "stop")
    """What happens to running workloads when Dormant stops: 'stop' or 'hibernate'.
    (Instances never outlive Dormant: that is what keeps a crash from leaving orphans.)"""
    shutdown_timeout: Timeout = _group("lifecycle", 150.0)
    """Seconds requests in flight or held for a wake may take to finish after SIGTERM before
    Dormant exits (keep it above wake_timeout; a pod's terminationGracePeriodSeconds above it)."""
    admin_listen: ListenOrEmpty = _group("server", "")
    """HOST:PORT for the admin API (/-/*) alone; empty = on `listen` with everything else."""
    metrics_token: Str = _group("security", "")
    """Bearer token for GET /metrics (empty = $DORMANT_METRICS_TOKEN; when there is none,
    /metrics asks for the admin token if one is set)."""
    metrics_token_file: ExistingFile = _group("security", "")
    """File holding the metrics token (wins over metrics_token); an empty file is an error."""
    drop_capabilities: Bool = _group("security", True)
    """runtime local, as root: commands run with a container's default capabilities, IPC_LOCK,
    SYS_NICE and, when CRIU checkpoints them, SYS_ADMIN; the rest dropped (util-linux's
    setpriv; Dormant refuses to start without it). false: they get every capability Dormant has."""
    device: DeviceSettings | None = _group("pool", None)
    """The shared device (see below); without it every workload may be resident at once."""
    runtime: RuntimeName = _group("kubernetes", "local")
    """Where instances run: 'local' (process trees on this machine) or 'kubernetes' (the
    pods of the ScaleToZeroPolicies in kubernetes.namespace; see below)."""
    kubernetes: KubernetesSettings | None = _group("kubernetes", None)
    """runtime kubernetes: the cluster section (see below; defaults when left out)."""

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, ArgsKwargs):
            return data
        if not isinstance(data, dict):
            reject(f"expected a mapping at the top level, got {type(data).__name__}")
        _check_keys(data, (f.name for f in dataclasses.fields(cls)))
        runtime = data.get("runtime", "local")
        if runtime == "kubernetes":
            if data.get("workloads"):
                reject(
                    "not with runtime kubernetes: its workloads are the ScaleToZeroPolicies of "
                    "kubernetes.namespace; remove `workloads:`",
                    "workloads",
                )
            if data.get("device") is not None:
                reject(
                    "not with runtime kubernetes: the warm pool shares one machine's device; "
                    "in a cluster each model pod has its own through the scheduler",
                    "device",
                )
        elif runtime == "local" and "workloads" not in data:
            reject("expected a non-empty list", "workloads")
        elif runtime == "local" and data.get("kubernetes") is not None:
            reject("only acts with runtime: kubernetes", "kubernetes")
        return data

    @model_validator(mode="after")
    def _pool_fits(self) -> Settings:
        """Pool keys need a device; what can never fit is a config error at load."""
        pool_keys: dict[str, object] = {
            "memory": None,
            "pin": False,
            "priority": 0,
            "min_resident": 0.0,
            "suspend": "none",
        }
        for i, w in enumerate(self.workloads):
            for key, default in pool_keys.items():
                if self.device is None and getattr(w, key) != default:
                    reject(
                        "only acts with a `device:` section (the warm pool); add one, e.g. "
                        "device: {memory_budget: 6GiB}",
                        f"workloads[{i}].{key}",
                    )
            if w.suspend == "cuda" and self.device is not None and self.device.kind == "cpu":
                reject("'cuda' needs an NVIDIA device (device.kind cpu)", f"workloads[{i}].suspend")
        device = self.device
        if device is None:
            return self
        if device.kind == "cpu" and device.memory_budget is None:
            reject("required to pool on CPU (e.g. 6GiB)", "device.memory_budget")
        if device.memory_budget is None:
            return self  # a GPU's total is known at start: checked then
        budget = device.memory_budget - device.reserve
        if budget <= 0:
            reject("device.reserve leaves nothing of memory_budget", "device.reserve")
        for problem in pool_problems(self.workloads, budget):
            reject(problem, "device")
        return self

    @model_validator(mode="after")
    def _no_clashes(self) -> Settings:
        names: set[str] = set()
        models: dict[str, str] = {}
        routes: dict[str, str] = {}
        ports: dict[int, str] = {}
        own = {"listen": self.listen, "admin_listen": self.admin_listen}
        if self.admin_listen and _collide(self.listen, self.admin_listen):
            reject(
                f"{self.admin_listen} collides with listen ({self.listen}); use another port, "
                "or leave admin_listen empty to serve /-/* on listen",
                "admin_listen",
            )
        for i, w in enumerate(self.workloads):
            at = f"workloads[{i}]"
            if w.name in names:
                reject(f"duplicate name {w.name!r}", f"{at}.name")
            names.add(w.name)
            for model in w.models:
                if model in models:
                    reject(f"{model!r} is already served by {models[model]!r}", f"{at}.models")
                models[model] = w.name
            paths = [f"path {w.path_prefix}"] if w.path_prefix else []
            for route in paths + [f"host {h}" for h in w.hosts]:
                if route in routes:
                    reject(f"{route} is already routed to {routes[route]!r}", at)
                routes[route] = w.name
            if not w.port:
                continue
            if w.port in ports:
                reject(
                    f"{w.port} is already the port of workload {ports[w.port]!r}; give each "
                    "workload its own port (or 0 for a free one)",
                    f"{at}.port",
                )
            ports[w.port] = w.name
            for key, address in own.items():
                # The workload's command chooses its own bind address (vLLM and
                # llama-server bind every address by default): the same port collides.
                if address and _port_of(address) == w.port:
                    reject(
                        f"{w.port} is Dormant's own {key} port ({address}); a workload there "
                        "would collide with Dormant or loop requests through it: pick another "
                        "port (or 0 for a free one)",
                        f"{at}.port",
                    )
        return self

    # -- derived values -----------------------------------------------------------------

    @property
    def host(self) -> str:
        return self.listen.rsplit(":", 1)[0].strip("[]")

    @property
    def port(self) -> int:
        return _port_of(self.listen)

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir).expanduser()

    @property
    def cluster(self) -> KubernetesSettings:
        """The kubernetes section, its defaults when it was left out."""
        return self.kubernetes or KubernetesSettings()

    def workload(self, name: str) -> WorkloadSettings | None:
        return next((w for w in self.workloads if w.name == name), None)

    def resolved_admin_token(self) -> str:
        """The admin API's bearer token: admin_token_file's content, else admin_token, else
        $DORMANT_ADMIN_TOKEN; empty = none. ConfigError when the file is unreadable or empty."""
        if self.admin_token_file:
            return read_token_file(
                self.admin_token_file, "admin_token_file", _EMPTY.format(key="admin_token_file")
            )
        return self.admin_token or os.environ.get("DORMANT_ADMIN_TOKEN", "")

    def check_token_files(self) -> None:
        """At start: ConfigError when admin_token_file or metrics_token_file is set but
        unreadable or empty (a token file left empty must not leave a route open)."""
        self.resolved_admin_token()
        self.resolved_metrics_token()

    def resolved_metrics_token(self) -> str:
        """The bearer token for GET /metrics: metrics_token_file's content, else
        metrics_token, else $DORMANT_METRICS_TOKEN; empty = none (then /metrics asks for the
        admin token, if one is set). ConfigError when the file is unreadable or empty."""
        if self.metrics_token_file:
            return read_token_file(
                self.metrics_token_file,
                "metrics_token_file",
                _EMPTY.format(key="metrics_token_file"),
            )
        return self.metrics_token or os.environ.get("DORMANT_METRICS_TOKEN", "")


_EMPTY = "put the token in it (or remove {key} to run without one)"


def pool_problems(workloads: Iterable[WorkloadSettings], budget: int) -> list[str]:
    """What could never be resident within ``budget`` bytes (declared sizes only; 'auto'
    ones are measured once they run)."""
    members = [
        Member(w.name, Tier.COLD, w.memory or 0, pin=w.pin, priority=w.priority) for w in workloads
    ]
    return fits_ever(members, budget)


def _port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def _collide(a: str, b: str) -> bool:
    """Whether servers on HOST:PORT ``a`` and ``b`` would want the same socket: same port,
    and the same host, or either is a wildcard or a name (it may resolve to the other)."""
    if _port_of(a) != _port_of(b):
        return False
    hosts = []
    for address in (a, b):
        host = address.rsplit(":", 1)[0].strip("[]")
        if host in _WILDCARD_HOSTS:
            return True
        try:
            hosts.append(ipaddress.ip_address(host))
        except ValueError:
            return True
    return hosts[0] == hosts[1]


# -- loading ------------------------------------------------------------------------------

_ADAPTER: TypeAdapter[Settings] = TypeAdapter(Settings)


def _key_path(loc: tuple[int | str, ...], at: str = "") -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f"{'.' if out else ''}{part}"
    if at:
        out += at if at.startswith("[") or not out else f".{at}"
    return out


def _config_error(exc: ValidationError) -> ConfigError:
    """Pydantic's first error as Dormant's one line: ``key.path: what is wrong``."""
    error = exc.errors(include_url=False)[0]
    ctx = error.get("ctx") or {}
    path = _key_path(error["loc"], str(ctx.get("at", "")))
    if error["type"] == REJECTED:
        message = str(ctx["message"])
    elif error["type"] in ("missing", "missing_argument"):
        message = "required"
    elif error["type"] in ("unexpected_keyword_argument", "extra_forbidden"):
        message = "unknown key"  # a section without its own key check (see the docstring)
    else:  # pydantic's own check (none is expected: every field parses with its own messages)
        message = f"{error['msg'][:1].lower()}{error['msg'][1:]} (got {error.get('input')!r})"
    return ConfigError(f"{path}: {message}" if path else message)


def parse_settings(data: Any, source: str = "config") -> Settings:
    """Validate a parsed YAML document."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    try:
        return _ADAPTER.validate_python(data)
    except ValidationError as exc:
        raise _config_error(exc) from None


def parse_listen(value: str, path: str = "listen") -> str:
    if not is_host_port(value):
        raise ConfigError(f"{path}: {listen_problem(value)}")
    return value


def _yaml_problem(source: Path, exc: yaml.YAMLError) -> str:
    """One line naming the file, the line and column, and what YAML found there."""
    mark = getattr(exc, "problem_mark", None)
    where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(source)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    context = getattr(exc, "context", None)
    return f"{where}: not valid YAML: {problem}" + (f" ({context})" if context else "")


def default_state_dir() -> str:
    if env := os.environ.get("DORMANT_STATE_DIR"):
        return env
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return os.path.join(base, "dormant")


def load_settings(
    path: str | os.PathLike[str] | None = None,
    *,
    listen: str | None = None,
    state_dir: str | None = None,
) -> Settings:
    """Read and validate a YAML file (the embedded default when ``path`` is None).
    ``listen`` and ``state_dir`` override the file."""
    source = Path(path) if path else DEFAULT_CONFIG
    try:
        text = source.read_text()
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read ({exc.strerror or exc})") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(_yaml_problem(source, exc)) from None
    if listen and isinstance(data, dict):
        # before validation, so that ports are checked against the address really used
        data = {**data, "listen": parse_listen(listen, "--listen")}
    settings = parse_settings(data, str(source))
    chosen_state = state_dir or settings.state_dir or default_state_dir()
    resolved = str(Path(chosen_state).expanduser().resolve())
    return dataclasses.replace(settings, state_dir=resolved)


def format_command(workload: WorkloadSettings, port: int, state_dir: Path) -> tuple[str, ...]:
    """The workload's argv with placeholders filled in."""
    values = {
        "port": str(port),
        "python": sys.executable,
        "state_dir": str(state_dir),
        "name": workload.name,
    }
    try:
        return tuple(arg.format(**values) for arg in workload.command)
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError(
            f"workload {workload.name}: command: bad placeholder {exc}; use {{port}}, {{python}}, "
            "{state_dir} or {name}"
        ) from exc
