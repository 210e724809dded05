"""Integration (issue 13): GPU inference pods as the operator builds and sizes them, with the real
operator process against the API emulator and against a real v1.28 API server (tier `real_api`,
the judge: real Deployment and ReplicaSet controllers, real pods whose status a stand-in kubelet
writes).

- the pod template a user gives (placement, security, volumes, labels) reaches the pods, the
  operator's production defaults are there, a PodDisruptionBudget guards each track, and a change
  of the pod template is canaried like a model change (a removed field leaves the live objects too);
- canary pods follow the weight under Gateway API, and a weight is written only once the pods
  that carry it are ready;
- under replicaRatio, ready stable + ready canary never falls below `spec.server.replicas` while
  canary pods take seconds to turn ready, through a promotion and a rollback.

The pods are the mock of tests/support/fake_pods.py (a ready delay stands in for a model load).
"""
from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from asr_sandbox.prometheus_runner import PrometheusRunner
from tests.operator.test_operator_rollouts import Scenario
from tests.support.backends import ApiBackend
from tests.support.fake_pods import VersionBehaviour
from tests.support.kube import wait_for
from tests.support.rollouts import RO, http_route, rollout_manifest, start_new_version, status

pytestmark = pytest.mark.slow

SLOW_START = VersionBehaviour(requests_per_second=30, latency_seconds=0.1, ready_delay_seconds=2.0)
SLOW_BAD = VersionBehaviour(requests_per_second=30, error_ratio=0.5, latency_seconds=0.1, ready_delay_seconds=2.0)
DEPLOYMENTS = ("apps", "v1", "deployments")
ROUTES = ("gateway.networking.k8s.io", "v1", "httproutes")

GPU_TEMPLATE = {
    "metadata": {"labels": {"team": "speech"}, "annotations": {"example.com/owner": "asr"}},
    "spec": {
        "nodeSelector": {"nvidia.com/gpu.present": "true"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "nvidia.com/gpu.memory", "operator": "Gt", "values": ["20000"]}]}]}}},
        "priorityClassName": "asr-inference",
        "securityContext": {"fsGroup": 10001},
        "volumes": [{"name": "cache", "emptyDir": {}}],
        "containers": [{"name": "inference-server", "securityContext": {"readOnlyRootFilesystem": True},
                        "volumeMounts": [{"name": "cache", "mountPath": "/home/asr/.cache"}]}],
    },
}


@pytest.fixture
def scenario(request: pytest.FixtureRequest, backend: ApiBackend, backend_prometheus: PrometheusRunner,
             tmp_path: Path) -> Iterator[Scenario]:
    namespace = "gpu-" + request.node.name.split("[")[0].removeprefix("test_").replace("_", "-")[:40].strip("-")
    s = Scenario(backend, backend_prometheus, tmp_path, namespace)
    try:
        yield s
    finally:
        s.stop()


def timeline(s: Scenario, objects: list[tuple[tuple[str, str, str], str]]) -> list[tuple[int, str, dict[str, Any]]]:
    """Every stored version of the named objects, in the order the API server wrote them (one
    resourceVersion counter across objects: etcd's revision; the emulator's own counter)."""
    versions = [(int(v["metadata"]["resourceVersion"]), name, v)
                for key, name in objects for v in s.history_of(key, name)]
    return sorted(versions, key=lambda item: item[0])


