"""The reconciler's I/O (observe -> decide -> act) against the API emulator over real HTTP.

The metric source is an in-memory stand-in set per test (the real Prometheus path is covered by
tests/operator/test_operator_*.py); everything Kubernetes is the emulator, through a kubeconfig.
"""
from __future__ import annotations

import asyncio
import datetime
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import kopf
import pytest

from asr_operator.alert_webhook import start_alert_webhook
from asr_operator.analysis.prometheus_source import MetricSource, Sample, SourcePool
from asr_operator.kube import KubeApi
from asr_operator.reconciler import Reconciler, deployment_state
from asr_sandbox.kube_emulator import EmulatorServer
from tests.support.kube import KubeClient

RO = ("asr.rollout.dev/v1alpha1", "asrmodelrollouts")


class Metrics(MetricSource):
    """Stand-in for Prometheus: a request count, an error rate, and the versions stable serves."""

    def __init__(self) -> None:
        self.requests = 100.0
        self.error_rate = 0.0
        self.stable_versions: dict[str, float] = {}

    async def query(self, promql: str) -> list[Sample]:
        if promql.startswith("count by (version)"):
            return [({"version": v}, n) for v, n in self.stable_versions.items()]
        if promql.startswith("sum(increase("):
            return [({}, self.requests)]
        if "code=~" in promql:
            return [({}, self.error_rate)]
        return [({}, 0.1)]


class Pool(SourcePool):
    def __init__(self, source: MetricSource) -> None:
        super().__init__()
        self.source = source

    def get(self, address: str) -> MetricSource:
        return self.source


def manifest(ns: str, name: str, version: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": {"name": "paraformer-tiny", "version": version, "path": f"paraformer-tiny/{version}"},
        "modelVolume": {"persistentVolumeClaim": {"claimName": "asr-models"}},
        "server": {"image": "asr:0.1", "replicas": 2},
        "traffic": {"gatewayAPI": {"httpRoute": f"{name}-route"}},
        "strategy": {"steps": [{"setWeight": 20}, {"pause": {"duration": "1h"}}]},
        "analysis": {"prometheus": {"address": "http://prometheus.invalid:9090"}, "interval": "1s", "window": "1s",
                     "failureLimit": 1, "metrics": [{"name": "error-rate", "max": 0.05}]},
    }
    body.update(spec)
    return {"apiVersion": "asr.rollout.dev/v1alpha1", "kind": "ASRModelRollout",
            "metadata": {"name": name, "namespace": ns}, "spec": body}


def route(ns: str, name: str) -> dict[str, Any]:
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": f"{name}-route", "namespace": ns},
            "spec": {"rules": [{"backendRefs": [{"name": f"{name}-stable", "port": 8000}]}]}}


@pytest.fixture
async def reconciler(api: EmulatorServer) -> AsyncIterator[tuple[Reconciler, Metrics]]:
    metrics = Metrics()
    client = KubeApi(kopf.ConnectionInfo(server=api.url))
    yield Reconciler(client, Pool(metrics), drift_check_seconds=0.0), metrics
    await client.close()


def ready(kube: KubeClient, ns: str, name: str, track: str, count: int) -> None:
    """What a Deployment controller reports once `count` pods of the current template are ready."""
    kube.patch("apps/v1", "deployments", ns, f"{name}-{track}",
               {"status": {"readyReplicas": count, "updatedReplicas": count, "replicas": count}},
               subresource="status")


def weights(kube: KubeClient, ns: str, name: str) -> dict[str, int]:
    refs = kube.get("gateway.networking.k8s.io/v1", "httproutes", ns, f"{name}-route")["spec"]["rules"][0]["backendRefs"]
    return {ref["name"].rsplit("-", 1)[1]: ref.get("weight") for ref in refs}


