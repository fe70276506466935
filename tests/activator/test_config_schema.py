"""The settings definition, exported: the JSON Schema editors use agrees with the loader,
a workload's CRD schema is structural, and docs/config.md is generated and current."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from pydantic import TypeAdapter
from pydantic.dataclasses import dataclass

from activator.config.schema import config_reference, config_schema, workload_crd_schema
from activator.config.settings import (
    GROUPS,
    ConfigError,
    Settings,
    WorkloadSettings,
    parse_settings,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = [
    ROOT / "activator" / "default.yaml",
    ROOT / "examples" / "notebooks.yaml",
    ROOT / "examples" / "churn.yaml",
]
GOOD: dict[str, Any] = {
    "workloads": [{"name": "a", "models": ["m-a"], "command": ["srv", "--port", "{port}"]}]
}


def _validator() -> jsonschema.Draft202012Validator:
    schema = config_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _schema_paths(data: Any) -> list[str]:
    paths = []
    for error in _validator().iter_errors(data):
        path = ""
        for part in error.absolute_path:
            path += f"[{part}]" if isinstance(part, int) else f"{'.' if path else ''}{part}"
        paths.append(path)
    return paths


def _loader_path(data: Any) -> str:
    with pytest.raises(ConfigError) as info:
        parse_settings(data)
    return str(info.value).split(": ", 1)[0]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_shipped_configs_are_valid_under_the_schema(path: Path) -> None:
    data = yaml.safe_load(path.read_text())
    assert _schema_paths(data) == []
    parse_settings(data)  # and the loader agrees


def _workload(**patch: Any) -> dict[str, Any]:
    return {"workloads": [{**GOOD["workloads"][0], **patch}]}


@pytest.mark.parametrize(
    "data",
    [
        _workload(idle_after="soon"),
        _workload(idle_after=-1),
        _workload(wake_timeout=0),
        _workload(port=70000),
        _workload(queue_depth=0),
        _workload(strip_prefix="yes"),
        _workload(kind="notebook"),
        _workload(name="Bad Name"),
        _workload(health_path="health"),
        _workload(command=[]),
        _workload(models=[]),
        _workload(env={"A": [1]}),
        _workload(root_dir="/srv"),  # only for kind jupyter
        {"workloads": [{"name": "a", "kind": "jupyter", "command": ["x"]}]},
        {**GOOD, "engine": "magic"},
        {**GOOD, "listen": "8080"},
        {**GOOD, "reap_interval": "fast"},
        {**GOOD, "on_shutdown": "leave"},
        {**GOOD, "max_body_bytes": 10},
    ],
    ids=repr,
)
def test_a_bad_file_is_rejected_by_the_schema_at_the_loaders_key_path(data: Any) -> None:
    assert _loader_path(data) in _schema_paths(data)


@pytest.mark.parametrize(
    "data",
    [_workload(idel_after=3), {**GOOD, "lisen": "x"}, {"listen": "127.0.0.1:8080"}],
    ids=repr,
)
def test_unknown_and_missing_keys_are_rejected_by_the_schema_too(data: Any) -> None:
    assert _schema_paths(data), "the schema accepted what the loader refuses"
    with pytest.raises(ConfigError):
        parse_settings(data)


def test_durations_are_numbers_or_strings_in_the_schema() -> None:
    for value in (30, 0.25, "30s", "250ms", "5m", "1h", "90"):
        assert _schema_paths(_workload(idle_after=value)) == []
        parse_settings(_workload(idle_after=value))


def test_cli_prints_the_schema() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "activator", "config", "schema"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert json.loads(done.stdout) == config_schema()


# -- every field documented -----------------------------------------------------------------


@pytest.mark.parametrize("cls", [Settings, WorkloadSettings])
def test_every_field_has_a_doc_a_group_and_a_default(cls: type) -> None:
    required = {"workloads", "name"}
    for field in dataclasses.fields(cls):
        info = cls.__pydantic_fields__[field.name]  # type: ignore[attr-defined]
        assert info.description and info.description.strip(), field.name
        extra = info.json_schema_extra
        assert isinstance(extra, dict) and extra.get("x-dormant-group") in GROUPS, field.name
        if field.name not in required:
            assert not info.is_required(), f"{field.name} has no default"


# -- the Kubernetes CRD schema ---------------------------------------------------------------


def _structural_problems(node: dict[str, Any], where: str = "spec") -> list[str]:
    """Kubernetes' structural-schema rules that matter here (k8s.io: "Specifying a
    structural schema"): a type everywhere (or int-or-string), no $ref, no anyOf/oneOf
    that mixes types other than the int-or-string pattern, no additionalProperties beside
    properties, no JSON-Schema-2020 keywords OpenAPI v3.0 does not have."""
    problems = []
    int_or_string = node.get("x-kubernetes-int-or-string") is True
    if "type" not in node and not int_or_string:
        problems.append(f"{where}: no type")
    if isinstance(node.get("type"), list):
        problems.append(f"{where}: a list of types")
    for key in ("$ref", "$defs", "const", "if", "then", "else", "prefixItems", "oneOf", "not"):
        if key in node:
            problems.append(f"{where}: {key}")
    if "anyOf" in node:
        types = sorted(str(a.get("type")) for a in node["anyOf"])
        if not (int_or_string and types == ["integer", "string"]):
            problems.append(f"{where}: anyOf {types}")
        elif node["anyOf"] != [{"type": "integer"}, {"type": "string"}]:
            # kube-apiserver accepts types inside anyOf only in exactly this form
            problems.append(f"{where}: int-or-string branches carry more than their type")
        for branch in node["anyOf"]:
            if {"description", "default", "nullable"} & set(branch):
                problems.append(f"{where}: description/default/nullable inside anyOf")
    if "exclusiveMinimum" in node and not isinstance(node["exclusiveMinimum"], bool):
        problems.append(f"{where}: numeric exclusiveMinimum (OpenAPI v3.0 has a boolean)")
    if "properties" in node and "additionalProperties" in node:
        problems.append(f"{where}: properties and additionalProperties")
    if node.get("type") == "array" and "type" not in node.get("items", {}):
        problems.append(f"{where}: array items without a type")
    for key, sub in node.get("properties", {}).items():
        problems += _structural_problems(sub, f"{where}.{key}")
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            problems += _structural_problems(node[key], f"{where}.{key}")
    if any(k.startswith("x-") and not k.startswith("x-kubernetes-") for k in node):
        problems.append(f"{where}: unknown extension")
    return problems


def test_the_workload_crd_schema_is_structural() -> None:
    schema = workload_crd_schema()
    assert schema["type"] == "object"
    assert _structural_problems(schema) == []
    fields = {f.name for f in dataclasses.fields(WorkloadSettings)}
    assert set(schema["properties"]) == fields
    duration = schema["properties"]["idle_after"]
    assert duration["x-kubernetes-int-or-string"] is True and duration["default"] == "5m"
    assert schema["properties"]["wake_timeout"]["minimum"] == 1  # > 0
    assert schema["properties"]["env"]["additionalProperties"] == {"type": "string"}


def test_the_structural_check_can_fail() -> None:
    assert _structural_problems({"type": "object", "properties": {"a": {"$ref": "#/x"}}})
    assert _structural_problems({"anyOf": [{"type": "number"}, {"type": "string"}]})
    assert _structural_problems(
        {
            "x-kubernetes-int-or-string": True,
            "anyOf": [{"type": "integer", "minimum": 1}, {"type": "string"}],
        }
    )


def test_shipped_workloads_fit_the_crd_schema() -> None:
    """A workload as the CRD would carry it (lists, not a single string; whole seconds or
    duration strings) is valid under the CRD schema (OpenAPI v3.0's keywords used here
    mean the same in JSON Schema; `nullable` is the one extension, unused here)."""
    validator = jsonschema.Draft202012Validator(workload_crd_schema())
    for path in EXAMPLES:
        for workload in yaml.safe_load(path.read_text())["workloads"]:
            assert list(validator.iter_errors(workload)) == [], (path.name, workload["name"])
    assert list(validator.iter_errors({"name": "x", "idle_after": 0.5}))  # not whole seconds


# -- docs/config.md -------------------------------------------------------------------------


def test_docs_config_md_is_current() -> None:
    path = ROOT / "docs" / "config.md"
    assert path.read_text() == config_reference(), (
        "docs/config.md is stale: run `.venv/bin/dormant config docs > docs/config.md`"
    )


def test_docs_list_every_key_with_its_default() -> None:
    text = config_reference()
    for cls in (Settings, WorkloadSettings):
        for field in dataclasses.fields(cls):
            assert f"| `{field.name}` |" in text, field.name
    assert "| `idle_after` | duration | `5m` |" in text
    assert "| `reap_interval` | duration ≥ 50ms | `1s` |" in text
    for group in GROUPS:
        assert f"### {group}\n" in text


def test_docs_generator_gives_a_nested_section_its_own_table() -> None:
    """A future family of settings (e.g. `device:`) is a nested dataclass: it gets a
    section `device` in the reference, grouped like the rest."""
    from pydantic import ConfigDict, Field

    config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    @dataclass(frozen=True, config=config)
    class Device:
        """The shared accelerator."""

        memory_budget: int = Field(0, json_schema_extra={"x-dormant-group": "limits"})
        """Bytes of device memory workloads may use together (0 = all)."""

    @dataclass(frozen=True, config=config)
    class Top:
        device: Device = Field(
            default_factory=Device, json_schema_extra={"x-dormant-group": "server"}
        )
        """The device section."""

    text = config_reference(TypeAdapter(Top).json_schema())
    assert "## `device`\n\nThe shared accelerator." in text
    assert "| `memory_budget` | integer | `0` | Bytes of device memory" in text