def test_the_pod_template_reaches_the_pods_and_a_change_of_it_is_canaried(scenario: Scenario) -> None:
    s, ns, name = scenario, scenario.ns, "placed"
    s.pods.watch(ns, name, default=VersionBehaviour(requests_per_second=30))
    s.start_operator()
    manifest = rollout_manifest(ns, name, "v1", s.prometheus.url, steps=[{"setWeight": 50}, {"pause": {"duration": "2s"}}])
    manifest["spec"]["server"]["podTemplate"] = GPU_TEMPLATE
    if s.backend.real:  # pods of a priority class that does not exist are refused
        s.kube.ensure_priority_class("asr-inference")
    s.kube.create(manifest)
    s.settled_on(name, "v1", timeout=60)
    uid = s.kube.rollout(ns, name)["metadata"]["uid"]

    pod = s.kube.get("apps/v1", "deployments", ns, f"{name}-stable")["spec"]["template"]
    for key in ("nodeSelector", "tolerations", "affinity", "priorityClassName"):
        assert pod["spec"][key] == GPU_TEMPLATE["spec"][key], key
    assert pod["metadata"]["labels"]["team"] == "speech" and pod["metadata"]["labels"]["asr.rollout.dev/track"] == "stable"
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True and pod["spec"]["securityContext"]["fsGroup"] == 10001
    container = pod["spec"]["containers"][0]
    assert {"name": "ASR_DEVICE", "value": "cuda"} in container["env"]
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600
    assert container["lifecycle"]["preStop"]["exec"]["command"][0] == "sleep"
    assert pod["spec"]["terminationGracePeriodSeconds"] > 40
    for track in ("stable", "canary"):
        pdb = s.kube.get("policy/v1", "poddisruptionbudgets", ns, f"{name}-{track}")
        assert pdb["spec"]["selector"]["matchLabels"]["asr.rollout.dev/track"] == track
        assert pdb["spec"]["maxUnavailable"] == 1
        assert [(r["kind"], r.get("uid")) for r in pdb["metadata"]["ownerReferences"]] == [("ASRModelRollout", uid)]
    if s.backend.real:  # real pods of the template (the ReplicaSet controller made them)
        pods = s.kube.list("v1", "pods", ns, label_selector=f"asr.rollout.dev/rollout={name},asr.rollout.dev/track=stable")
        assert len(pods) == 2
        assert all(p["spec"]["tolerations"][0]["key"] == "nvidia.com/gpu" and p["spec"]["nodeSelector"]
                   for p in pods)

    # The pods move off the nodeSelector to a toleration of another taint: a new revision, canaried.
    changed = {**GPU_TEMPLATE["spec"], "nodeSelector": None,  # a merge patch: null removes it
               "tolerations": [*GPU_TEMPLATE["spec"]["tolerations"],
                               {"key": "dedicated", "value": "asr", "effect": "NoSchedule"}]}
    s.kube.patch(*RO, ns, name, {"spec": {"server": {"podTemplate": {"metadata": None, "spec": changed}}}})
    progressing = s.phase(name, ("Progressing", "Paused"))
    assert progressing["canaryChanges"] == ["podTemplate.metadata.annotations", "podTemplate.metadata.labels",
                                            "podTemplate.spec.nodeSelector", "podTemplate.spec.tolerations"]

    def template(track: str) -> dict[str, Any]:
        return s.kube.get("apps/v1", "deployments", ns, f"{name}-{track}")["spec"]["template"]
    wait_for(lambda: len(template("canary")["spec"]["tolerations"]) == 2, 20, "the canary on the new template",
             context=s.log)
    assert "nodeSelector" not in template("canary")["spec"] and "nodeSelector" in template("stable")["spec"]
    assert "team" not in template("canary")["metadata"]["labels"]
    s.settled_on(name, "v1", timeout=60)
    wait_for(lambda: "nodeSelector" not in template("stable")["spec"], 20, "the stable template without nodeSelector",
             context=s.log)
    stable = template("stable")
    assert len(stable["spec"]["tolerations"]) == 2 and "annotations" not in stable["metadata"]
    assert stable["spec"]["affinity"] == GPU_TEMPLATE["spec"]["affinity"]
    # Settled: the operator does not keep rewriting the template (nothing differs after the
    # server's defaults), so the Deployment's generation stays put.
    generation = s.kube.get("apps/v1", "deployments", ns, f"{name}-stable")["metadata"]["generation"]
    time.sleep(3)
    assert s.kube.get("apps/v1", "deployments", ns, f"{name}-stable")["metadata"]["generation"] == generation


