"""Least-privilege RBAC: the chart grants exactly the API calls the operator makes.

The operator (`python -m asr_operator`, the real one, with the flags the chart's Deployment
passes) runs against the Kubernetes API emulator through a kubeconfig and is driven through a
whole story, with kopf peering on: a first version, a canary behind a Gateway API HTTPRoute, a
manual promotion, an Alertmanager alert through the operator's webhook within the
post-promotion window (the stable version is reverted), a second rollout with the replica-ratio
router, someone else's edit of children (a Service, a PodDisruptionBudget) that the operator puts back, a canary alert (the canary
is rolled back), and a deletion. Every request it makes is recorded by the emulator
(sandbox/asr_sandbox/kube_emulator.py) and reduced to (apiGroup, resource, verb); the test's own requests
are told apart by their User-Agent. The set is compared both ways with the rules the chart renders: a call the rules do
not grant fails (the operator would get 403 in a cluster), and a rule no call used fails (a
grant nobody needs).

The emulator has no Deployment controller: the test plays it, setting `status.readyReplicas`.
"""
from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from asr_sandbox.kube_emulator import LoggedRequest, write_kubeconfig
from asr_sandbox.processes import ManagedProcess, free_port
from tests.deploy.chart_render import of_kind, render
from tests.deploy.operator_run import (
    NAMESPACE, RO, TOKEN, deployment_controller, emulated_cluster, example_rollout, http_route,
    phase, start_operator,
)
from tests.support.kube import KubeClient, wait_for

Grant = tuple[str, str, str]  # (apiGroup, resource[/subresource], verb)


