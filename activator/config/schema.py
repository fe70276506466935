"""The settings definition, exported: JSON Schema, a workload's CRD schema, docs/config.md.

All three come from ``activator.config.settings`` (nothing here restates a field):

* ``config_schema()`` — JSON Schema (draft 2020-12) of the YAML file, for editors
  (``dormant config schema``; YAML language servers read it from a
  ``# yaml-language-server: $schema=FILE`` comment).
* ``workload_crd_schema()`` — one workload as a Kubernetes structural OpenAPI v3 schema.
* ``config_reference()`` — the Markdown of docs/config.md (``dormant config docs``).
"""

from __future__ import annotations

import copy
import re
from typing import Any

from pydantic import TypeAdapter

from activator.config.settings import GROUPS, JUPYTER_ONLY, NOT_FOR_JUPYTER, Settings
from activator.config.types import human_duration

__all__ = ["config_reference", "config_schema", "workload_crd_schema"]

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
_WORKLOAD = "WorkloadSettings"


def config_schema() -> dict[str, Any]:
    """JSON Schema of Dormant's YAML config file.

    Durations are numbers (seconds) or strings like '30s'; the kind-specific rules
    (what a 'jupyter' workload may not set, what the others need) are ``if``/``then``
    clauses. A few checks only the loader can make (files exist, names and ports are
    unique, placeholders) are left to it; ``x-dormant-group`` and ``x-dormant-type`` are
    annotations for the docs, ignored by validators."""
    schema = TypeAdapter(Settings).json_schema(mode="validation")
    schema = _tidy(schema)
    for definition in schema.get("$defs", {}).values():
        for prop in definition.get("properties", {}).values():
            if prop.get("x-dormant-type") == "env":
                prop["default"] = {}
            if prop.get("x-dormant-type") == "argv" and prop["anyOf"][0].get("minItems"):
                prop.pop("default", None)  # required where it is used: no default
    schema["$defs"][_WORKLOAD]["allOf"] = _kind_rules()
    schema["properties"]["workloads"].pop("default", None)  # required with runtime local
    schema["allOf"] = [_runtime_rule()]
    return {
        "$schema": SCHEMA_DIALECT,
        "title": "Dormant configuration",
        "description": "`dormant up -c FILE` reads this YAML. See docs/config.md.",
        **schema,
    }


def _kind_rules() -> list[dict[str, Any]]:
    def kind_is(kind: str, required: bool = True) -> dict[str, Any]:
        rule: dict[str, Any] = {"properties": {"kind": {"const": kind}}}
        return {**rule, "required": ["kind"]} if required else rule

    return [
        {
            "if": kind_is("jupyter"),
            "then": {"properties": {key: _forbidden(why) for key, why in NOT_FOR_JUPYTER.items()}},
            "else": {
                "required": ["command"],
                "properties": dict.fromkeys(JUPYTER_ONLY, _forbidden("only for kind 'jupyter'")),
            },
        },
        {
            "if": kind_is("openai", required=False),  # also when kind is not given
            "then": {"required": ["models"], "properties": {"models": {"minItems": 1}}},
        },
        {
            "if": kind_is("http"),
            "then": {"anyOf": [{"required": ["path_prefix"]}, {"required": ["hosts"]}]},
        },
    ]


def _runtime_rule() -> dict[str, Any]:
    """runtime kubernetes takes its workloads from the cluster (and has no warm pool);
    runtime local needs them and has no kubernetes section."""
    return {
        "if": {"properties": {"runtime": {"const": "kubernetes"}}, "required": ["runtime"]},
        "then": {
            "properties": {
                "workloads": {"maxItems": 0, "description": "from ScaleToZeroPolicies"},
                "device": _forbidden("the warm pool shares one machine's device"),
            }
        },
        "else": {
            "required": ["workloads"],
            "properties": {"kubernetes": _forbidden("only acts with runtime: kubernetes")},
        },
    }


def _forbidden(why: str) -> dict[str, Any]:
    return {"not": {}, "description": why}


def _tidy(node: Any) -> Any:
    """No pydantic titles (noise for editors); descriptions on one line."""
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key == "properties":
                out[key] = {name: _tidy(sub) for name, sub in value.items()}
            elif key == "description" and isinstance(value, str):
                out[key] = re.sub(r"\s+", " ", value).strip()
            elif key != "title":
                out[key] = _tidy(value)
        return out
    if isinstance(node, list):
        return [_tidy(item) for item in node]
    return node


# -- Kubernetes ----------------------------------------------------------------------------