def model_path(kube: KubeClient, ns: str, name: str, track: str) -> str:
    data = kube.get("v1", "configmaps", ns, f"{name}-{track}-model")["data"]["model.yaml"]
    return next(line.split(": ", 1)[1] for line in data.splitlines() if line.startswith("path:"))


async def test_a_canary_from_creation_to_rollback(api: EmulatorServer, kube: KubeClient,
                                                  reconciler: tuple[Reconciler, Metrics]) -> None:
    rec, metrics = reconciler
    ns, name = "rec-flow", "flow"
    kube.create(route(ns, name))
    kube.create(manifest(ns, name, "v1"))
    await rec.settle(ns, name)
    assert kube.rollout(ns, name)["status"]["phase"] == "Pending"
    assert {d["metadata"]["name"] for d in kube.list("apps/v1", "deployments", ns)} == {"flow-stable", "flow-canary"}
    assert {s["metadata"]["name"] for s in kube.list("v1", "services", ns)} == {"flow-stable", "flow-canary"}
    assert weights(kube, ns, name) == {"stable": 100, "canary": 0}
    ready(kube, ns, name, "stable", 2)
    await rec.settle(ns, name)
    assert kube.rollout(ns, name)["status"]["phase"] == "Succeeded"

    kube.patch(*RO, ns, name, {"spec": {"model": {"version": "v2", "path": "paraformer-tiny/v2"}}})
    await rec.settle(ns, name)
    assert kube.rollout(ns, name)["status"]["phase"] == "Progressing"
    assert model_path(kube, ns, name, "canary") == "paraformer-tiny/v2"
    assert weights(kube, ns, name)["canary"] == 0  # canary not ready: no traffic yet
    ready(kube, ns, name, "canary", 2)
    await rec.settle(ns, name)
    assert weights(kube, ns, name) == {"stable": 80, "canary": 20}

    metrics.error_rate = 0.5
    await asyncio.sleep(1.05)  # the analysis interval is 1s
    await rec.settle(ns, name)
    status = kube.rollout(ns, name)["status"]
    assert status["phase"] == "RolledBack", status
    assert weights(kube, ns, name) == {"stable": 100, "canary": 0}
    assert model_path(kube, ns, name, "canary") == "paraformer-tiny/v1"
    assert kube.get("apps/v1", "deployments", ns, "flow-canary")["spec"]["replicas"] == 0
    reasons = {e["reason"] for e in kube.list("v1", "events", ns)}
    assert {"CanaryStarted", "SetWeight", "RollingBack", "RolledBack"} <= reasons

    # status went only through /status: the one write to the resource itself is this test's spec change
    writes = [r for r in api.emulator.request_log
              if r.resource == "asrmodelrollouts" and r.namespace == ns and r.method in ("PATCH", "PUT")]
    assert len([r for r in writes if r.subresource == "status"]) >= 5
    assert len([r for r in writes if r.subresource != "status"]) == 1


async def test_promotion_waits_for_the_stable_pods_to_serve_the_new_version(
        kube: KubeClient, reconciler: tuple[Reconciler, Metrics]) -> None:
    rec, metrics = reconciler
    ns, name = "rec-promote", "promo"
    kube.create(route(ns, name))
    kube.create(manifest(ns, name, "v1", strategy={"steps": [{"setWeight": 100}]}))
    await rec.settle(ns, name)
    ready(kube, ns, name, "stable", 2)
    await rec.settle(ns, name)
    kube.patch(*RO, ns, name, {"spec": {"model": {"version": "v2", "path": "paraformer-tiny/v2"}}})
    await rec.settle(ns, name)
    ready(kube, ns, name, "canary", 1)  # weight 0: one canary pod
    await rec.settle(ns, name)
    # 100% needs both canary pods: asked for first, the weight is written once they are ready
    assert (kube.rollout(ns, name)["status"]["pendingWeight"], weights(kube, ns, name)["canary"]) == (100, 0)
    assert kube.get("apps/v1", "deployments", ns, f"{name}-canary")["spec"]["replicas"] == 2
    ready(kube, ns, name, "canary", 2)
    await rec.settle(ns, name)
    assert weights(kube, ns, name)["canary"] == 100
    await asyncio.sleep(1.05)
    metrics.stable_versions = {"v1": 2}
    await rec.settle(ns, name)
    assert kube.rollout(ns, name)["status"]["phase"] == "Promoting"
    assert model_path(kube, ns, name, "stable") == "paraformer-tiny/v2"
    assert weights(kube, ns, name)["canary"] == 100
    metrics.stable_versions = {"v2": 2}
    await rec.settle(ns, name)
    status = kube.rollout(ns, name)["status"]
    assert status["phase"] == "Succeeded" and status["stableVersion"] == "v2"
    assert weights(kube, ns, name) == {"stable": 100, "canary": 0}