def test_gateway_canary_pods_follow_the_weight_which_waits_for_them(scenario: Scenario) -> None:
    s, ns, name = scenario, scenario.ns, "sized"
    s.pods.watch(ns, name, default=SLOW_START)
    s.kube.create(http_route(ns, f"{name}-route", name))
    s.start_operator()
    steps = [{"setWeight": 10}, {"pause": {"duration": "1s"}}, {"setWeight": 50}, {"pause": {"duration": "1s"}},
             {"setWeight": 100}, {"pause": {"duration": "1s"}}]
    s.create(name, "v1", gateway_route=f"{name}-route", steps=steps, replicas=4)
    s.settled_on(name, "v1", timeout=60)
    start_new_version(s.kube, ns, name, "v2")
    s.settled_on(name, "v2", timeout=120)

    replicas = {"stable": 4, "canary": 0}
    ready = {"stable": 4, "canary": 0}
    peak = 0
    weights_checked = []
    objects = [(DEPLOYMENTS, f"{name}-stable"), (DEPLOYMENTS, f"{name}-canary"), (ROUTES, f"{name}-route")]
    for _rv, obj_name, version in timeline(s, objects):
        if obj_name == f"{name}-route":
            refs = {r["name"]: r.get("weight") for r in version["spec"]["rules"][0]["backendRefs"]}
            weight = refs.get(f"{name}-canary") or 0
            if weight:
                # the pods that carry the weight were ready before it was written
                assert ready["canary"] >= math.ceil(4 * weight / 100), (weight, ready)
                weights_checked.append(weight)
            continue
        track = obj_name.rsplit("-", 1)[1]
        replicas[track] = int(version["spec"].get("replicas") or 0)
        ready[track] = int((version.get("status") or {}).get("readyReplicas") or 0)
        peak = max(peak, replicas["stable"] + replicas["canary"])
    assert {10, 50, 100} <= set(weights_checked), weights_checked
    canary_sizes = [int(v["spec"]["replicas"]) for v in s.history_of(DEPLOYMENTS, f"{name}-canary")]
    assert {1, 2, 4} <= set(canary_sizes), canary_sizes  # 10% -> 1 pod, 50% -> 2, 100% -> 4
    assert peak <= 4 + 4  # replicas + ceil(replicas x max weight / 100)
    wait_for(lambda: s.kube.get("apps/v1", "deployments", ns, f"{name}-canary")["spec"]["replicas"] == 0, 10,
             "the canary scaled to zero once done")


def test_replica_ratio_keeps_full_ready_capacity_while_canary_pods_start(scenario: Scenario) -> None:
    s, ns, name = scenario, scenario.ns, "capacity"
    s.pods.watch(ns, name, default=SLOW_START, versions={"v3": SLOW_BAD})
    s.start_operator()
    steps = [{"setWeight": 33}, {"pause": {"duration": "2s"}}, {"setWeight": 66}, {"pause": {"duration": "2s"}}]
    s.create(name, "v1", steps=steps, replicas=3)
    s.settled_on(name, "v1", timeout=60)
    start = max(int(v["metadata"]["resourceVersion"]) for track in ("stable", "canary")
                for v in s.history_of(DEPLOYMENTS, f"{name}-{track}"))
    start_new_version(s.kube, ns, name, "v2")
    s.settled_on(name, "v2", timeout=120)
    start_new_version(s.kube, ns, name, "v3")  # bad: rolled back at its first weight
    s.phase(name, "RolledBack", timeout=90)
    wait_for(lambda: s.kube.get("apps/v1", "deployments", ns, f"{name}-canary")["spec"]["replicas"] == 0
             and (s.kube.get("apps/v1", "deployments", ns, f"{name}-stable").get("status") or {})
             .get("readyReplicas") == 3, 30, "stable back at 3 ready pods, no canary pod", context=s.log)

    ready = {"stable": 3, "canary": 0}
    replicas = {"stable": 3, "canary": 0}
    lowest, seen_stable, seen_canary = 3, set(), set()
    order: list[tuple[str, int]] = []
    for rv, obj_name, version in timeline(s, [(DEPLOYMENTS, f"{name}-stable"), (DEPLOYMENTS, f"{name}-canary")]):
        track = obj_name.rsplit("-", 1)[1]
        ready[track] = int((version.get("status") or {}).get("readyReplicas") or 0)
        if int(version["spec"].get("replicas") or 0) != replicas[track]:
            replicas[track] = int(version["spec"]["replicas"])
            order.append((track, replicas[track]))
        if rv > start:
            lowest = min(lowest, ready["stable"] + ready["canary"])
            seen_stable.add(replicas["stable"])
            seen_canary.add(replicas["canary"])
    assert lowest >= 3, (lowest, order)
    assert {1, 2, 3} <= seen_stable and {1, 2} <= seen_canary, (seen_stable, seen_canary)  # the split did move
    # the rollback of v3 (1 canary pod, 2 stable): stable to 3 before the canary went to 0
    last_up = max(i for i, step in enumerate(order) if step == ("stable", 3))
    assert order[last_up + 1:] == [("canary", 0)], order
    final = status(s.kube, ns, name)
    assert final["stableVersion"] == "v2" and final["failedVersion"] == "v3"
