"""Unit tests of the pure child-object builders and the routing decisions."""
from __future__ import annotations

from typing import Any

import pytest
import yaml

from asr_operator import children
from asr_operator.spec import ModelRef, parse_spec
from asr_sandbox.json_patching import merge_patch
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
                   "env": [{"name": "ASR_LOG_LEVEL", "value": "debug"}],
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
    assert container["args"] == ["--model-config", "/etc/asr/model/model.yaml", "--models-root", "/models",
                                 "--drain-timeout", "30"]
    env = {item["name"]: item for item in container["env"]}
    assert env["ASR_TRACK"] == {"name": "ASR_TRACK", "value": "stable"}
    assert env["ASR_DEVICE"] == {"name": "ASR_DEVICE", "value": "cuda"}  # the pod requests nvidia.com/gpu
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


# --- production pod defaults and the user's pod template -----------------------------------

GPU_POD_TEMPLATE = {
    "metadata": {"labels": {"team": "speech"}, "annotations": {"prometheus.io/scrape": "true"}},
    "spec": {
        "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["a", "b"]}]}]}}},
        "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                                       "whenUnsatisfiable": "ScheduleAnyway",
                                       "labelSelector": {"matchLabels": {"asr.rollout.dev/rollout": "meeting-zh"}}}],
        "priorityClassName": "inference-high",
        "imagePullSecrets": [{"name": "registry-creds"}],
        "serviceAccountName": "asr-server",
        "runtimeClassName": "nvidia",
        "securityContext": {"runAsUser": 20000, "fsGroup": 20000},
        "volumes": [{"name": "cache", "emptyDir": {"sizeLimit": "2Gi"}}, {"name": "dshm", "emptyDir": {"medium": "Memory"}}],
        "containers": [{"name": "inference-server",
                        "securityContext": {"readOnlyRootFilesystem": True},
                        "volumeMounts": [{"name": "cache", "mountPath": "/home/asr/.cache"},
                                         {"name": "dshm", "mountPath": "/dev/shm"}]}],
    },
}


def test_production_defaults_non_root_probes_prestop_and_grace() -> None:
    pod = children.deployment("speech", "meeting-zh", "canary", 1, "v2", spec().template, OWNER)["spec"]["template"]
    assert pod["spec"]["securityContext"] == {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001,
                                              "seccompProfile": {"type": "RuntimeDefault"}}
    container = pod["spec"]["containers"][0]
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    # startup: a model load of up to 15 minutes; liveness and readiness wait for it
    startup = container["startupProbe"]
    assert startup["httpGet"] == {"path": "/readyz", "port": "http"}
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert "initialDelaySeconds" not in container["livenessProbe"]  # the startup probe gates it
    # preStop: endpoints forget the pod, then SIGTERM drains; SIGKILL only after both
    assert container["lifecycle"]["preStop"] == {"exec": {"command": ["sleep", "10"]}}
    assert pod["spec"]["terminationGracePeriodSeconds"] > 10 + 30
    assert "--drain-timeout" in container["args"]


def test_dockerfile_runs_as_the_uid_the_pods_ask_for() -> None:
    from asr_sandbox.paths import REPO_ROOT
    text = (REPO_ROOT / "Dockerfile.server").read_text()
    assert "--uid 10001" in text and "--gid 10001" in text and "USER 10001" in text


def test_startup_prestop_and_drain_are_configurable() -> None:
    template = spec(startupTimeout="30m", preStopDelay="5s", drainTimeout="2m").template
    pod = children.deployment("speech", "meeting-zh", "stable", 3, "v2", template, OWNER)["spec"]["template"]
    container = pod["spec"]["containers"][0]
    assert container["startupProbe"]["periodSeconds"] * container["startupProbe"]["failureThreshold"] == 1800
    assert container["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "5"]
    assert container["args"][-2:] == ["--drain-timeout", "120"]
    assert pod["spec"]["terminationGracePeriodSeconds"] == 5 + 120 + children.GRACE_MARGIN_SECONDS
    no_pause = children.deployment("speech", "meeting-zh", "stable", 3, "v2", spec(preStopDelay="0s").template, OWNER)
    assert "lifecycle" not in no_pause["spec"]["template"]["spec"]["containers"][0]


def test_the_pod_template_places_gpu_pods_and_the_operators_parts_stay() -> None:
    template = spec(podTemplate=GPU_POD_TEMPLATE).template
    pod = children.deployment("speech", "meeting-zh", "canary", 1, "v2", template, OWNER)["spec"]["template"]
    user = GPU_POD_TEMPLATE["spec"]
    for key in ("nodeSelector", "tolerations", "affinity", "topologySpreadConstraints", "priorityClassName",
                "imagePullSecrets", "serviceAccountName", "runtimeClassName"):
        assert pod["spec"][key] == user[key], key
    assert pod["metadata"]["labels"]["team"] == "speech"
    assert pod["metadata"]["labels"]["asr.rollout.dev/track"] == "canary"
    assert pod["metadata"]["annotations"] == {"prometheus.io/scrape": "true"}
    # the user's security context fields override ours one by one; the rest of ours stays
    assert pod["spec"]["securityContext"] == {"runAsNonRoot": True, "runAsUser": 20000, "runAsGroup": 10001,
                                              "fsGroup": 20000, "seccompProfile": {"type": "RuntimeDefault"}}
    (container,) = pod["spec"]["containers"]
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                                            "readOnlyRootFilesystem": True}
    assert container["name"] == "inference-server" and container["image"] == "asr:0.1"
    assert [m["name"] for m in container["volumeMounts"]] == ["models", "model-config", "cache", "dshm"]
    assert [v["name"] for v in pod["spec"]["volumes"]] == ["models", "model-config", "cache", "dshm"]
    assert "startupProbe" in container and "lifecycle" in container