async def test_children_edited_by_others_are_put_back(kube: KubeClient,
                                                       reconciler: tuple[Reconciler, Metrics]) -> None:
    rec, _ = reconciler  # drift_check_seconds=0: every tick compares (the default is 30 s)
    ns, name = "rec-drift", "drift"
    kube.create(route(ns, name))
    kube.create(manifest(ns, name, "v1"))
    await rec.settle(ns, name)
    kube.patch("apps/v1", "deployments", ns, "drift-stable", {"spec": {"replicas": 7}})
    kube.patch("v1", "configmaps", ns, "drift-stable-model", {"data": {"model.yaml": "path: elsewhere\n"}})
    await rec.settle(ns, name)
    assert kube.get("apps/v1", "deployments", ns, "drift-stable")["spec"]["replicas"] == 2
    assert model_path(kube, ns, name, "stable") == "paraformer-tiny/v1"


async def test_an_invalid_spec_creates_nothing(kube: KubeClient, reconciler: tuple[Reconciler, Metrics]) -> None:
    rec, _ = reconciler
    ns, name = "rec-invalid", "bad"
    kube.create(manifest(ns, name, "v1", strategy={"steps": [{"setWeight": 120}]}))
    await rec.settle(ns, name)
    status = kube.rollout(ns, name)["status"]
    invalid = next(c for c in status["conditions"] if c["type"] == "InvalidSpec")
    assert invalid["status"] == "True" and "spec.strategy.steps[0].setWeight: 120 is over 100" in invalid["message"]
    assert kube.list("apps/v1", "deployments", ns) == [] and kube.list("v1", "configmaps", ns) == []
    assert any(e["reason"] == "InvalidSpec" for e in kube.list("v1", "events", ns))


async def test_a_missing_httproute_is_reported(kube: KubeClient, reconciler: tuple[Reconciler, Metrics]) -> None:
    rec, _ = reconciler
    ns, name = "rec-noroute", "noroute"
    kube.create(manifest(ns, name, "v1"))
    for _ in range(3):
        with pytest.raises(Exception, match="HTTPRoute rec-noroute/noroute-route"):
            await rec.settle(ns, name)
    events = [e for e in kube.list("v1", "events", ns) if e["reason"] == "ReconcileError"]
    assert len(events) == 1 and "does not exist" in events[0]["message"]  # once, not on every retry
    ready_condition = next(c for c in kube.rollout(ns, name)["status"]["conditions"] if c["type"] == "ChildrenReady")
    assert ready_condition["status"] == "False" and "create it with a backendRef" in ready_condition["message"]
    kube.create(route(ns, name))
    await rec.settle(ns, name)
    ready_condition = next(c for c in kube.rollout(ns, name)["status"]["conditions"] if c["type"] == "ChildrenReady")
    assert ready_condition["status"] == "True"