def _now() -> str:
    """An Alertmanager startsAt for an alert starting now."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def operator_grants(log: list[LoggedRequest], test_requests: set[int]) -> set[Grant]:
    """(group, resource, verb) of every resource request the operator made."""
    return {(r.group or "", r.rbac_resource, r.verb) for i, r in enumerate(log)
            if i not in test_requests and r.rbac_resource is not None}


def granted(rules: list[dict[str, Any]]) -> set[Grant]:
    return {(group, resource, verb) for rule in rules for group in rule["apiGroups"]
            for resource in rule["resources"] for verb in rule["verbs"]}


def chart_rules(values: dict[str, Any]) -> list[dict[str, Any]]:
    objects = render(values)
    roles = of_kind(objects, "ClusterRole") + of_kind(objects, "Role")
    assert roles, "the chart renders no RBAC"
    return [rule for role in roles for rule in role["rules"]]


@dataclass
class Story:
    kube: KubeClient
    operator: ManagedProcess
    webhook_url: str

    def wait_phase(self, name: str, *phases: str, timeout: float = 30) -> str:
        return wait_for(lambda: phase(self.kube, name) in phases and phase(self.kube, name), timeout,
                        f"{name} in phase {phases}", context=self.operator.log_tail)


def run_story(values: dict[str, Any], tmp_path: Path) -> set[Grant]:
    """Run the operator through the story; return the (group, resource, verb) set it used."""
    with emulated_cluster(values) as (api, recorder, kube):
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", api.url)
        webhook_port = free_port()
        operator = start_operator(values, kubeconfig, tmp_path / "operator.log", "asr-rollout-0", webhook_port)
        try:
            with deployment_controller(kube):
                tell_the_story(Story(kube, operator, f"http://127.0.0.1:{webhook_port}"))
        finally:
            operator.stop()
        log = api.call(lambda: list(api.emulator.request_log))
        return operator_grants(log, recorder.test_requests)


def tell_the_story(story: Story) -> None:
    kube = story.kube
    # 1. A first version behind a Gateway API route: stable children, Succeeded.
    kube.create(http_route("meeting-zh"))
    kube.ensure_priority_class("inference-high")  # the example's pods name it; the admin creates it
    kube.create(example_rollout("examples/rollout-gateway-api.yaml", "meeting-zh"))
    story.wait_phase("meeting-zh", "Succeeded")
    # 2. GitOps bumps the version: a canary, traffic shifted, paused at `pause: {}`.
    kube.patch(*RO, NAMESPACE, "meeting-zh", {"spec": {"model": {"version": "v1.3.0",
                                                                  "path": "paraformer-zh/v1.3.0"}}})
    story.wait_phase("meeting-zh", "Paused")
    # 3. Promoted by hand: the stable ConfigMap now points at v1.3.0.
    kube.annotate_rollout(NAMESPACE, "meeting-zh", {"asr.rollout.dev/promote": "true"})
    wait_for(lambda: (kube.rollout(NAMESPACE, "meeting-zh").get("status") or {}).get("stableVersion") == "v1.3.0"
             and phase(kube, "meeting-zh") == "Succeeded", 30, "promotion to v1.3.0",
             context=story.operator.log_tail)
    # 4. An alert within the post-promotion window, through the operator's own webhook.
    wait_for(lambda: requests.get(f"{story.webhook_url}/healthz", timeout=2).ok, 20, "the alert webhook")
    # startsAt: now (an alert that started before the promotion never reverts it)
    alert = {"status": "firing", "fingerprint": "f00d", "startsAt": _now(),
             "labels": {"alertname": "ASRStableHighErrorRate", "namespace": NAMESPACE, "rollout": "meeting-zh",
                        "track": "stable"},
             "annotations": {"summary": "stable error rate"}}
    response = requests.post(f"{story.webhook_url}/alerts", json={"version": "4", "alerts": [alert]},
                             headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert response.status_code == 200 and response.json()["results"][0]["action"] == "annotated", response.text
    # ... reverts the stable ConfigMap to the version promoted before (the pods hot-reload it).
    wait_for(lambda: (kube.rollout(NAMESPACE, "meeting-zh").get("status") or {}).get("stableVersion") == "v1.2.0",
             30, "the alert to revert the stable version to v1.2.0", context=story.operator.log_tail)
    stable_config = kube.get("v1", "configmaps", NAMESPACE, "meeting-zh-stable-model")["data"]["model.yaml"]
    assert yaml.safe_load(stable_config)["path"] == "paraformer-zh/v1.2.0"
    assert kube.rollout(NAMESPACE, "meeting-zh")["status"]["lastAlert"]["fingerprint"] == "f00d"
    # 5. The replica-ratio router, and someone else's edit of a child that the operator reverts.
    kube.create(example_rollout("examples/rollout-replica-ratio.yaml", "call-center"))
    story.wait_phase("call-center", "Succeeded")
    kube.patch("v1", "services", NAMESPACE, "call-center-stable",
               {"spec": {"selector": {"asr.rollout.dev/track": "edited-by-hand"}}})
    kube.patch("policy/v1", "poddisruptionbudgets", NAMESPACE, "call-center-stable",
               {"spec": {"maxUnavailable": 0}})
    kube.patch(*RO, NAMESPACE, "call-center", {"spec": {"model": {"version": "v2.1.0",
                                                                   "path": "sensevoice-small/v2.1.0"}}})
    story.wait_phase("call-center", "Paused")
    wait_for(lambda: kube.get("v1", "services", NAMESPACE, "call-center-stable")["spec"]["selector"]
             .get("asr.rollout.dev/track") == "stable"
             and kube.get("policy/v1", "poddisruptionbudgets", NAMESPACE, "call-center-stable")["spec"]
             .get("maxUnavailable") == 1, 40, "the operator to put the Service and the disruption budget back",
             context=story.operator.log_tail)
    # A canary alert rolls the running canary back.
    alert = dict(alert, fingerprint="beef", startsAt=_now(),
                 labels={"alertname": "ASRCanaryHighErrorRate", "namespace": NAMESPACE, "rollout": "call-center",
                         "track": "canary"})
    response = requests.post(f"{story.webhook_url}/alerts", json={"version": "4", "alerts": [alert]},
                             headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert response.json()["results"][0]["action"] == "annotated", response.text
    story.wait_phase("call-center", "RolledBack")
    # 6. Deleting a rollout: kopf releases its finalizer.
    kube.delete(*RO, NAMESPACE, "call-center")
    wait_for(lambda: kube.get_or_none(*RO, NAMESPACE, "call-center") is None, 30, "the rollout to be deleted",
             context=story.operator.log_tail)


MODES = {
    "namespaced": {"watchNamespaces": [NAMESPACE]},
    "cluster-wide": {},
}


@pytest.fixture(scope="module", params=list(MODES))
def recorded(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], set[Grant]]:
    values = MODES[request.param]
    return values, run_story(values, tmp_path_factory.mktemp(f"rbac-{request.param}"))


def test_every_call_the_operator_makes_is_granted(recorded: tuple[dict[str, Any], set[Grant]]) -> None:
    values, used = recorded
    missing = used - granted(chart_rules(values))
    assert not missing, f"the operator calls these but the chart does not grant them: {sorted(missing)}"


# Grants no request of the operator uses, each with the reason it is needed all the same.
NEEDED_WITHOUT_A_CALL: dict[Grant, str] = {
    ("asr.rollout.dev", "asrmodelrollouts/finalizers", "update"):
        "OwnerReferencesPermissionEnforcement (OpenShift) refuses to create a child whose ownerReference "
        "sets blockOwnerDeletion unless the creator may update the owner's finalizers; "
        "tests/real_api/test_chart_rbac_on_api_server.py shows the 403 without it",
}


def test_nothing_is_granted_that_the_operator_does_not_use(recorded: tuple[dict[str, Any], set[Grant]]) -> None:
    values, used = recorded
    unused = granted(chart_rules(values)) - used - set(NEEDED_WITHOUT_A_CALL)
    assert not unused, f"the chart grants these but the operator never used them: {sorted(unused)}"


def test_namespaced_mode_grants_nothing_cluster_wide() -> None:
    objects = render(MODES["namespaced"])
    assert not of_kind(objects, "ClusterRole") and not of_kind(objects, "ClusterRoleBinding")
    assert {r["metadata"]["namespace"] for r in of_kind(objects, "Role")} == {NAMESPACE}
