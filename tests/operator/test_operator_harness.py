"""The test bed itself: the API emulator behaves like an API server where clients rely on it,
and a tiny kopf operator (tests/support/tiny_operator.py) runs against it through a kubeconfig."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest
import requests

from asr_sandbox.kube_emulator import EmulatorServer, matches_label_selector
from asr_sandbox.paths import REPO_ROOT
from asr_sandbox.processes import ManagedProcess
from tests.support.kube import ApiError, KubeClient, wait_for

RO = ("asr.rollout.dev/v1alpha1", "asrmodelrollouts")


def rollout(name: str, namespace: str, version: str = "v1") -> dict[str, Any]:
    return {
        "apiVersion": "asr.rollout.dev/v1alpha1", "kind": "ASRModelRollout",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "model": {"name": "paraformer-tiny", "version": version, "path": f"paraformer-tiny/{version}"},
            "modelVolume": {"hostPath": {"path": "/models"}},
            "server": {"image": "asr:0.1"},
            "traffic": {"replicaRatio": {}},
            "strategy": {"steps": [{"setWeight": 50}]},
        },
    }


def configmap(name: str, namespace: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": namespace, "labels": labels or {}},
            "data": {"k": "v"}}


def test_create_stamps_metadata_and_applies_crd_defaults(kube: KubeClient) -> None:
    created = kube.create(rollout("stamp", "h-stamp"))
    meta = created["metadata"]
    assert meta["uid"] and meta["creationTimestamp"].endswith("Z")
    assert meta["generation"] == 1 and int(meta["resourceVersion"]) > 0
    assert created["spec"]["server"]["replicas"] == 2  # CRD default, as the API server does
    assert created["spec"]["strategy"]["progressDeadlineSeconds"] == 600
    with pytest.raises(ApiError) as e:
        kube.create(rollout("stamp", "h-stamp"))
    assert e.value.status == 409 and e.value.body["reason"] == "AlreadyExists"


def test_generation_moves_with_spec_only_and_resource_version_with_every_change(kube: KubeClient) -> None:
    kube.create(rollout("gen", "h-gen"))
    first = kube.rollout("h-gen", "gen")
    annotated = kube.patch(*RO, "h-gen", "gen", {"metadata": {"annotations": {"a": "b"}}})
    assert annotated["metadata"]["generation"] == 1
    assert int(annotated["metadata"]["resourceVersion"]) > int(first["metadata"]["resourceVersion"])
    bumped = kube.patch(*RO, "h-gen", "gen", {"spec": {"model": {"version": "v2"}}})
    assert bumped["metadata"]["generation"] == 2
    same = kube.patch(*RO, "h-gen", "gen", {"spec": {"model": {"version": "v2"}}})
    assert same["metadata"]["resourceVersion"] == bumped["metadata"]["resourceVersion"]  # no-op


def test_stale_resource_version_conflicts(kube: KubeClient) -> None:
    created = kube.create(rollout("stale", "h-stale"))
    old_rv = created["metadata"]["resourceVersion"]
    kube.patch(*RO, "h-stale", "stale", {"metadata": {"labels": {"x": "1"}}})
    with pytest.raises(ApiError) as e:
        kube.patch(*RO, "h-stale", "stale",
                   {"metadata": {"resourceVersion": old_rv, "labels": {"x": "2"}}})
    assert e.value.status == 409 and e.value.body["reason"] == "Conflict"
    assert kube.rollout("h-stale", "stale")["metadata"]["labels"] == {"x": "1"}


def test_json_patch_test_failure_is_422_and_changes_nothing(kube: KubeClient) -> None:
    created = kube.create(rollout("jp", "h-jp"))
    ops: list[dict[str, Any]] = [{"op": "test", "path": "/metadata/resourceVersion", "value": "not-the-version"},
           {"op": "add", "path": "/metadata/finalizers", "value": ["x"]}]
    with pytest.raises(ApiError) as e:
        kube.patch(*RO, "h-jp", "jp", ops, content_type="application/json-patch+json")
    assert e.value.status == 422
    assert "finalizers" not in kube.rollout("h-jp", "jp")["metadata"]
    ops[0]["value"] = created["metadata"]["resourceVersion"]
    patched = kube.patch(*RO, "h-jp", "jp", ops, content_type="application/json-patch+json")
    assert patched["metadata"]["finalizers"] == ["x"]


def test_status_subresource_is_separate(kube: KubeClient) -> None:
    kube.create(rollout("st", "h-st"))
    # status sent to the main resource is ignored, as by a real API server
    main = kube.patch(*RO, "h-st", "st", {"status": {"phase": "Progressing"}, "metadata": {"labels": {"l": "1"}}})
    assert "status" not in main and main["metadata"]["labels"] == {"l": "1"}
    # a /status patch changes status only
    status = kube.patch(*RO, "h-st", "st", {"status": {"phase": "Paused"}, "spec": {"server": {"image": "evil"}}},
                        subresource="status")
    assert status["status"] == {"phase": "Paused"}
    assert status["spec"]["server"]["image"] == "asr:0.1"
    assert status["metadata"]["generation"] == 1


def test_lists_have_kind_and_honour_label_selectors(kube: KubeClient, api: EmulatorServer) -> None:
    kube.create(configmap("a", "h-list", {"track": "stable"}))
    kube.create(configmap("b", "h-list", {"track": "canary"}))
    body = requests.get(f"{api.url}/api/v1/namespaces/h-list/configmaps", timeout=5).json()
    assert body["kind"] == "ConfigMapList" and body["apiVersion"] == "v1"
    assert int(body["metadata"]["resourceVersion"]) > 0
    assert [o["metadata"]["name"] for o in body["items"]] == ["a", "b"]
    assert [o["metadata"]["name"] for o in kube.list("v1", "configmaps", "h-list", "track=canary")] == ["b"]
    assert matches_label_selector({"a": "1"}, "a,!b,a!=2") and not matches_label_selector({"a": "1"}, "a=2")


def test_discovery_and_namespaces(api: EmulatorServer, kube: KubeClient) -> None:
    core = requests.get(f"{api.url}/api/v1", timeout=5).json()
    assert core["groupVersion"] == "v1"
    assert {"configmaps", "services", "events", "namespaces"} <= {r["name"] for r in core["resources"]}
    crd_group = requests.get(f"{api.url}/apis/asr.rollout.dev/v1alpha1", timeout=5).json()
    names = {r["name"]: r for r in crd_group["resources"]}
    assert names["asrmodelrollouts"]["kind"] == "ASRModelRollout"
    assert "asrmodelrollouts/status" in names and names["asrmodelrollouts"]["shortNames"] == ["asr"]
    kube.create(configmap("ns-probe", "h-ns"))
    namespaces = requests.get(f"{api.url}/api/v1/namespaces", timeout=5).json()
    assert namespaces["kind"] == "NamespaceList"
    assert "h-ns" in {n["metadata"]["name"] for n in namespaces["items"]}
    assert requests.get(f"{api.url}/api/v1/namespaces/h-ns", timeout=5).status_code == 200
    assert requests.get(f"{api.url}/api/v1/namespaces/nope", timeout=5).status_code == 404


def test_generate_name_and_request_log(api: EmulatorServer, kube: KubeClient) -> None:
    before = len(api.emulator.request_log)
    event = kube.create({"apiVersion": "v1", "kind": "Event",
                         "metadata": {"generateName": "tiny-", "namespace": "h-log"}, "reason": "R"})
    assert event["metadata"]["name"].startswith("tiny-") and len(event["metadata"]["name"]) > 5
    kube.list("v1", "events", "h-log")
    with pytest.raises(ApiError):
        kube.get("v1", "events", "h-log", "missing")
    log = api.emulator.request_log[before:]
    assert [(r.verb, r.resource, r.namespace, r.status) for r in log] == [
        ("create", "events", "h-log", 201), ("list", "events", "h-log", 200),
        ("get", "events", "h-log", 404)]


def test_tiny_kopf_operator_runs_against_the_emulator(
        api: EmulatorServer, kube: KubeClient, kubeconfig: Path, tmp_path: Path) -> None:
    ns = "h-kopf"
    env = dict(os.environ, KUBECONFIG=str(kubeconfig), PYTHONPATH=str(REPO_ROOT))
    argv = [sys.executable, "-m", "kopf", "run", "--standalone", "-n", ns,
            str(REPO_ROOT / "tests" / "support" / "tiny_operator.py")]
    log_start = len(api.emulator.request_log)

    def context() -> str:
        requests_seen = "\n".join(f"{r.method} {r.path} -> {r.status}"
                                   for r in api.emulator.request_log[log_start:] if r.name != "tiny" or r.method != "GET")
        return f"{proc.log_tail()}\n--- API requests ---\n{requests_seen}"

    with ManagedProcess(argv, tmp_path / "kopf.log", env=env) as proc:
        kube.create(rollout("tiny", ns, "v1"))
        status = wait_for(lambda: kube.rollout(ns, "tiny").get("status", {}).get("phase"), 30,
                          "the tiny operator to set status.phase", context=context)
        assert status == "Progressing"
        cm = kube.get("v1", "configmaps", ns, "tiny-stable-model")
        owner = cm["metadata"]["ownerReferences"][0]
        assert (owner["kind"], owner["name"]) == ("ASRModelRollout", "tiny")
        assert owner["uid"] == kube.rollout(ns, "tiny")["metadata"]["uid"]
        # kopf's finalizer went in through a JSON patch guarded by a resourceVersion test
        assert "tiny.asr.rollout.dev/finalizer" in kube.rollout(ns, "tiny")["metadata"]["finalizers"]

        kube.patch(*RO, ns, "tiny", {"spec": {"model": {"version": "v2", "path": "paraformer-tiny/v2"}}})
        wait_for(lambda: "version: v2" in kube.get("v1", "configmaps", ns, "tiny-stable-model")["data"]["model.yaml"],
                 30, "the ConfigMap to follow the new version", context=context)
        wait_for(lambda: kube.rollout(ns, "tiny")["status"].get("observedGeneration") == 2, 30,
                 "observedGeneration 2")
        events = kube.list("v1", "events", ns)
        assert any(e["reason"] == "Created" and e["involvedObject"]["name"] == "tiny" for e in events)

        kube.delete(*RO, ns, "tiny")  # the finalizer holds it until kopf releases it
        wait_for(lambda: kube.get_or_none(*RO, ns, "tiny") is None, 30,
                 "kopf to release the finalizer", context=context)
        assert proc.running, proc.log_tail()
    log = api.emulator.request_log[log_start:]
    used = {(r.verb, r.rbac_resource) for r in log if r.namespace == ns}
    assert {("list", "asrmodelrollouts"), ("watch", "asrmodelrollouts"), ("patch", "asrmodelrollouts"),
            ("patch", "asrmodelrollouts/status"), ("create", "events")} <= used
    assert not [r for r in log if r.status >= 500], [r for r in log if r.status >= 500]


def test_watch_resumes_from_a_resource_version_without_losing_changes(
        api: EmulatorServer, kube: KubeClient) -> None:
    first = kube.create(configmap("w1", "h-watch"))
    second = kube.patch("v1", "configmaps", "h-watch", "w1", {"data": {"k": "2"}})
    # A change made after a list and before the watch opens must arrive on the watch.
    url = f"{api.url}/api/v1/namespaces/h-watch/configmaps"
    params = {"watch": "true", "resourceVersion": first["metadata"]["resourceVersion"], "timeoutSeconds": "1"}
    with requests.get(url, params=params, stream=True, timeout=10) as response:
        lines = [line for line in response.iter_lines() if line]
    import json
    events = [json.loads(line) for line in lines]
    assert [(e["type"], e["object"]["metadata"]["resourceVersion"]) for e in events] == [
        ("MODIFIED", second["metadata"]["resourceVersion"])]


def test_fake_pods_act_as_kubelet_and_metrics_reach_a_real_prometheus(
        api: EmulatorServer, kube: KubeClient, tmp_path: Path) -> None:
    """The fake pods (a mock of GPU pods, which cannot run here) read the track ConfigMaps and
    Deployments from the emulator; a real Prometheus scrapes what they report."""
    import yaml
    from tests.support.fake_pods import FakePods, VersionBehaviour
    from asr_sandbox.prometheus_runner import PrometheusRunner
    ns, name = "h-pods", "fp"
    for track, version in (("stable", "v1"), ("canary", "v2")):
        kube.create({"apiVersion": "v1", "kind": "ConfigMap",
                     "metadata": {"name": f"{name}-{track}-model", "namespace": ns},
                     "data": {"model.yaml": yaml.safe_dump({"name": "m", "version": version, "path": f"m/{version}"})}})
        kube.create({"apiVersion": "apps/v1", "kind": "Deployment",
                     "metadata": {"name": f"{name}-{track}", "namespace": ns},
                     "spec": {"replicas": 2 if track == "stable" else 1}})
    with FakePods(api.url) as pods:
        pods.watch(ns, name, versions={"v2": VersionBehaviour(error_ratio=0.5, requests_per_second=40)})
        with PrometheusRunner(tmp_path / "prom", targets={"asr-pods": [pods.target]}) as prom:
            wait_for(lambda: kube.get("apps/v1", "deployments", ns, f"{name}-stable")
                     .get("status", {}).get("readyReplicas") == 2, 10, "stable readiness")
            served = wait_for(lambda: {r["metric"]["version"]: r["value"][1] for r in prom.query(
                f'count by (version) (asr_model_info{{namespace="{ns}",rollout="{name}",track="stable"}} == 1)')},
                15, "stable model_info in Prometheus")
            assert served == {"v1": "2"}
            rate = wait_for(lambda: prom.query(
                f'sum(rate(asr_requests_total{{namespace="{ns}",track="canary",code="503"}}[5s]))'
                f' / sum(rate(asr_requests_total{{namespace="{ns}",track="canary"}}[5s]))'), 20, "canary error ratio")
            assert abs(float(rate[0]["value"][1]) - 0.5) < 0.05
            # "Promotion": the stable ConfigMap now names v2; the same pods report it (hot reload).
            kube.patch("v1", "configmaps", ns, f"{name}-stable-model",
                       {"data": {"model.yaml": yaml.safe_dump({"name": "m", "version": "v2", "path": "m/v2"})}})
            wait_for(lambda: {r["metric"]["version"] for r in prom.query(
                f'asr_model_info{{namespace="{ns}",rollout="{name}",track="stable"}} == 1')} == {"v2"},
                15, "stable pods serving v2")
            assert {r["metric"]["pod"] for r in prom.query(f'asr_model_info{{namespace="{ns}",track="stable"}}')} \
                == {f"{name}-stable-0", f"{name}-stable-1"}
            # A version whose pods never become ready: readiness withheld.
            pods.set_behaviour(ns, name, "v2", ready=False)
            wait_for(lambda: kube.get("apps/v1", "deployments", ns, f"{name}-canary")["status"]["readyReplicas"] == 0,
                     10, "canary readiness withheld")
        assert not pods.errors, pods.errors


def test_optional_schema_validation_rejects_what_a_cluster_would() -> None:
    from asr_sandbox.crd_schema import load_crd
    from asr_sandbox.kube_emulator import ApiEmulator
    with EmulatorServer(ApiEmulator(validate_crds=True)) as strict:
        strict.emulator.register_crd(load_crd())
        client = KubeClient(strict.url)
        bad = rollout("strict", "h-strict")
        bad["spec"]["model"]["path"] = "../../etc"
        with pytest.raises(ApiError) as e:
            client.create(bad)
        assert e.value.status == 422 and "spec.model.path" in e.value.body["message"]
        created = client.create(rollout("strict", "h-strict"))
        with pytest.raises(ApiError) as e:
            client.patch(*RO, "h-strict", "strict", {"spec": {"strategy": {"steps": [{"setWeight": 101}]}}})
        assert e.value.status == 422 and "setWeight" in e.value.body["message"]
        assert client.rollout("h-strict", "strict")["metadata"]["resourceVersion"] == \
            created["metadata"]["resourceVersion"]
