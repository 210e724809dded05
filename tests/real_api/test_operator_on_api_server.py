"""The operator against a real v1.28 control plane: what the emulator could never show.

- `python -m asr_operator --namespace NS`, as docs/install-and-operate.md gives it, without the KopfPeering object
  only the chart creates: it must work (and say loudly what is missing), not idle silently.
- A rollout whose HTTPRoute, or the whole Gateway API, does not exist: every other child is
  written, the condition and message name what is missing and what to apply, retries back off.
- The chart's RBAC, for real: its ServiceAccount, Role and RoleBinding applied to the API server,
  the operator run with a token of that ServiceAccount (TokenRequest API) through a whole story
  (first version, canary behind an HTTPRoute, manual promotion, an alert through the webhook
  inside the post-promotion window, the replica-ratio router, someone's edit put back, a canary
  alert, a deletion). The API server's audit log says which calls it made: a 403 fails, a
  granted verb no call used fails. The API server runs OwnerReferencesPermissionEnforcement.
- Deleting a rollout: the garbage collector removes every child; the operator's daemon stops
  without kopf's "cancelled" warning and /metrics forgets the rollout.

The pods are fake (tests/support/fake_pods.py): there is no kubelet here, so a stand-in writes
pod status; the real ReplicaSet and Deployment controllers count them.
"""
from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from asr_sandbox.control_plane import ControlPlane, write_kubeconfig
from asr_sandbox.paths import REPO_ROOT
from asr_sandbox.processes import ManagedProcess, free_port
from tests.deploy.chart_render import CHART_DIR, of_kind, render
from tests.deploy.operator_run import NAMESPACE as STORY_NAMESPACE
from tests.deploy.operator_run import start_operator
from tests.deploy.test_helm_rbac import NEEDED_WITHOUT_A_CALL, Grant, Story, granted, tell_the_story
from tests.support.backends import HTTPROUTE_CRD_NAME, gateway_api_crd
from tests.support.fake_pods import FakePods, VersionBehaviour
from tests.support.kube import KubeClient, wait_for
from tests.support.rollouts import RO, condition, http_route, model, rollout_manifest, status

pytestmark = [pytest.mark.real_api, pytest.mark.slow]
GOOD = VersionBehaviour(requests_per_second=0)


@pytest.fixture(scope="module")
def kube(control_plane: ControlPlane) -> KubeClient:
    control_plane.apply_crd(gateway_api_crd())
    return KubeClient(control_plane.url, token=control_plane.token)


@pytest.fixture(scope="module")
def pods(control_plane: ControlPlane) -> Iterator[FakePods]:
    with FakePods(control_plane.url, token=control_plane.token, kubelet=True) as fake:
        yield fake


def manual_rollout(namespace: str, name: str, version: str = "v1", route: str | None = None) -> dict[str, Any]:
    """No analysis (no Prometheus needed): a person gates at `pause: {}`."""
    manifest = rollout_manifest(namespace, name, version, "http://127.0.0.1:9", gateway_route=route,
                                steps=[{"setWeight": 50}, {"pause": {}}])
    manifest["spec"].pop("analysis")
    return manifest


def operator(argv_tail: list[str], kubeconfig: Path, log: Path) -> tuple[ManagedProcess, int]:
    metrics_port = free_port()
    argv = [sys.executable, "-m", "asr_operator", "--metrics-port", str(metrics_port), "--webhook-port", "0",
            *argv_tail]
    env = dict(os.environ, KUBECONFIG=str(kubeconfig), PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join(str(REPO_ROOT / p) for p in ("operator", "sandbox", ".")))
    return ManagedProcess(argv, log, env=env, cwd=REPO_ROOT).start(), metrics_port


@contextmanager
def operator_in(namespace: str, plane: ControlPlane, kube: KubeClient, pods: FakePods, log: Path,
                flags: tuple[str, ...] = ("--standalone",)) -> Iterator[tuple[ManagedProcess, int]]:
    """An operator watching `namespace` (created), its pods played by the fake kubelet."""
    kube.ensure_namespace(namespace)
    pods.watch(namespace, "meeting", default=GOOD)
    process, metrics_port = operator([*flags, "--namespace", namespace], plane.kubeconfig, log)
    try:
        yield process, metrics_port
    finally:
        process.stop()
        pods.forget(namespace)


def phase_is(kube: KubeClient, namespace: str, name: str, *phases: str) -> Any:
    current = status(kube, namespace, name)
    return current if current.get("phase") in phases else None


def test_the_readme_command_works_without_a_peering_object(
        control_plane: ControlPlane, kube: KubeClient, pods: FakePods, tmp_path: Path) -> None:
    ns = "readme-command"
    # Exactly the command in docs/install-and-operate.md (plus free ports): peering on, scanning on, no KopfPeering.
    with operator_in(ns, control_plane, kube, pods, tmp_path / "operator.log", flags=()) as (process, _):
        kube.create(manual_rollout(ns, "meeting"))
        wait_for(lambda: phase_is(kube, ns, "meeting", "Succeeded"), 60, "the first version to succeed",
                 context=process.log_tail)
        log = process.log_tail(100_000)
        warning = [line for line in log.splitlines() if "WARNING" in line and "KopfPeering asr-rollout" in line]
        assert warning, log[-3000:]
        assert "--standalone" in warning[0] and "peering.yaml" in warning[0], warning[0]


