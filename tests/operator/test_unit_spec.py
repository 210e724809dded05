"""Unit tests of spec parsing and semantic checks: every error names the field and the fix."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from asr_operator.durations import parse_duration
from asr_operator.spec import InvalidSpec, parse_spec

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def base() -> dict[str, Any]:
    return {
        "model": {"name": "paraformer-zh", "version": "v1.2.0", "path": "paraformer-zh/v1.2.0"},
        "modelVolume": {"persistentVolumeClaim": {"claimName": "asr-models"}},
        "server": {"image": "asr:0.1"},
        "traffic": {"gatewayAPI": {"httpRoute": "meeting-zh"}},
        "strategy": {"steps": [{"setWeight": 10}, {"pause": {"duration": "1m"}}, {"setWeight": 100}]},
        "analysis": {"prometheus": {"address": "http://prometheus:9090"},
                     "metrics": [{"name": "error-rate", "max": 0.01}]},
    }


def problems(spec: dict[str, Any]) -> str:
    with pytest.raises(InvalidSpec) as error:
        parse_spec(spec)
    return str(error.value)


def with_(path: str, value: Any) -> dict[str, Any]:
    spec = base()
    node: Any = spec
    keys = path.split(".")
    for key in keys[:-1]:
        node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
    if isinstance(node, list):
        node[int(keys[-1])] = value
    else:
        node[keys[-1]] = value
    return spec


def test_defaults_fill_in() -> None:
    spec = parse_spec(base())
    assert spec.server.replicas == 2
    assert spec.strategy.progress_deadline_seconds == 600
    assert spec.analysis is not None
    assert (spec.analysis.interval_seconds, spec.analysis.failure_limit, spec.analysis.inconclusive_limit,
            spec.analysis.error_limit, spec.analysis.min_requests, spec.analysis.window_seconds) == (30, 2, 3, 3, 20, 60)
    assert spec.rollback.on_alert is True and spec.rollback.post_promotion_window_seconds == 600
    assert [s.set_weight for s in spec.strategy.steps] == [10, None, 100]
    assert spec.strategy.steps[1].pause_seconds == 60


@pytest.mark.parametrize("name", ["rollout-gateway-api.yaml", "rollout-replica-ratio.yaml"])
def test_examples_parse(name: str) -> None:
    document = yaml.safe_load((EXAMPLES / name).read_text())
    spec = parse_spec(document["spec"])
    assert spec.model.version


def test_the_fingerprint_changes_with_the_spec_only() -> None:
    assert parse_spec(base()).fingerprint == parse_spec(copy.deepcopy(base())).fingerprint
    assert parse_spec(base()).fingerprint != parse_spec(with_("server.replicas", 3)).fingerprint


@pytest.mark.parametrize("path,value,expected", [
    ("strategy.steps.0", {"setWeight": 120}, "spec.strategy.steps[0].setWeight: 120 is over 100; use 0..100"),
    ("strategy.steps.0", {"setWeight": -1}, "spec.strategy.steps[0].setWeight: -1 is under 0"),
    ("strategy.steps.0", {"setWeight": 10, "pause": {}}, "spec.strategy.steps[0]: must have exactly one key"),
    ("strategy.steps.0", {"jump": 1}, "spec.strategy.steps[0]: unknown step 'jump'"),
    ("strategy.steps.1", {"pause": {"duration": "1 minute"}}, "spec.strategy.steps[1].pause.duration: '1 minute' is not a duration"),
    ("model.path", "../etc/passwd", "spec.model.path: '../etc/passwd' leaves the model volume"),
    ("model.path", "a/../../b", "leaves the model volume"),
    ("model.path", "/models/x", "spec.model.path: '/models/x' must be relative"),
    ("model.vadPath", "fsmn/../..", "spec.model.vadPath"),
    ("model.version", "v1+build", "spec.model.version: 'v1+build' is not valid"),
    ("model.sha256", "abc", "spec.model.sha256: 'abc' is not valid; write the 64 lowercase hex digits"),
    ("model.name", None, "spec.model.name: is required"),
    ("server.replicas", 0, "spec.server.replicas: 0 is under 1"),
    ("server.image", "", "spec.server.image: must be a non-empty string"),
    ("traffic", {"gatewayAPI": {"httpRoute": "r"}, "replicaRatio": {}}, "spec.traffic: set exactly one of"),
    ("traffic", {"istio": {}}, "spec.traffic: unknown router istio"),
    ("analysis.metrics", [{"name": "word-error", "max": 1}], "spec.analysis.metrics[0].name: unknown metric 'word-error'"),
    ("analysis.metrics", [{"name": "golden-agreement", "max": 1}], "spec.analysis.metrics[0]: golden-agreement needs min"),
    ("analysis.metrics", [{"name": "error-rate"}], "spec.analysis.metrics[0]: needs a threshold"),
    ("analysis.metrics", [{"name": "error-rate", "max": 0.1, "min": 0.5}], "min 0.5 is over max 0.1"),
    ("analysis.metrics", [{"name": "error-rate", "max": 0.1, "query": "up"}], "only `custom` metrics take a query"),
    ("analysis.metrics", [{"name": "custom", "max": 1}], "spec.analysis.metrics[0].query: is required"),
    ("analysis.metrics", [{"name": "custom", "max": 1, "query": "rate(x[{{version}}])"}],
     "placeholder {{version}} must be inside a double-quoted label value"),
    ("analysis.metrics", [{"name": "custom", "max": 1, "query": 'x{a="{{pod}}"}'}], "unknown placeholder {{pod}}"),
    ("analysis.metrics", [{"name": "golden-agreement", "min": 0.9, "maxIncrease": 0.1}], "spec.analysis.metrics[0].maxIncrease: golden-agreement has no stable-track"),
    ("analysis.metrics", [{"name": "gpu-memory-growth-bytes-per-minute", "max": 1e8, "maxIncrease": 1e6}],
     "spec.analysis.metrics[0].maxIncrease: gpu-memory-growth-bytes-per-minute has no stable-track"),
    ("analysis.metrics", [{"name": "gpu-memory-growth-bytes-per-minute", "max": 1e8, "query": "up"}],
     "spec.analysis.metrics[0].query: only `custom` metrics take a query"),
    ("analysis.interval", "soon", "spec.analysis.interval: 'soon' is not a duration"),
    ("analysis.failureLimit", 0, "spec.analysis.failureLimit: 0 is under 1"),
    ("analysis.prometheus", {"address": "prometheus:9090"}, "spec.analysis.prometheus.address"),
    ("rollback", {"onAlert": "yes"}, "spec.rollback.onAlert: must be true or false"),
])
def test_bad_values_name_the_field(path: str, value: Any, expected: str) -> None:
    assert expected in problems(with_(path, value))


def test_an_automatic_rollout_needs_analysis() -> None:
    spec = base()
    del spec["analysis"]
    message = problems(spec)
    assert "spec.analysis.metrics: an automatic rollout (no `pause: {}` step) needs at least one analysis metric" in message
    spec["strategy"]["steps"].insert(1, {"pause": {}})
    assert parse_spec(spec).analysis is None  # a person gates it instead


def test_analysis_needs_a_step_that_sends_traffic() -> None:
    assert "no step sends traffic to the canary" in problems(with_("strategy.steps", [{"pause": {"duration": "1m"}}]))


def test_every_problem_is_reported_at_once() -> None:
    spec = with_("server.replicas", 0)
    spec["model"]["path"] = "/abs"
    error = problems(spec)
    assert "spec.server.replicas" in error and "spec.model.path" in error


def test_missing_spec_and_wrong_types() -> None:
    assert "spec: is required" in problems(None)  # type: ignore[arg-type]
    assert "spec.model: must be an object, got str" in problems(with_("model", "paraformer"))


def test_repeated_custom_metrics_get_distinct_names() -> None:
    spec = with_("analysis.metrics", [
        {"name": "custom", "max": 1, "query": 'sum(x{rollout="{{rollout}}"})'},
        {"name": "custom", "max": 2, "query": 'sum(y{rollout="{{rollout}}"})'},
    ])
    parsed = parse_spec(spec)
    assert parsed.analysis is not None
    assert [m.name for m in parsed.analysis.metrics] == ["custom", "custom#2"]


@pytest.mark.parametrize("text,seconds", [("30s", 30), ("1m", 60), ("1h30m", 5400), ("250ms", 0.25),
                                          ("1.5s", 1.5), ("0", 0)])
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "30", "1d", "m", "1m 30s", "-1s"])
def test_bad_durations_say_how_to_write_one(text: str) -> None:
    with pytest.raises(ValueError, match="write e.g. 30s, 1m, 1h30m"):
        parse_duration(text)


def test_limit_actions_default_to_pause_and_take_rollback() -> None:
    spec = parse_spec(base())
    assert spec.analysis is not None
    assert (spec.analysis.on_inconclusive, spec.analysis.on_error) == ("pause", "pause")
    chosen = parse_spec(with_("analysis.onInconclusive", "rollback"))
    assert chosen.analysis is not None and chosen.analysis.on_inconclusive == "rollback"
    assert "spec.analysis.onError: 'ignore' is not one of pause, rollback" in problems(with_("analysis.onError", "ignore"))


def test_gpu_memory_growth_is_a_builtin_metric() -> None:
    spec = parse_spec(with_("analysis.metrics", [{"name": "gpu-memory-growth-bytes-per-minute", "max": 100e6}]))
    assert [(m.kind, m.max) for m in spec.analysis.metrics] == [("gpu-memory-growth-bytes-per-minute", 100e6)]


# --- the pod template: what it takes, and the operator's parts it cannot override -----------

def server_with(**fields: Any) -> dict[str, Any]:
    spec = base()
    spec["server"] = {"image": "asr:0.1", "resources": {"limits": {"nvidia.com/gpu": 1}}, **fields}
    return spec


def pod_spec(**fields: Any) -> dict[str, Any]:
    return server_with(podTemplate={"spec": fields})


def server_container(**fields: Any) -> dict[str, Any]:
    return pod_spec(containers=[{"name": "inference-server", **fields}])


@pytest.mark.parametrize("spec,expected", [
    (server_with(env=[{"name": "ASR_TRACK", "value": "evil"}]),
     "spec.server.env[0].name: ASR_TRACK is the operator's"),
    (server_with(env=[{"name": "ASR_PORT", "value": "9000"}]), "spec.server.env[0].name: ASR_PORT is the operator's"),
    (server_with(env=[{"name": "ASR_DEVICE", "value": "cpu"}]),
     "spec.server.env[0].name: ASR_DEVICE is set by the operator to `cuda` when the pod requests nvidia.com/gpu"),
    (server_container(image="other:1"), "spec.server.podTemplate.spec.containers[0].image: write spec.server.image"),
    (server_container(resources={}), "spec.server.podTemplate.spec.containers[0].resources: write spec.server.resources"),
    (server_container(env=[]), "spec.server.podTemplate.spec.containers[0].env: write spec.server.env"),
    (server_container(livenessProbe={}), "spec.server.podTemplate.spec.containers[0].livenessProbe: the operator sets"),
    (server_container(lifecycle={}), "spec.server.podTemplate.spec.containers[0].lifecycle: the operator sets the preStop"),
    (pod_spec(containers=[{"name": "server"}]), "spec.server.podTemplate.spec.containers[0].name: 'server': the "
                                                "server container is named 'inference-server'"),
    (pod_spec(containers=[{"name": "inference-server"}, {"name": "sidecar"}]), "sidecars are not supported"),
    (pod_spec(volumes=[{"name": "models", "emptyDir": {}}]),
     "spec.server.podTemplate.spec.volumes[0].name: 'models' is the operator's volume"),
    (pod_spec(volumes=[{"name": "x", "emptyDir": {}}],
              containers=[{"name": "inference-server", "volumeMounts": [{"name": "x", "mountPath": "/models/x"}]}]),
     "spec.server.podTemplate.spec.containers[0].volumeMounts[0].mountPath: '/models/x' is inside the operator's mounts"),
    (server_container(volumeMounts=[{"name": "model-config", "mountPath": "/cfg"}]),
     "volumeMounts[0].name: 'model-config' is mounted by the operator"),
    (server_container(volumeMounts=[{"name": "nowhere", "mountPath": "/x"}]),
     "volumeMounts[0].name: 'nowhere' is not a volume of podTemplate.spec.volumes"),
    (server_with(podTemplate={"metadata": {"labels": {"asr.rollout.dev/track": "stable"}}}),
     "spec.server.podTemplate.metadata.labels[asr.rollout.dev/track]: set by the operator"),
    (server_with(podTemplate={"metadata": {"labels": {"app.kubernetes.io/name": "x"}}}),
     "spec.server.podTemplate.metadata.labels[app.kubernetes.io/name]: set by the operator"),
    (server_with(podTemplate={"metadata": {"labels": {"team": "a b"}}}), "'a b' is not a valid label value"),
    (server_with(podTemplate={"metadata": {"name": "x"}}), "spec.server.podTemplate.metadata.name: not taken"),
    (pod_spec(terminationGracePeriodSeconds=5),
     "spec.server.podTemplate.spec.terminationGracePeriodSeconds: the operator sets it from spec.server.preStopDelay"),
    (pod_spec(hostNetwork=True), "spec.server.podTemplate.spec.hostNetwork: not taken by the operator"),
    (pod_spec(tolerations={"key": "nvidia.com/gpu"}), "spec.server.podTemplate.spec.tolerations: must be a list"),
    (pod_spec(securityContext={"runAsUser": 0}), "spec.server.podTemplate.spec.securityContext.runAsUser: 0 is root"),
    (server_container(securityContext={"runAsUser": 0}), "containers[0].securityContext.runAsUser: 0 is root"),
    (server_with(podTemplate={"spec": {}, "kind": "Pod"}), "spec.server.podTemplate.kind: unknown field"),
    (server_with(startupTimeout="1s"), "spec.server.startupTimeout: '1s' is too short"),
    (server_with(acceleratorResource="GPU!"), "spec.server.acceleratorResource: 'GPU!' is not valid"),
    (server_with(disruptionBudget={"maxUnavailable": -1}), "spec.server.disruptionBudget.maxUnavailable"),
    (with_("strategy.canaryReplicas", 0), "spec.strategy.canaryReplicas: 0 is under 1"),
])
def test_the_operators_parts_cannot_be_overridden(spec: dict[str, Any], expected: str) -> None:
    assert expected in problems(spec)


def test_root_is_allowed_when_asked_for_outright() -> None:
    parsed = parse_spec(pod_spec(securityContext={"runAsUser": 0, "runAsNonRoot": False}))
    assert parsed.server.pod_template["spec"]["securityContext"]["runAsUser"] == 0


def test_canary_sizing_options_are_gateway_api_only() -> None:
    spec = base()
    spec["traffic"] = {"replicaRatio": {}}
    spec["strategy"]["canaryReplicas"] = 1
    assert "spec.strategy.canaryReplicas: works with traffic.gatewayAPI only" in problems(spec)
    assert parse_spec(with_("strategy.canaryReplicas", 2)).strategy.canary_replicas == 2


def test_the_pod_template_is_part_of_the_revision() -> None:
    plain = parse_spec(base()).template
    tolerated = parse_spec(pod_spec(tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists"}])).template
    assert not tolerated.same_as(plain)
    assert tolerated.changes_from(plain) == ["resources", "podTemplate.spec.tolerations"]
    assert type(tolerated).from_status(tolerated.to_status()) == tolerated
    # defaults are not written to status: a status from before these fields reads as the same template
    assert "podTemplate" not in plain.to_status() and "startupTimeoutSeconds" not in plain.to_status()
    slower = parse_spec(server_with(startupTimeout="30m")).template
    assert slower.to_status()["startupTimeoutSeconds"] == 1800
    assert slower.changes_from(parse_spec(server_with()).template) == ["startupTimeout"]
