"""Unit tests of the pure child-object builders and the routing decisions."""
from __future__ import annotations

from typing import Any

import pytest
import yaml

from asr_operator import children
from asr_operator.spec import ModelRef, parse_spec
from asr_operator.traffic.gateway_api import canary_weight_of, weighted_rules
from asr_operator.traffic.replica_ratio import split_replicas
from asr_operator.traffic.router import RouterError

OWNER = {"apiVersion": "asr.rollout.dev/v1alpha1", "kind": "ASRModelRollout",
         "metadata": {"name": "meeting-zh", "namespace": "speech", "uid": "u-1"}}


def spec(**server: Any) -> Any:
    return parse_spec({
        "model": {"name": "paraformer-zh", "version": "v2", "path": "paraformer-zh/v2", "vadPath": "fsmn-vad/v1",
                  "sha256": "a" * 64, "options": {"max_segment_ms": 30000}},
        "modelVolume": {"persistentVolumeClaim": {"claimName": "asr-models"}},
        "server": {"image": "asr:0.1", "replicas": 3, "resources": {"limits": {"nvidia.com/gpu": 1}},
                   "env": [{"name": "ASR_LOG_LEVEL", "value": "debug"}, {"name": "ASR_TRACK", "value": "evil"}],
                   **server},
        "traffic": {"replicaRatio": {}},
        "strategy": {"steps": [{"setWeight": 10}, {"pause": {}}]},
    })


def test_configmap_holds_the_model_config_the_server_reads() -> None:
    model = spec().model
    cm = children.configmap("speech", "meeting-zh", "canary", model, OWNER)
    assert cm["metadata"]["name"] == "meeting-zh-canary-model"
    assert yaml.safe_load(cm["data"]["model.yaml"]) == {
        "name": "paraformer-zh", "version": "v2", "path": "paraformer-zh/v2", "sha256": "a" * 64,
        "vad_path": "fsmn-vad/v1", "options": {"max_segment_ms": 30000}}
    assert children.model_from_configmap(cm) == model
    assert cm["metadata"]["ownerReferences"][0] == {
        "apiVersion": "asr.rollout.dev/v1alpha1", "kind": "ASRModelRollout", "name": "meeting-zh",
        "controller": True, "blockOwnerDeletion": True, "uid": "u-1"}


