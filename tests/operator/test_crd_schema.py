"""The ASRModelRollout CRD: its shape, the examples it accepts and the specs it rejects.

Custom resources are validated with `jsonschema` against the CRD's own openAPIV3Schema after
applying its defaults the way the API server does (sandbox/asr_sandbox/crd_schema.py).
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable

import kubernetes_validate
import pytest
import yaml

from asr_sandbox.crd_schema import (
    defaulted, describe, load_crd, openapi_schema, served_version, validation_errors,
)
from asr_sandbox.paths import EXAMPLES_DIR

# The rollouts: rollout-*.yaml and quickstart-rollout.yaml (model-pull-job.yaml is a PVC + Job,
# gateway.yaml a Gateway + HTTPRoute).
EXAMPLES = sorted(EXAMPLES_DIR.glob("*rollout*.yaml"))


def load_example(path: Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        doc = yaml.safe_load(f)
    assert isinstance(doc, dict)
    return doc


def minimal_rollout() -> dict[str, Any]:
    return {
        "apiVersion": "asr.rollout.dev/v1alpha1",
        "kind": "ASRModelRollout",
        "metadata": {"name": "r", "namespace": "ns"},
        "spec": {
            "model": {"name": "paraformer-tiny", "version": "v2", "path": "paraformer-tiny/v2"},
            "modelVolume": {"persistentVolumeClaim": {"claimName": "models"}},
            "server": {"image": "asr:0.1"},
            "traffic": {"replicaRatio": {}},
            "strategy": {"steps": [{"setWeight": 50}, {"pause": {"duration": "30s"}}]},
            "analysis": {
                "prometheus": {"address": "http://127.0.0.1:9090"},
                "metrics": [{"name": "error-rate", "max": 0.01}],
            },
        },
    }


def test_crd_is_a_valid_kubernetes_object() -> None:
    # kubernetes-validate checks the manifest against apiextensions.k8s.io/v1's own schema.
    kubernetes_validate.validate(load_crd(), "1.30", strict=True)


def test_crd_names_scope_and_subresources_follow_the_contract() -> None:
    crd = load_crd()
    assert crd["metadata"]["name"] == "asrmodelrollouts.asr.rollout.dev"
    assert crd["spec"]["scope"] == "Namespaced"
    names = crd["spec"]["names"]
    assert (names["kind"], names["plural"], names["shortNames"]) == (
        "ASRModelRollout", "asrmodelrollouts", ["asr"])
    version = served_version(crd)
    assert version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns == {
        "Phase": ".status.phase", "Stable": ".status.stableVersion",
        "Canary": ".status.canaryVersion", "Weight": ".status.canaryWeight",
        "Step": ".status.currentStep", "Age": ".metadata.creationTimestamp",
    }


def _walk_structural(node: dict[str, Any], where: str, inside_junctor: bool) -> list[str]:
    """Kubernetes' structural-schema rules that matter here: every node outside allOf/anyOf/
    oneOf/not has a type (or preserves unknown fields), and nodes inside them carry no type,
    default, description, nullable or x-kubernetes-* extensions."""
    problems: list[str] = []
    if inside_junctor:
        for key in ("type", "default", "description", "nullable", "additionalProperties"):
            if key in node:
                problems.append(f"{where}: {key!r} inside a oneOf/anyOf/allOf/not")
        problems += [f"{where}: {k!r} inside a junctor" for k in node if k.startswith("x-kubernetes-")]
    elif "type" not in node and not node.get("x-kubernetes-preserve-unknown-fields") \
            and not node.get("x-kubernetes-int-or-string"):
        problems.append(f"{where}: no type")
    for name, sub in node.get("properties", {}).items():
        problems += _walk_structural(sub, f"{where}.{name}", inside_junctor)
    if isinstance(node.get("items"), dict):
        problems += _walk_structural(node["items"], f"{where}[]", inside_junctor)
    for junctor in ("allOf", "anyOf", "oneOf"):
        for i, sub in enumerate(node.get(junctor, [])):
            problems += _walk_structural(sub, f"{where}.{junctor}[{i}]", True)
    if "not" in node:
        problems += _walk_structural(node["not"], f"{where}.not", True)
    return problems


def test_schema_is_structural() -> None:
    assert _walk_structural(openapi_schema(), "", False) == []


def test_there_are_examples_of_both_traffic_providers_and_a_manual_pause() -> None:
    specs = [load_example(p)["spec"] for p in EXAMPLES]
    assert any("gatewayAPI" in s["traffic"] for s in specs)
    assert any("replicaRatio" in s["traffic"] for s in specs)
    assert any(step.get("pause") == {} for s in specs for step in s["strategy"]["steps"])


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_every_example_validates(path: Path) -> None:
    doc = load_example(path)
    assert doc["apiVersion"] == "asr.rollout.dev/v1alpha1" and doc["kind"] == "ASRModelRollout"
    assert [describe(e) for e in validation_errors(doc)] == []


def test_defaults_are_applied_where_the_parent_exists() -> None:
    spec = defaulted(minimal_rollout())["spec"]
    assert spec["server"]["replicas"] == 2
    assert spec["strategy"]["progressDeadlineSeconds"] == 600
    analysis = spec["analysis"]
    assert (analysis["interval"], analysis["failureLimit"], analysis["inconclusiveLimit"],
            analysis["errorLimit"], analysis["minRequests"], analysis["window"]) == (
        "30s", 2, 3, 3, 20, "1m")
    assert spec["rollback"] == {"onAlert": True, "postPromotionWindow": "10m"}
    # No analysis given: none is invented (a rollout without one is the operator's InvalidSpec).
    bare = minimal_rollout()
    del bare["spec"]["analysis"]
    assert "analysis" not in defaulted(bare)["spec"]
    assert validation_errors(bare) == []


Mutation = Callable[[dict[str, Any]], None]


def _set(path: str, value: Any) -> Mutation:
    def mutate(spec: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = spec
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return mutate


def _delete(path: str) -> Mutation:
    def mutate(spec: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = spec
        for key in parents:
            node = node[key]
        del node[last]
    return mutate


# (id, mutation of a valid spec, field path the error must name, words the message must hold)
BAD_SPECS: list[tuple[str, Mutation, str, str]] = [
    ("model-missing", _delete("model"), "spec", "'model' is a required property"),
    ("version-missing", _delete("model.version"), "spec.model", "'version' is a required"),
    ("path-missing", _delete("model.path"), "spec.model", "'path' is a required"),
    ("image-missing", _delete("server.image"), "spec.server", "'image' is a required"),
    ("model-volume-missing", _delete("modelVolume"), "spec", "'modelVolume' is a required"),
    ("model-volume-empty", _set("modelVolume", {}), "spec.modelVolume", "should be non-empty"),
    ("path-absolute", _set("model.path", "/etc/passwd"), "spec.model.path", "does not match"),
    ("path-dotdot-lead", _set("model.path", "../other"), "spec.model.path", "does not match"),
    ("path-dotdot-middle", _set("model.path", "a/../../etc"), "spec.model.path", "does not match"),
    ("path-dotdot-end", _set("model.path", "paraformer/.."), "spec.model.path", "does not match"),
    ("path-dot-segment", _set("model.path", "a/./b"), "spec.model.path", "does not match"),
    ("path-empty-segment", _set("model.path", "a//b"), "spec.model.path", "does not match"),
    ("path-backslash", _set("model.path", "a\\..\\b"), "spec.model.path", "does not match"),
    ("vad-path-escapes", _set("model.vadPath", "../../vad"), "spec.model.vadPath", "does not match"),
    ("sha256-not-hex", _set("model.sha256", "xyz"), "spec.model.sha256", "does not match"),
    ("name-not-dns", _set("model.name", "Paraformer_ZH"), "spec.model.name", "does not match"),
    ("replicas-zero", _set("server.replicas", 0), "spec.server.replicas", "less than the minimum"),
    ("replicas-string", _set("server.replicas", "2"), "spec.server.replicas", "is not of type 'integer'"),
    ("no-traffic-provider", _set("traffic", {}), "spec.traffic", "is not valid under any"),
    ("two-traffic-providers", _set("traffic", {"replicaRatio": {}, "gatewayAPI": {"httpRoute": "r"}}),
     "spec.traffic", "is valid under each of"),
    ("gateway-without-route", _set("traffic", {"gatewayAPI": {}}), "spec.traffic.gatewayAPI",
     "'httpRoute' is a required"),
    ("no-steps", _set("strategy.steps", []), "spec.strategy.steps", "should be non-empty"),
    ("weight-over-100", _set("strategy.steps.0", {"setWeight": 101}), "spec.strategy.steps.0.setWeight",
     "greater than the maximum"),
    ("weight-negative", _set("strategy.steps.0", {"setWeight": -1}), "spec.strategy.steps.0.setWeight",
     "less than the minimum"),
    ("two-keys-in-a-step", _set("strategy.steps.0", {"setWeight": 10, "pause": {}}),
     "spec.strategy.steps.0", "has too many properties"),
    ("empty-step", _set("strategy.steps.0", {}), "spec.strategy.steps.0", "should be non-empty"),
    ("bad-duration", _set("strategy.steps.1", {"pause": {"duration": "5 minutes"}}),
     "spec.strategy.steps.1.pause.duration", "does not match"),
    ("deadline-zero", _set("strategy.progressDeadlineSeconds", 0),
     "spec.strategy.progressDeadlineSeconds", "less than the minimum"),
    ("unknown-metric", _set("analysis.metrics.0", {"name": "accuracy", "max": 1}),
     "spec.analysis.metrics.0.name", "is not one of"),
    # custom without a query, a built-in with one, decreasing weights: CEL rules, judged by the
    # real API server in tests/real_api/test_crd_on_api_server.py.
    ("metric-without-threshold", _set("analysis.metrics.0", {"name": "error-rate"}),
     "spec.analysis.metrics.0", "is not valid under any"),
    ("no-metrics", _set("analysis.metrics", []), "spec.analysis.metrics", "should be non-empty"),
    ("prometheus-not-url", _set("analysis.prometheus.address", "prometheus:9090"),
     "spec.analysis.prometheus.address", "does not match"),
    ("failure-limit-zero", _set("analysis.failureLimit", 0), "spec.analysis.failureLimit",
     "less than the minimum"),
    ("interval-number", _set("analysis.interval", 30), "spec.analysis.interval",
     "is not of type 'string'"),
    ("on-alert-string", _set("rollback", {"onAlert": "yes"}), "spec.rollback.onAlert",
     "is not of type 'boolean'"),
    ("sidecar", _set("server.podTemplate", {"spec": {"containers": [{"name": "log-shipper"}]}}),
     "spec.server.podTemplate.spec.containers.0.name", "is not one of"),
    ("node-selector-number", _set("server.podTemplate", {"spec": {"nodeSelector": {"gpu": 1}}}),
     "spec.server.podTemplate.spec.nodeSelector.gpu", "is not of type 'string'"),
    ("tolerations-object", _set("server.podTemplate", {"spec": {"tolerations": {"key": "nvidia.com/gpu"}}}),
     "spec.server.podTemplate.spec.tolerations", "is not of type 'array'"),
    ("startup-timeout-number", _set("server.startupTimeout", 600), "spec.server.startupTimeout",
     "is not of type 'string'"),
    ("canary-replicas-zero", _set("strategy.canaryReplicas", 0), "spec.strategy.canaryReplicas",
     "less than the minimum"),
]


@pytest.mark.parametrize("mutate,field,reason", [b[1:] for b in BAD_SPECS], ids=[b[0] for b in BAD_SPECS])
def test_bad_spec_is_rejected_for_the_stated_reason(mutate: Mutation, field: str, reason: str) -> None:
    rollout = minimal_rollout()
    assert validation_errors(rollout) == []  # the base is valid: only the mutation can fail it
    mutate(rollout["spec"])
    errors = [describe(e) for e in validation_errors(copy.deepcopy(rollout))]
    assert any(e.startswith(field + ":") and reason in e for e in errors), errors


def test_status_phase_is_an_enum() -> None:
    rollout = minimal_rollout()
    rollout["status"] = {"phase": "Done"}
    assert any(describe(e).startswith("status.phase:") for e in validation_errors(rollout))
    rollout["status"] = {"phase": "Progressing", "canaryWeight": 10, "anything": {"kept": True}}
    assert validation_errors(rollout) == []