def workload_crd_schema() -> dict[str, Any]:
    """One workload's settings as a Kubernetes *structural* OpenAPI v3 schema.

    How the ``ScaleToZeroPolicy`` CRD (``dormant.dev/v1alpha1``) will use it: the operator
    generates its CRD manifest with
    ``versions[].schema.openAPIV3Schema = {"type": "object", "properties": {"spec":
    workload_crd_schema(), "status": {"type": "object",
    "x-kubernetes-preserve-unknown-fields": True}}}``, so kube-apiserver checks a policy's
    ``spec`` with the same types, ranges, patterns and enums as a workload in the YAML
    file, and prunes unknown fields. The operator then passes the spec (as a
    ``workloads`` entry) through ``parse_settings``, which adds what a structural schema
    cannot say (what a kind may not set, files, uniqueness) and gives its one-line errors
    for the policy's status.

    Differences from the YAML file's JSON Schema, as structural schemas require: no
    ``$ref``; every property has a ``type``, or is ``x-kubernetes-int-or-string`` (the
    durations: whole seconds or a string like '250ms'; its ``anyOf`` is exactly
    ``[{type: integer}, {type: string}]``, the one form kube-apiserver accepts, with
    ``minimum`` and ``pattern`` beside it); ``command`` and ``args`` are
    lists of strings (no single string, no numbers); ``env`` is a map of strings;
    defaults are given as the YAML would write them."""
    schema = config_schema()
    out = _structural(schema["$defs"][_WORKLOAD], schema["$defs"])
    out["description"] = "One workload Dormant scales to zero (see docs/config.md)."
    return out


_INT_OR_STRING: dict[str, Any] = {
    "x-kubernetes-int-or-string": True,
    "anyOf": [{"type": "integer"}, {"type": "string"}],
}
"""The one form of int-or-string a structural schema allows: its two branches carry nothing
but their type, so a value's checks sit beside them (``minimum`` applies to integers only,
``pattern`` to strings only)."""