def test_status_patches_delete_what_the_new_status_dropped() -> None:
    """A JSON merge patch merges nested objects, so a key gone at any depth must be sent as null."""
    from asr_operator.reconciler import _as_patch
    old = {"phase": "Progressing", "stableModel": {"version": "v1", "sha256": "a" * 64},
           "conditions": [{"type": "A"}], "canaryVersion": "v2"}
    new = {"phase": "Succeeded", "stableModel": {"version": "v2"}, "conditions": [{"type": "A"}]}
    assert _as_patch(old, new) == {"phase": "Succeeded", "stableModel": {"version": "v2", "sha256": None},
                                   "canaryVersion": None}
    assert _as_patch(new, new) == {}


@pytest.mark.parametrize("status,ready", [
    ({"observedGeneration": 3, "readyReplicas": 2, "updatedReplicas": 1, "replicas": 3}, False),  # rolling update
    ({"observedGeneration": 2, "readyReplicas": 2, "updatedReplicas": 2, "replicas": 2}, False),  # template unseen
    ({"observedGeneration": 3, "readyReplicas": 2, "updatedReplicas": 2, "replicas": 2}, True),
    ({"observedGeneration": 3, "readyReplicas": 3, "updatedReplicas": 2, "replicas": 3}, True),  # 1 old pod leaving
    ({"observedGeneration": 3}, False),  # zero counts are left out of status by the API server
])
def test_stable_readiness_counts_only_pods_of_the_current_template(status: dict[str, Any], ready: bool) -> None:
    live = {"metadata": {"generation": 3}, "spec": {"replicas": 2}, "status": status}
    state = deployment_state(live)
    assert state is not None and state.ready_for(2) is ready


# --- alerts: the annotation is removed only while it holds what was acted on ----------------

ALERT = "asr.rollout.dev/alert"


def alertmanager_time(moment: datetime.datetime) -> str:
    """startsAt as Alertmanager 0.25 writes it (Go's RFC3339Nano)."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond:06d}123Z"


def firing(fingerprint: str, starts_at: str, rollout: str, namespace: str, track: str = "canary") -> dict[str, Any]:
    return {"status": "firing",
            "labels": {"alertname": f"ASRCanary{fingerprint}", "namespace": namespace, "rollout": rollout,
                       "severity": "critical", "track": track},
            "annotations": {"summary": f"{fingerprint} over its bound"},
            "startsAt": starts_at, "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://prometheus:9090/graph?g0.expr=x", "fingerprint": fingerprint}


def notification(*alerts: dict[str, Any]) -> dict[str, Any]:
    """A webhook notification in the shape Alertmanager 0.25 sends (version 4, one group)."""
    return {"receiver": "asr-rollout", "status": "firing", "alerts": list(alerts),
            "groupLabels": {"alertname": "ASRCanary"}, "commonLabels": {}, "commonAnnotations": {},
            "externalURL": "http://alertmanager:9093", "version": "4",
            "groupKey": '{}:{alertname="ASRCanary"}', "truncatedAlerts": 0}


class WebhookInBetween(KubeApi):
    """The alert webhook writes a second alert right after the tick wrote status, i.e. between
    the tick's read of the first alert and its removal."""

    pending: str | None = None

    async def patch_rollout_status(self, namespace: str, name: str, status: Any) -> None:
        await super().patch_rollout_status(namespace, name, status)
        if self.pending is not None:
            value, self.pending = self.pending, None
            await self.set_annotations(namespace, name, {ALERT: value})


