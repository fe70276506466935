"""runtime kubernetes in the settings: the section, what it excludes, and the checks made
before the activator starts (activator.sources.kubernetes.prepare), all without a cluster."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from activator.config.schema import config_schema
from activator.config.settings import ConfigError, KubernetesSettings, load_settings, parse_settings
from activator.sources.kubernetes import prepare

WORKLOAD = {"name": "a", "models": ["m"], "command": ["srv"]}


def _schema_ok(data: Any) -> bool:
    return not list(jsonschema.Draft202012Validator(config_schema()).iter_errors(data))


def test_runtime_kubernetes_needs_no_workloads_and_has_defaults() -> None:
    data = {"runtime": "kubernetes"}
    settings = parse_settings(data)
    assert settings.workloads == () and settings.cluster == KubernetesSettings()
    assert settings.cluster.control_port == 8081 and settings.cluster.route_timeout == 30
    assert _schema_ok(data)


def test_the_section_reads_like_the_rest() -> None:
    data = {
        "runtime": "kubernetes",
        "kubernetes": {"namespace": "models", "poll_interval": "250ms", "route_timeout": "1m"},
    }
    cluster = parse_settings(data).cluster
    assert (cluster.namespace, cluster.poll_interval, cluster.route_timeout) == ("models", 0.25, 60)
    assert _schema_ok(data)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"runtime": "kubernetes", "kubernetes": {"namesapce": "x"}},
            "kubernetes.namesapce: unknown key (did you mean 'namespace'?)",
        ),
        (
            {"runtime": "kubernetes", "kubernetes": {"poll_interval": 0}},
            "kubernetes.poll_interval: must be more than 0",
        ),
        (
            {"runtime": "kubernetes", "workloads": [WORKLOAD]},
            "workloads: not with runtime kubernetes",
        ),
        (
            {"runtime": "kubernetes", "device": {"memory_budget": "1GiB"}},
            "device: not with runtime kubernetes",
        ),
        ({"workloads": [WORKLOAD], "kubernetes": {}}, "kubernetes: only acts with runtime"),
        ({"runtime": "k8s", "workloads": [WORKLOAD]}, "runtime: "),
        ({"listen": "127.0.0.1:8080"}, "workloads: expected a non-empty list"),
    ],
    ids=repr,
)
def test_what_does_not_fit_is_refused_in_one_line_and_by_the_schema(
    data: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        parse_settings(data)
    assert str(info.value).startswith(message), info.value
    assert not _schema_ok(data)


def test_a_loaded_file_keeps_no_workloads(tmp_path: Path) -> None:
    path = tmp_path / "dormant.yaml"
    path.write_text(yaml.safe_dump({"runtime": "kubernetes", "state_dir": str(tmp_path)}))
    assert load_settings(path).workloads == ()


# -- before anything starts ------------------------------------------------------------------


def _kubeconfig(tmp_path: Path) -> str:
    """A kubeconfig for a server nobody runs: prepare() connects lazily, so it is enough."""
    path = tmp_path / "kubeconfig"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "https://10.255.255.1:6443"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    return str(path)


def _cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **section: Any) -> Any:
    monkeypatch.delenv("POD_IP", raising=False)
    monkeypatch.delenv("DORMANT_EXEC_TOKEN", raising=False)
    token = tmp_path / "token"
    token.write_text("secret\n")
    base = {"kubeconfig": _kubeconfig(tmp_path), "control_token_file": str(token)}
    return parse_settings({"runtime": "kubernetes", "kubernetes": {**base, **section}})


def test_prepare_takes_the_advertised_address_and_the_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    setup = prepare(_cluster(tmp_path, monkeypatch, advertise="10.0.0.5:8080", namespace="m"))
    assert setup.namespace == "m"
    assert setup.options.advertise == "10.0.0.5:8080" and setup.options.token == "secret"
    setup.api.close()


def test_in_a_pod_the_address_is_the_pods(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _cluster(tmp_path, monkeypatch)
    monkeypatch.setenv("POD_IP", "10.1.2.3")
    setup = prepare(settings)
    assert setup.options.advertise == "10.1.2.3:8080"  # the port of `listen`
    setup.api.close()


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({}, "kubernetes.advertise: required outside a pod"),
        ({"advertise": "127.0.0.1:8080"}, "kubernetes.advertise: '127.0.0.1:8080': Endpoints"),
        (
            {"advertise": "activator.local:8080"},
            "kubernetes.advertise: 'activator.local:8080' must",
        ),
        (
            {"advertise": "10.0.0.5:8080", "control_token_file": ""},
            "kubernetes.control_token_file: required",
        ),
        (
            {"advertise": "10.0.0.5:8080", "kubeconfig": "/nonexistent/kubeconfig"},
            "kubernetes.kubeconfig: cannot use /nonexistent/kubeconfig",
        ),
    ],
    ids=repr,
)
def test_prepare_refuses_what_cannot_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, section: dict[str, Any], message: str
) -> None:
    settings = _cluster(tmp_path, monkeypatch, **section)
    with pytest.raises(ConfigError) as info:
        prepare(settings)
    assert str(info.value).startswith(message), info.value