def _structural(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in node:  # a nested section (e.g. hooks): inlined, structural schemas have no $ref
        target = defs[node["$ref"].rsplit("/", 1)[1]]
        inlined = _structural({**target, **{k: v for k, v in node.items() if k != "$ref"}}, defs)
        inlined.pop("default", None)  # the section's own fields carry the defaults
        return inlined
    kind = node.get("x-dormant-type")
    doc = {k: node[k] for k in ("description",) if k in node}
    out: dict[str, Any]
    if kind in ("size", "memory"):
        number, text = node["anyOf"]
        out = {
            **doc,
            **_INT_OR_STRING,
            "minimum": number.get("minimum", 0),
            "pattern": text["pattern"],
        }
        if node.get("default") is not None:
            out["default"] = node["default"]
        return out
    if kind == "duration":
        number, text = node["anyOf"]
        # OpenAPI v3.0 has no numeric exclusiveMinimum: "more than 0" is "at least 1" here.
        least = max(1, number.get("minimum", 0)) if "exclusiveMinimum" in number else 0
        out = {**doc, **_INT_OR_STRING, "minimum": least, "pattern": text["pattern"]}
        if "default" in node:
            out["default"] = human_duration(node["default"])
        return out
    if kind == "argv":
        array = node["anyOf"][0]
        out = {**doc, "type": "array", "items": {"type": "string"}}
        if array.get("minItems"):
            out["minItems"] = array["minItems"]
        return {**out, **({"default": node["default"]} if "default" in node else {})}
    if kind == "env":
        return {**doc, "type": "object", "additionalProperties": {"type": "string"}, "default": {}}
    alternatives = node.get("anyOf")
    if alternatives and any(a.get("type") == "null" for a in alternatives):
        (inner,) = [a for a in alternatives if a.get("type") != "null"]
        rest = {k: v for k, v in node.items() if k not in ("anyOf", "default")}
        merged = _structural({**rest, **inner}, defs)
        if node.get("default") is not None:
            merged["default"] = node["default"]
        return {**merged, "nullable": True}
    out = {}
    for key, value in node.items():
        if key.startswith("x-dormant-") or key in ("allOf", "title"):
            continue
        if key == "additionalProperties" and value is False:
            continue  # structural schemas prune unknown fields instead
        if key == "properties":
            out[key] = {name: _structural(sub, defs) for name, sub in value.items()}
        elif key == "items":
            out[key] = _structural(value, defs)
        else:
            out[key] = copy.deepcopy(value)
    return out


# -- docs/config.md ------------------------------------------------------------------------

_HEADER = """\
# Configuration reference

<!-- Generated from activator/config/settings.py by `dormant config docs`; do not edit by hand.
     tests/activator/test_config_schema.py fails when this file is stale. -->

`dormant up -c FILE` reads YAML; with no file it uses `activator/default.yaml`. Every key is
validated at load: a bad file exits with status 2 and one line naming the key path and the
problem, e.g. `dormant: bad config: workloads[0].idle_after: expected a duration like '30s'
or '5m', got 'soon'`. `dormant check -c FILE` also checks that each workload's command,
`root_dir` and `python` exist.

**Durations** are seconds (`90`, `0.5`) or a number with a unit: `250ms`, `30s`, `5m`, `1h`.
Timeouts must be more than 0; `.nan` and `.inf` are refused everywhere.

**Editors**: `dormant config schema > dormant.schema.json` writes a JSON Schema of this file;
YAML language servers use it when the config starts with
`# yaml-language-server: $schema=dormant.schema.json`.
"""


def config_reference(schema: dict[str, Any] | None = None) -> str:
    """docs/config.md: every key with its type, default and doc, by section and concern."""
    schema = schema or config_schema()
    sections: list[tuple[str, dict[str, Any]]] = [("Top level", schema)]
    lines = [_HEADER]
    while sections:
        title, node = sections.pop(0)
        lines += [f"## {title}", ""]
        if node.get("description") and node is not schema:
            lines += [_one_line(node["description"]), ""]
        by_group: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        required = set(node.get("required", ()))
        for key, prop in node.get("properties", {}).items():
            nested = _nested(schema, prop)
            if nested is not None:
                suffix = "[]" if prop.get("type") == "array" else ""
                prefix = "" if title == "Top level" else f"{title.strip('`')}."
                sections.append((f"`{prefix}{key}{suffix}`", nested))
            group = prop.get("x-dormant-group", "other")
            by_group.setdefault(group, []).append((key, prop))
        for group in [*GROUPS, "other"]:
            if group not in by_group:
                continue
            lines += [f"### {group}", ""]
            if group in GROUPS:
                lines += [GROUPS[group], ""]
            lines += ["| key | type | default | what |", "|---|---|---|---|"]
            for key, prop in by_group[group]:
                default = "**required**" if key in required else _default(prop)
                cells = [f"`{key}`", _type(schema, prop), default, _one_line(prop)]
                lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    if not ref:
        return node
    resolved: dict[str, Any] = schema["$defs"][ref.rsplit("/", 1)[1]]
    return resolved


def _nested(schema: dict[str, Any], prop: dict[str, Any]) -> dict[str, Any] | None:
    """The object schema of a nested section (``workloads[]``, ``device:``, ``hooks:``)."""
    refs = [a for a in prop.get("anyOf", ()) if "$ref" in a]  # an optional section
    if refs:
        prop = refs[0]
    target = _resolve(schema, prop.get("items", prop) if prop.get("type") == "array" else prop)
    return target if "properties" in target else None


def _one_line(prop: dict[str, Any] | str) -> str:
    text = prop if isinstance(prop, str) else prop.get("description", "")
    return re.sub(r"\s+", " ", text).strip()


def _type(schema: dict[str, Any], prop: dict[str, Any]) -> str:
    kind = prop.get("x-dormant-type")
    if kind == "duration":
        number = prop["anyOf"][0]
        if number.get("minimum"):
            return f"duration ≥ {human_duration(number['minimum'])}"
        return "duration > 0" if "exclusiveMinimum" in number else "duration"
    if kind == "argv":
        return "list of strings (or one string, split on spaces)"
    if kind == "size":
        return "size ('6GiB', '900MiB' or bytes)" + (
            " ≥ 0" if prop["anyOf"][0]["minimum"] == 0 else ""
        )
    if kind == "memory":
        return "size ('900MiB' or bytes) or `auto`"
    if kind == "env":
        return "mapping NAME: value"
    if kind == "address":
        return "HOST:PORT" + (" or empty" if prop.get("pattern", "").startswith("^$|") else "")
    if "enum" in prop:
        return " | ".join(f"`{v}`" for v in prop["enum"])
    if "anyOf" in prop:
        types = [_type(schema, a) for a in prop["anyOf"] if a.get("type") != "null"]
        return " or ".join(types)
    if "$ref" in prop:
        return "mapping (see below)"
    json_type = prop.get("type")
    if json_type == "integer":
        if "minimum" in prop and "maximum" in prop:
            return f"integer {prop['minimum']} to {prop['maximum']}"
        return f"integer ≥ {prop['minimum']}" if "minimum" in prop else "integer"
    if json_type == "array":
        items = _resolve(schema, prop.get("items", {}))
        return "list of mappings (see below)" if "properties" in items else "list of strings"
    return {"boolean": "true | false"}.get(str(json_type), str(json_type))


def _default(prop: dict[str, Any]) -> str:
    if "default" not in prop:
        return "—"
    value = prop["default"]
    if prop.get("x-dormant-type") == "duration":
        return f"`{human_duration(value)}`"
    if prop.get("x-dormant-type") == "memory" and value is None:
        return "`auto`"
    if value is None:
        return "(unset)"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, dict):
        return "(see below)" if value else "`{}` (none)"
    if value == "":
        return '`""`'
    return f"`{value}`"