def test_device_env_follows_the_accelerator_request() -> None:
    def env_of(**server: Any) -> dict[str, Any]:
        pod = children.deployment("speech", "r", "stable", 1, "v1", spec(**server).template, OWNER)["spec"]["template"]
        return {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}

    assert env_of()["ASR_DEVICE"] == "cuda"
    assert "ASR_DEVICE" not in env_of(resources={"limits": {"cpu": "4"}})  # the server's own default (auto)
    assert "ASR_DEVICE" not in env_of(resources={"limits": {"nvidia.com/gpu": 0}})
    assert env_of(resources={"limits": {"cpu": "4"}},
                  env=[{"name": "ASR_DEVICE", "value": "cpu"}])["ASR_DEVICE"] == "cpu"  # a CPU pod: the user's
    assert env_of(resources={"requests": {"amd.com/gpu": "1"}, "limits": {"amd.com/gpu": "1"}},
                  acceleratorResource="amd.com/gpu")["ASR_DEVICE"] == "cuda"
    assert "ASR_DEVICE" not in env_of(resources={"limits": {"amd.com/gpu": "1"}})  # not named the accelerator


def test_a_disruption_budget_per_track() -> None:
    pdb = children.disruption_budget("speech", "meeting-zh", "stable", 1, OWNER)
    assert (pdb["apiVersion"], pdb["kind"], pdb["metadata"]["name"]) == ("policy/v1", "PodDisruptionBudget",
                                                                         "meeting-zh-stable")
    assert pdb["spec"]["selector"]["matchLabels"] == {"asr.rollout.dev/rollout": "meeting-zh",
                                                      "asr.rollout.dev/track": "stable"}
    assert pdb["spec"]["maxUnavailable"] == 1 and pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    assert pdb["metadata"]["ownerReferences"][0]["name"] == "meeting-zh"
    assert spec(disruptionBudget={"maxUnavailable": "25%"}).server.max_unavailable == "25%"


def test_a_template_change_replaces_removed_fields_and_other_drift_keeps_others_edits() -> None:
    before = children.deployment("speech", "r", "canary", 1, "v1", spec(podTemplate=GPU_POD_TEMPLATE).template, OWNER)
    live = merge_patch({}, before)
    live["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"] = "now"
    live["spec"]["template"]["spec"]["dnsPolicy"] = "ClusterFirst"  # a server default
    assert children.patch_for(live, before) is None
    lean = {"spec": {"tolerations": GPU_POD_TEMPLATE["spec"]["tolerations"],
                     "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}}}}
    after = children.deployment("speech", "r", "canary", 1, "v1", spec(podTemplate=lean).template, OWNER)
    patch = children.patch_for(live, after)
    assert patch is not None
    result = merge_patch(live, patch)
    pod = result["spec"]["template"]
    assert "nodeSelector" not in pod["spec"] and "priorityClassName" not in pod["spec"]
    assert pod["spec"]["affinity"] == lean["spec"]["affinity"]  # no nodeAffinity left behind
    assert "team" not in pod["metadata"]["labels"] and "annotations" not in pod["metadata"]
    assert pod["spec"]["securityContext"] == children.DEFAULT_POD_SECURITY
    assert children.contains(result, after)
    # drift that is not a template change (replicas) patches the desired values only
    scaled = children.deployment("speech", "r", "canary", 2, "v1", spec(podTemplate=GPU_POD_TEMPLATE).template, OWNER)
    patch = children.patch_for(live, scaled)
    assert patch is not None and patch["spec"]["replicas"] == 2
    kept = merge_patch(live, patch)["spec"]["template"]
    assert kept["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"] == "now"
