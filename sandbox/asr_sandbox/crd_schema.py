"""Validate custom resources against the CRD's own openAPIV3Schema, as an API server would.

jsonschema does the validation; what it does not know about OpenAPI v3 / Kubernetes we do here:
`x-kubernetes-*` keys are dropped, `nullable` becomes a type union, and defaults are applied
with the API server's structural semantics (a default fills a missing field only where its
parent object exists) before validating.
"""
from __future__ import annotations

import copy
from functools import lru_cache
from typing import Any

import jsonschema
import yaml

from asr_sandbox.paths import CRD_PATH


@lru_cache(maxsize=1)
def load_crd() -> dict[str, Any]:
    with open(CRD_PATH, encoding="utf-8") as f:
        crd = yaml.safe_load(f)
    assert isinstance(crd, dict)
    return crd


def served_version(crd: dict[str, Any], name: str = "v1alpha1") -> dict[str, Any]:
    for version in crd["spec"]["versions"]:
        if version["name"] == name:
            return version
    raise KeyError(f"version {name!r} not in the CRD")


def openapi_schema() -> dict[str, Any]:
    return served_version(load_crd())["schema"]["openAPIV3Schema"]


def to_json_schema(node: Any) -> Any:
    """OpenAPI v3 (Kubernetes flavour) -> plain JSON Schema (draft 2020-12 compatible)."""
    if isinstance(node, list):
        return [to_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key.startswith("x-kubernetes-") or key in ("nullable", "default", "description"):
            continue
        if key in ("properties", "patternProperties"):
            out[key] = {name: to_json_schema(sub) for name, sub in value.items()}
        else:
            out[key] = to_json_schema(value)
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if node.get("x-kubernetes-int-or-string"):
        out["type"] = ["integer", "string"]
    return out


def apply_defaults(schema: dict[str, Any], obj: Any) -> Any:
    """Fill defaults like the API server: a field's default applies only when its parent
    object is present; defaults of a defaulted object are applied to it in turn."""
    if not isinstance(obj, dict):
        if isinstance(obj, list) and "items" in schema:
            return [apply_defaults(schema["items"], item) for item in obj]
        return obj
    result = dict(obj)
    for name, sub in schema.get("properties", {}).items():
        if name not in result and "default" in sub:
            result[name] = copy.deepcopy(sub["default"])
        if name in result:
            result[name] = apply_defaults(sub, result[name])
    return result


def defaulted(obj: dict[str, Any]) -> dict[str, Any]:
    return apply_defaults(openapi_schema(), obj)


def validation_errors(obj: dict[str, Any]) -> list[jsonschema.ValidationError]:
    """All schema errors of `obj` after defaulting; empty when the API server would accept it."""
    validator = jsonschema.Draft202012Validator(to_json_schema(openapi_schema()))
    return sorted(validator.iter_errors(defaulted(obj)), key=lambda e: list(e.absolute_path))


def describe(error: jsonschema.ValidationError) -> str:
    """`spec.model.path: '/etc' does not match ...`: the field path first, as kubectl shows it."""
    where = ".".join(str(p) for p in error.absolute_path) or "<root>"
    return f"{where}: {error.message}"
