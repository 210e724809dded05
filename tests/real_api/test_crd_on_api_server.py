"""The ASRModelRollout CRD judged by a real v1.28 kube-apiserver: it is accepted, the examples
pass, bad resources are refused by the API itself with a message that names the field and says
what is wrong (schema and CEL `x-kubernetes-validations`), and status is a separate subresource.
Every write is `dryRun=All` except the status test's own rollout."""
from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from asr_sandbox.control_plane import ControlPlane
from asr_sandbox.paths import EXAMPLES_DIR
from tests.operator.test_crd_schema import minimal_rollout
from tests.support.kube import ApiError, KubeClient

pytestmark = pytest.mark.real_api
NAMESPACE = "crd-checks"
RO = ("asr.rollout.dev/v1alpha1", "asrmodelrollouts")


@pytest.fixture(scope="module")
def kube(control_plane: ControlPlane) -> KubeClient:
    client = KubeClient(control_plane.url, token=control_plane.token)
    client.ensure_namespace(NAMESPACE)
    return client


def dry_run_create(kube: KubeClient, obj: dict[str, Any]) -> dict[str, Any]:
    url = f"{kube.base_url}/apis/asr.rollout.dev/v1alpha1/namespaces/{NAMESPACE}/asrmodelrollouts?dryRun=All"
    return kube._call("POST", url, json=obj)  # type: ignore[no-any-return]


def with_namespace(obj: dict[str, Any]) -> dict[str, Any]:
    obj = copy.deepcopy(obj)
    obj["metadata"]["namespace"] = NAMESPACE
    return obj


@pytest.mark.parametrize("path", sorted(EXAMPLES_DIR.glob("*rollout*.yaml")), ids=lambda p: p.name)  # not the PVC/Job, gateway
def test_every_example_is_accepted(kube: KubeClient, path: Any) -> None:
    created = dry_run_create(kube, with_namespace(yaml.safe_load(path.read_text(encoding="utf-8"))))
    assert created["spec"]["strategy"]["progressDeadlineSeconds"] >= 1  # the API applied the defaults


def _mutate(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def apply(spec: dict[str, Any]) -> None:
        node: Any = spec
        keys = path.split(".")
        for key in keys[:-1]:
            node = node[int(key)] if key.isdigit() else node[key]
        last = keys[-1]
        if last.isdigit():
            node[int(last)] = value
        else:
            node[last] = value
    return apply


# (id, mutation of the spec, field the API names, words of its message)
REFUSED = [
    ("weight-over-100", _mutate("strategy.steps.0", {"setWeight": 150}),
     "spec.strategy.steps[0].setWeight", "less than or equal to 100"),
    ("weights-decrease", _mutate("strategy.steps", [{"setWeight": 50}, {"setWeight": 10}, {"pause": {}}]),
     "spec.strategy.steps", "setWeight values must not decrease"),
    ("shadow-after-weight", _mutate("strategy.steps", [{"setWeight": 10},
                                                        {"shadow": {"percent": 20, "duration": "1m"}}]),
     "spec.strategy.steps", "a shadow step must come before every setWeight step"),
    ("builtin-with-query", _mutate("analysis.metrics.0", {"name": "error-rate", "max": 1, "query": "up"}),
     "spec.analysis.metrics[0]", "only `name: custom` takes a `query`"),
    ("custom-without-query", _mutate("analysis.metrics.0", {"name": "custom", "max": 1}),
     "spec.analysis.metrics[0]", "a custom metric needs its PromQL in `query`"),
    ("unknown-metric", _mutate("analysis.metrics.0", {"name": "accuracy", "max": 1}),
     "spec.analysis.metrics[0].name", 'Unsupported value: "accuracy"'),
    ("bad-duration", _mutate("strategy.steps.1", {"pause": {"duration": "5 minutes"}}),
     "spec.strategy.steps[1].pause.duration", "should match"),
    ("two-traffic-providers", _mutate("traffic", {"replicaRatio": {}, "gatewayAPI": {"httpRoute": "r"}}),
     "spec.traffic", "must validate one and only one"),
    ("prometheus-not-url", _mutate("analysis.prometheus.address", "prometheus:9090"),
     "spec.analysis.prometheus.address", "should match"),
]


@pytest.mark.parametrize("mutate,field,words", [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED])
def test_bad_resources_are_refused_by_the_api_with_the_reason(
        kube: KubeClient, mutate: Callable[[dict[str, Any]], None], field: str, words: str) -> None:
    rollout = with_namespace(minimal_rollout())
    dry_run_create(kube, rollout)  # the base is valid: only the mutation can fail it
    mutate(rollout["spec"])
    with pytest.raises(ApiError) as refused:
        dry_run_create(kube, rollout)
    message = str(refused.value)
    assert refused.value.status == 422 and field in message and words in message, message


def test_increasing_weights_and_equal_steps_are_accepted(kube: KubeClient) -> None:
    rollout = with_namespace(minimal_rollout())
    rollout["spec"]["strategy"]["steps"] = [{"setWeight": 10}, {"pause": {}}, {"setWeight": 10},
                                            {"setWeight": 50}, {"pause": {"duration": "1m"}}, {"setWeight": 100}]
    dry_run_create(kube, rollout)


def test_status_is_a_subresource(kube: KubeClient) -> None:
    rollout = with_namespace(minimal_rollout())
    rollout["metadata"]["name"] = "status-check"
    rollout["status"] = {"phase": "Succeeded"}
    created = kube.create(rollout)
    assert "status" not in created or not created["status"].get("phase")  # status dropped on create
    kube.patch(*RO, NAMESPACE, "status-check", {"spec": {"model": {"version": "v9"}}, "status": {"phase": "Failed"}})
    after = kube.rollout(NAMESPACE, "status-check")
    assert after["spec"]["model"]["version"] == "v9" and not (after.get("status") or {}).get("phase")
    kube.patch(*RO, NAMESPACE, "status-check", {"status": {"phase": "Paused"}}, subresource="status")
    assert kube.rollout(NAMESPACE, "status-check")["status"]["phase"] == "Paused"
    with pytest.raises(ApiError) as refused:
        kube.patch(*RO, NAMESPACE, "status-check", {"status": {"phase": "Done"}}, subresource="status")
    assert refused.value.status == 422 and 'phase: Unsupported value: "Done"' in str(refused.value)
    kube.delete(*RO, NAMESPACE, "status-check")


def test_a_shadow_stage_before_the_weights_is_accepted(kube: KubeClient) -> None:
    rollout = with_namespace(minimal_rollout())
    rollout["spec"]["strategy"]["steps"] = [{"shadow": {"percent": 20, "duration": "2m"}}, {"pause": {}},
                                            {"setWeight": 10}, {"setWeight": 100}]
    rollout["spec"]["analysis"]["metrics"].append({"name": "shadow-cer", "max": 0.1})
    dry_run_create(kube, rollout)