def test_deployment_per_contract() -> None:
    deployment = children.deployment("speech", "meeting-zh", "stable", 3, "v2", spec().template, OWNER)
    assert deployment["metadata"]["name"] == "meeting-zh-stable"
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert labels == {"app.kubernetes.io/name": "asr-inference-server", "app.kubernetes.io/instance": "meeting-zh",
                      "app.kubernetes.io/managed-by": "asr-rollout", "asr.rollout.dev/rollout": "meeting-zh",
                      "asr.rollout.dev/track": "stable"}
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    container = pod["spec"]["containers"][0]
    assert container["resources"] == {"limits": {"nvidia.com/gpu": 1}}
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["ports"] == [{"name": "http", "containerPort": 8000}]
    assert {"name": "models", "mountPath": "/models", "readOnly": True} in container["volumeMounts"]
    assert {"name": "model-config", "mountPath": "/etc/asr/model", "readOnly": True} in container["volumeMounts"]
    assert container["args"] == ["--model-config", "/etc/asr/model/model.yaml", "--models-root", "/models"]
    env = {item["name"]: item for item in container["env"]}
    assert env["ASR_TRACK"] == {"name": "ASR_TRACK", "value": "stable"}  # the spec cannot override ours
    assert env["ASR_ROLLOUT"]["value"] == "meeting-zh"
    assert env["ASR_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["ASR_LOG_LEVEL"]["value"] == "debug"
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["models"]["persistentVolumeClaim"] == {"claimName": "asr-models"}
    assert volumes["model-config"]["configMap"]["name"] == "meeting-zh-stable-model"


def test_a_version_change_never_touches_the_pod_template() -> None:
    """Promotion is a ConfigMap change the server hot-reloads: the template must not move."""
    a = children.deployment("speech", "meeting-zh", "stable", 3, "v1", spec().template, OWNER)
    b = children.deployment("speech", "meeting-zh", "stable", 3, "v2", spec().template, OWNER)
    assert a["spec"]["template"] == b["spec"]["template"]
    assert a["metadata"]["labels"]["asr.rollout.dev/version"] == "v1"
    assert b["metadata"]["labels"]["asr.rollout.dev/version"] == "v2"


def test_services() -> None:
    stable = children.track_service("speech", "meeting-zh", "stable", OWNER)
    assert stable["metadata"]["name"] == "meeting-zh-stable"
    assert stable["spec"]["selector"] == {"asr.rollout.dev/rollout": "meeting-zh", "asr.rollout.dev/track": "stable"}
    both = children.combined_service("speech", "meeting-zh", OWNER)
    assert both["metadata"]["name"] == "meeting-zh" and both["spec"]["selector"] == {"asr.rollout.dev/rollout": "meeting-zh"}


def test_contains_ignores_server_defaults_but_sees_edits() -> None:
    desired = children.deployment("speech", "meeting-zh", "stable", 3, "v2", spec().template, OWNER)
    live = yaml.safe_load(yaml.safe_dump(desired))
    live["metadata"]["resourceVersion"] = "7"
    live["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = "IfNotPresent"
    live["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] = "1"
    assert children.contains(live, desired)
    live["spec"]["replicas"] = 5
    assert not children.contains(live, desired)
    live["spec"]["replicas"] = 3
    live["spec"]["template"]["spec"]["containers"][0]["image"] = "other:1"
    assert not children.contains(live, desired)


def test_model_from_a_broken_configmap_is_none() -> None:
    assert children.model_from_configmap(None) is None
    assert children.model_from_configmap({"data": {"model.yaml": "{{{"}}) is None
    assert children.model_from_configmap({"data": {"model.yaml": "name: x"}}) is None
    assert children.model_from_configmap({"data": {"model.yaml": "version: v1\npath: a"}}) == ModelRef("", "v1", "a")


@pytest.mark.parametrize("total,weight,stable,canary,effective", [
    (4, 0, 4, 0, 0), (4, 10, 3, 1, 25), (4, 25, 3, 1, 25), (4, 50, 2, 2, 50), (4, 100, 1, 4, 80),
    (1, 50, 1, 1, 50), (10, 10, 9, 1, 10),
])
def test_replica_split(total: int, weight: int, stable: int, canary: int, effective: int) -> None:
    split = split_replicas(total, weight)
    assert (split.stable, split.canary, split.effective_weight) == (stable, canary, effective)


RULES = [
    {"matches": [{"path": {"type": "PathPrefix", "value": "/v1"}}],
     "backendRefs": [{"name": "meeting-zh-stable", "port": 8000}, {"name": "other-backend", "port": 80, "weight": 5}]},
    {"matches": [{"path": {"type": "PathPrefix", "value": "/admin"}}], "backendRefs": [{"name": "admin", "port": 80}]},
]


def test_weighted_rules_touch_only_the_two_backends() -> None:
    out = weighted_rules(RULES, "meeting-zh-stable", "meeting-zh-canary", 30)
    refs = out[0]["backendRefs"]
    assert {"name": "meeting-zh-stable", "port": 8000, "weight": 70} in refs
    assert {"name": "meeting-zh-canary", "port": 8000, "weight": 30} in refs
    assert {"name": "other-backend", "port": 80, "weight": 5} in refs
    assert out[1] == RULES[1] and out[0]["matches"] == RULES[0]["matches"]
    assert "weight" not in RULES[0]["backendRefs"][0]  # input untouched (pure)
    assert canary_weight_of(out, "meeting-zh-stable", "meeting-zh-canary") == 30
    again = weighted_rules(out, "meeting-zh-stable", "meeting-zh-canary", 0)
    assert canary_weight_of(again, "meeting-zh-stable", "meeting-zh-canary") == 0
    assert len(again[0]["backendRefs"]) == 3


def test_a_route_without_the_rollouts_backends_is_a_clear_error() -> None:
    with pytest.raises(RouterError, match="no rule of the HTTPRoute has a backendRef to Service meeting-zh-stable"):
        weighted_rules([RULES[1]], "meeting-zh-stable", "meeting-zh-canary", 10)