def children_of(kube: KubeClient, namespace: str, name: str) -> dict[str, bool]:
    return {f"{plural}/{name}{suffix}": kube.get_or_none(api, plural, namespace, f"{name}{suffix}") is not None
            for api, plural, suffix in (("v1", "configmaps", "-stable-model"), ("v1", "configmaps", "-canary-model"),
                                        ("apps/v1", "deployments", "-stable"), ("apps/v1", "deployments", "-canary"),
                                        ("v1", "services", "-stable"), ("v1", "services", "-canary"))}


def route_condition(kube: KubeClient, namespace: str, name: str) -> dict[str, Any] | None:
    found = condition(status(kube, namespace, name), "ChildrenReady")
    return found if found and found.get("status") == "False" else None


def test_a_missing_httproute_leaves_the_other_children_written_and_is_named(
        control_plane: ControlPlane, kube: KubeClient, pods: FakePods, tmp_path: Path) -> None:
    ns = "missing-route"
    with operator_in(ns, control_plane, kube, pods, tmp_path / "operator.log") as (process, _):
        kube.create(manual_rollout(ns, "meeting", route="meeting-route"))
        cond = wait_for(lambda: route_condition(kube, ns, "meeting"), 30, "ChildrenReady=False",
                        context=process.log_tail)
        assert cond["reason"] == "RouteMissing", cond
        assert "HTTPRoute missing-route/meeting-route" in cond["message"] and "does not exist" in cond["message"]
        assert "meeting-route" in status(kube, ns, "meeting")["message"]
        wait_for(lambda: all(children_of(kube, ns, "meeting").values()), 30, "every child but the route",
                 context=lambda: f"{children_of(kube, ns, 'meeting')}\n{process.log_tail()}")
        time.sleep(16)  # backoff 5 s, 10 s, 20 s: at most three attempts in this window (five at a fixed 5 s)
        log = process.log_tail(200_000).splitlines()
        failures = [line for line in log if "reconcile failed" in line]
        assert 1 <= len(failures) <= 4, failures
        assert len([line for line in failures if "WARNING" in line]) == 1, failures  # said once, loudly
        # The route appears: the weight is written at the next (backed-off) attempt, the
        # condition turns True, and the message no longer blames the route.
        kube.create(http_route(ns, "meeting-route", "meeting"))
        wait_for(lambda: (condition(status(kube, ns, "meeting"), "ChildrenReady") or {}).get("status") == "True",
                 90, "ChildrenReady=True once the route exists", context=process.log_tail)
        refs = kube.get("gateway.networking.k8s.io/v1", "httproutes", ns, "meeting-route")["spec"]["rules"][0]
        assert {r["name"]: r.get("weight") for r in refs["backendRefs"]}["meeting-stable"] == 100
        assert "meeting-route" not in status(kube, ns, "meeting").get("message", "")


def test_a_missing_gateway_api_is_named_with_what_to_install(
        control_plane: ControlPlane, kube: KubeClient, pods: FakePods, tmp_path: Path) -> None:
    ns = "no-gateway-api"
    control_plane.delete_crd(HTTPROUTE_CRD_NAME)
    try:
        with operator_in(ns, control_plane, kube, pods, tmp_path / "operator.log") as (process, _):
            kube.create(manual_rollout(ns, "meeting", route="meeting-route"))
            cond = wait_for(lambda: route_condition(kube, ns, "meeting"), 30, "ChildrenReady=False",
                            context=process.log_tail)
            assert "Gateway API" in cond["message"] and "is not installed" in cond["message"], cond
            assert "install the Gateway API CRDs" in cond["message"], cond
            wait_for(lambda: all(children_of(kube, ns, "meeting").values()), 30, "every child but the route",
                     context=lambda: f"{children_of(kube, ns, 'meeting')}\n{process.log_tail()}")
    finally:
        control_plane.apply_crd(gateway_api_crd())


def operator_samples(port: int) -> str:
    return requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text