async def test_an_alert_written_while_the_tick_acts_on_another_is_kept(api: EmulatorServer, kube: KubeClient) -> None:
    """Old code removed the annotation unconditionally: the second alert was lost."""
    client = WebhookInBetween(kopf.ConnectionInfo(server=api.url))
    rec = Reconciler(client, Pool(Metrics()), drift_check_seconds=0.0)
    try:
        ns, name = "rec-alert-race", "race"
        kube.create(route(ns, name))
        kube.create(manifest(ns, name, "v1"))
        await rec.settle(ns, name)
        ready(kube, ns, name, "stable", 2)
        await rec.settle(ns, name)
        first = json.dumps({"alertname": "A", "fingerprint": "a", "startsAt": "2026-01-01T10:00:00Z", "summary": ""})
        second = json.dumps({"alertname": "B", "fingerprint": "b", "startsAt": "2026-01-01T10:00:05Z", "summary": ""})
        kube.annotate_rollout(ns, name, {ALERT: first})
        client.pending = second
        await rec.tick(ns, name)
        rollout = kube.rollout(ns, name)
        assert rollout["status"]["lastAlert"]["fingerprint"] == "a"
        assert rollout["metadata"]["annotations"][ALERT] == second  # kept for the next tick
        await rec.tick(ns, name)
        rollout = kube.rollout(ns, name)
        assert rollout["status"]["lastAlert"]["fingerprint"] == "b"
        assert ALERT not in (rollout["metadata"].get("annotations") or {})
    finally:
        await client.close()


async def test_two_alerts_interleaved_across_two_canaries_through_the_webhook(
        kube: KubeClient, reconciler: tuple[Reconciler, Metrics]) -> None:
    """The real webhook and the real reconciler, Alertmanager 0.25 notifications: A rolls back
    canary v2, B arrives after, then Alertmanager repeats A and B in every notification. Old
    code: A's repeat (not the last alert) was written again and rolled back the next canary."""
    rec, _ = reconciler
    ns, name = "rec-alerts", "alerts"
    runner = await start_alert_webhook(0, "t0ken", rec.api.get_rollout, rec.api.set_annotation, host="127.0.0.1")
    host, port = runner.addresses[0][:2]

    async def notify(*alerts: dict[str, Any]) -> list[str]:
        async with aiohttp.ClientSession() as session:
            async with session.post(f"http://{host}:{port}/alerts", json=notification(*alerts),
                                    headers={"Authorization": "Bearer t0ken"}) as response:
                assert response.status == 200
                return [result["action"] for result in (await response.json())["results"]]

    async def canary(version: str) -> None:
        kube.patch(*RO, ns, name, {"spec": {"model": {"version": version, "path": f"paraformer-tiny/{version}"}}})
        await rec.settle(ns, name)
        ready(kube, ns, name, "canary", 2)
        await rec.settle(ns, name)
        assert weights(kube, ns, name)["canary"] == 20

    try:
        kube.create(route(ns, name))
        kube.create(manifest(ns, name, "v1"))
        await rec.settle(ns, name)
        ready(kube, ns, name, "stable", 2)
        await rec.settle(ns, name)
        await canary("v2")
        now = datetime.datetime.now(datetime.timezone.utc)
        a = firing("aaaa1111", alertmanager_time(now + datetime.timedelta(seconds=1)), name, ns)
        b = firing("bbbb2222", alertmanager_time(now + datetime.timedelta(seconds=2)), name, ns)
        assert await notify(a) == ["annotated"]
        await rec.settle(ns, name)
        await rec.settle(ns, name)
        assert kube.rollout(ns, name)["status"]["phase"] == "RolledBack"
        assert await notify(a, b) == ["ignored", "annotated"]  # A is a repeat; B goes out
        await rec.settle(ns, name)
        assert kube.rollout(ns, name)["status"]["lastAlert"]["fingerprint"] == "bbbb2222"

        await canary("v3")
        for _ in range(3):  # repeat_interval: both again, in either order
            assert await notify(b, a) == ["ignored", "ignored"]
            await rec.settle(ns, name)
        status = kube.rollout(ns, name)["status"]
        assert status["phase"] == "Progressing" and status["canaryVersion"] == "v3", status
        assert ALERT not in (kube.rollout(ns, name)["metadata"].get("annotations") or {})
        rolled_back = [e for e in kube.list("v1", "events", ns) if e["reason"] == "RollingBack"]
        assert len(rolled_back) == 1
    finally:
        await runner.cleanup()