def test_deletion_collects_every_child_and_stops_cleanly(
        control_plane: ControlPlane, kube: KubeClient, pods: FakePods, tmp_path: Path) -> None:
    ns = "deletion"
    with operator_in(ns, control_plane, kube, pods, tmp_path / "operator.log") as (process, metrics_port):
        kube.create(manual_rollout(ns, "meeting"))
        wait_for(lambda: phase_is(kube, ns, "meeting", "Succeeded"), 60, "Succeeded", context=process.log_tail)
        kube.patch(*RO, ns, "meeting", {"spec": {"model": model("v2")}})
        wait_for(lambda: phase_is(kube, ns, "meeting", "Paused"), 60, "the canary at its pause",
                 context=process.log_tail)
        selector = "asr.rollout.dev/rollout=meeting"
        assert kube.list("v1", "pods", ns, label_selector=selector)  # the controllers made real pods
        assert 'rollout="meeting"' in operator_samples(metrics_port)
        kube.delete(*RO, ns, "meeting")
        wait_for(lambda: kube.get_or_none(*RO, ns, "meeting") is None, 30, "the finalizer released",
                 context=process.log_tail)

        def leftovers() -> list[str]:
            return [f"{plural}/{item['metadata']['name']}"
                    for api, plural in (("v1", "configmaps"), ("v1", "services"), ("apps/v1", "deployments"),
                                        ("apps/v1", "replicasets"), ("v1", "pods"))
                    for item in kube.list(api, plural, ns, label_selector=selector)]
        wait_for(lambda: not leftovers(), 60, "garbage collection of every child", context=lambda: str(leftovers()))
        time.sleep(1)
        assert 'rollout="meeting"' not in operator_samples(metrics_port)
        assert "Will escalate" not in process.log_tail(200_000)


def service_account_token(kube: KubeClient, namespace: str, name: str) -> str:
    url = f"{kube.base_url}/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token"
    body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 3600}}
    return str(kube._call("POST", url, json=body)["status"]["token"])


def audited_grants(events: list[dict[str, Any]]) -> tuple[set[Grant], list[str]]:
    """(group, resource[/subresource], verb) of every resource request, and the refused ones."""
    used: set[Grant] = set()
    refused = []
    for event in events:
        ref = event.get("objectRef")
        if not ref:
            continue  # discovery and other non-resource URLs
        resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        grant = (ref.get("apiGroup", ""), resource, event["verb"])
        if (event.get("responseStatus") or {}).get("code") == 403:
            refused.append(f"{grant}: {event['requestURI']}")
        else:
            used.add(grant)
    return used, refused


def apply_chart_access(kube: KubeClient, values: dict[str, Any], release_namespace: str) -> str:
    """The chart's ServiceAccount, RBAC, peering CRDs and objects, applied as an admin would
    with `helm install`; returns the ServiceAccount's name."""
    for crd in yaml.safe_load_all((CHART_DIR / "crds" / "kopf-peerings.yaml").read_text(encoding="utf-8")):
        kube._call("POST", f"{kube.base_url}/apis/apiextensions.k8s.io/v1/customresourcedefinitions", json=crd)
    wait_for(lambda: kube._call("GET", f"{kube.base_url}/apis/kopf.dev/v1"), 30, "the kopf.dev API")
    objects = render(values)
    kube.ensure_namespace(release_namespace)
    for obj in of_kind(objects, "ServiceAccount") + of_kind(objects, "Role") + of_kind(objects, "RoleBinding"):
        kube.create(obj, namespace=obj["metadata"].get("namespace") or release_namespace)
    for peering in [o for o in objects if o["apiVersion"].startswith("kopf.dev/")]:
        namespace = peering["metadata"]["namespace"]
        kube._call("POST", f"{kube.base_url}/apis/kopf.dev/v1/namespaces/{namespace}/kopfpeerings", json=peering)
    (account,) = of_kind(objects, "ServiceAccount")
    return str(account["metadata"]["name"])


def test_the_charts_rbac_is_enough_and_no_more_on_a_real_api_server(
        control_plane: ControlPlane, kube: KubeClient, pods: FakePods, tmp_path: Path) -> None:
    values = {"watchNamespaces": [STORY_NAMESPACE]}
    kube.ensure_namespace(STORY_NAMESPACE)
    release_namespace = "asr-system"
    account = apply_chart_access(kube, values, release_namespace)
    token = service_account_token(kube, release_namespace, account)
    kubeconfig = write_kubeconfig(tmp_path / "operator.kubeconfig", control_plane.url, token)
    user = f"system:serviceaccount:{release_namespace}:{account}"
    for rollout in ("meeting-zh", "call-center"):
        pods.watch(STORY_NAMESPACE, rollout, default=GOOD)
    webhook_port = free_port()
    process = start_operator(values, kubeconfig, tmp_path / "operator.log", "asr-rollout-0", webhook_port)
    try:
        tell_the_story(Story(kube, process, f"http://127.0.0.1:{webhook_port}"))
        # Garbage collection of the deleted rollout's children, by the real controller.
        selector = "asr.rollout.dev/rollout=call-center"
        wait_for(lambda: not any(kube.list(api, plural, STORY_NAMESPACE, label_selector=selector)
                                 for api, plural in (("v1", "configmaps"), ("apps/v1", "deployments"), ("v1", "pods"))),
                 60, "call-center's children collected")
    finally:
        process.stop()
        pods.forget(STORY_NAMESPACE)
    used, refused = audited_grants(control_plane.audit_events(user))
    assert used, "the audit log shows no call of the operator's ServiceAccount"
    assert not refused, "the API server refused these calls of the chart's ServiceAccount:\n" + "\n".join(refused)
    rules = [rule for role in of_kind(render(values), "Role") for rule in role["rules"]]
    unused = granted(rules) - used - set(NEEDED_WITHOUT_A_CALL)
    assert not unused, f"the chart grants these but the operator never used them: {sorted(unused)}"
