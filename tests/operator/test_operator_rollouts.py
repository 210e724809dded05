"""Integration: the real operator (`python -m asr_operator`, a subprocess) against the API
emulator and against a real v1.28 API server (tier `real_api`), judging canaries by a real
Prometheus that scrapes fake pods.

The pods are a mock (tests/support/fake_pods.py): real GPU pods and a kubelet cannot run here.
They report the metric names of docs/contracts.md with values each test chooses per model
version, and they follow the track ConfigMaps as the real server's hot reload does.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from asr_sandbox.prometheus_runner import PrometheusRunner
from tests.support.backends import ApiBackend
from tests.support.fake_pods import VersionBehaviour
from tests.support.kube import ApiError, wait_for
from tests.support.operator_process import OperatorProcess, operator_process
from tests.support.rollouts import (
    RO, condition, config_of, http_route, model, replicas_of, rollout_manifest, start_new_version, status,
    wait_phase,
)

pytestmark = pytest.mark.slow

GOOD = VersionBehaviour(requests_per_second=30, error_ratio=0.0, latency_seconds=0.1)
MANUAL_STEPS = [{"setWeight": 40}, {"pause": {"duration": "1s"}}, {"pause": {}}, {"setWeight": 100}]
BAD = VersionBehaviour(requests_per_second=30, error_ratio=0.5, latency_seconds=0.1)
SILENT = VersionBehaviour(requests_per_second=0)


class Scenario:
    """One namespace, one operator process, helpers to read what the operator did."""

    def __init__(self, backend: ApiBackend, prometheus: PrometheusRunner, workdir: Path, namespace: str) -> None:
        self.backend, self.kube, self.pods, self.prometheus = backend, backend.kube, backend.pods, prometheus
        self.kubeconfig, self.workdir, self.ns = backend.kubeconfig, workdir, namespace
        backend.prepare_namespace(namespace)
        self.operator: OperatorProcess | None = None
        self.starts = 0

    def start_operator(self) -> None:
        self.starts += 1
        self.operator = operator_process([self.ns], self.kubeconfig,
                                         self.workdir / f"operator-{self.starts}.log").start()

    def kill_operator(self) -> None:
        assert self.operator is not None
        self.operator.kill()

    def log(self) -> str:
        """What a failed wait shows: the rollout as it is now and the operator's last words
        (without the per-query and per-event chatter of its debug log)."""
        text = self.operator.log_tail(200_000) if self.operator else ""
        lines = [line for line in text.splitlines()
                 if "urllib3.connectionpool" not in line and "Handler 'poke'" not in line]
        try:
            rollouts: list[Any] = [(r["metadata"]["name"], r["metadata"].get("annotations"), r.get("status"))
                        for r in self.kube.list(*RO, self.ns)]
        except Exception as e:  # the report must not hide the failure it explains
            rollouts = [repr(e)]
        changes: list[Any] = []
        for name, *_ in rollouts:
            try:
                changes += [(name, v["metadata"]["resourceVersion"],
                             sorted((v["metadata"].get("annotations") or {}).keys()),
                             (v.get("status") or {}).get("phase"), (v.get("status") or {}).get("message"))
                            for v in self.history_of(("asr.rollout.dev", "v1alpha1", "asrmodelrollouts"), name)]
            except Exception as e:
                changes.append(repr(e))
        writes = []
        if self.backend.emulator is not None:
            writes = [f"{r.method} {r.path} -> {r.status}" for r in self.backend.emulator.emulator.request_log
                      if r.namespace == self.ns and r.method != "GET" and r.resource != "events"]
        return (f"rollouts: {rollouts}\n--- API writes ---\n" + "\n".join(writes[-30:])
                + "\n--- rollout versions ---\n"
                + "\n".join(map(str, changes[-40:]))
                + "\n--- operator log ---\n" + "\n".join(lines[-60:]))

    def create(self, name: str, version: str = "v1", **kwargs: Any) -> None:
        self.kube.create(rollout_manifest(self.ns, name, version, self.prometheus.url, **kwargs))

    def phase(self, name: str, phases: str | tuple[str, ...], timeout: float = 30) -> dict[str, Any]:
        return wait_phase(self.kube, self.ns, name, phases, timeout, context=self.log)

    def manual_canary_on_v2(self, name: str, **analysis: Any) -> dict[str, Any]:
        """A rollout with manual steps settled on v1 (good pods), then v2 started and the
        rollout waiting at its `pause: {}` step; returns that status."""
        self.pods.watch(self.ns, name, default=GOOD)
        self.start_operator()
        self.create(name, "v1", steps=MANUAL_STEPS, **analysis)
        self.settled_on(name, "v1")
        start_new_version(self.kube, self.ns, name, "v2")
        return self.manual_pause(name)

    def manual_pause(self, name: str, timeout: float = 30) -> dict[str, Any]:
        """Wait for a `pause: {}` step (not a pause the analysis caused, e.g. while the new
        canary has too little traffic yet: `promote` would only resume that one)."""
        def probe() -> dict[str, Any] | None:
            current = status(self.kube, self.ns, name)
            paused = condition(current, "Paused") or {}
            if current.get("phase") == "Paused" and paused.get("reason") == "ManualPause":
                return current
            return None
        return wait_for(probe, timeout, f"{name} paused by a pause step", context=self.log)

    def settled_on(self, name: str, version: str, timeout: float = 30) -> dict[str, Any]:
        """Wait until `version` is stable and served by the stable pods."""
        def probe() -> dict[str, Any] | None:
            current = status(self.kube, self.ns, name)
            if current.get("phase") == "Succeeded" and current.get("stableVersion") == version:
                return current
            return None
        return wait_for(probe, timeout, f"{name} settled on {version}", context=self.log)

    def events(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.kube.list("v1", "events", self.ns)
                if (e.get("involvedObject") or {}).get("name") == name]

    def history_of(self, plural_key: tuple[str, str, str], name: str) -> list[dict[str, Any]]:
        """Every stored version of an object (the emulator's history; a watch on a real API)."""
        group, version, plural = plural_key
        return self.backend.history_of(f"{group}/{version}" if group else version, plural, self.ns, name)

    def stop(self) -> None:
        if self.operator is not None:
            self.operator.stop()
        self.pods.forget(self.ns)
        self.backend.stop_watchers(self.ns)


@pytest.fixture
def scenario(request: pytest.FixtureRequest, backend: ApiBackend, backend_prometheus: PrometheusRunner,
             tmp_path: Path) -> Iterator[Scenario]:
    test_name = request.node.name.split("[")[0]
    namespace = "it-" + test_name.removeprefix("test_").replace("_", "-")[:40].strip("-")
    s = Scenario(backend, backend_prometheus, tmp_path, namespace)
    try:
        yield s
    finally:
        s.stop()


def test_happy_path_promotes_by_hot_reload_without_restarting_stable(scenario: Scenario) -> None:
    s, ns, name = scenario, scenario.ns, "meeting"
    s.pods.watch(ns, name, default=GOOD)
    s.kube.create(http_route(ns, "meeting-route", name))
    s.start_operator()
    s.create(name, "v1", gateway_route="meeting-route",
             steps=[{"setWeight": 20}, {"pause": {"duration": "2s"}}, {"setWeight": 60},
                    {"pause": {"duration": "2s"}}])
    s.settled_on(name, "v1")
    stable_template = s.kube.get("apps/v1", "deployments", ns, f"{name}-stable")["spec"]["template"]

    start_new_version(s.kube, ns, name, "v2")
    progressing = s.phase(name, "Progressing")
    assert progressing["canaryVersion"] == "v2"
    assert config_of(s.kube, ns, name, "canary")["path"] == "paraformer-tiny/v2"
    assert config_of(s.kube, ns, name, "stable")["path"] == "paraformer-tiny/v1"
    final = s.settled_on(name, "v2", timeout=60)

    stable_config = config_of(s.kube, ns, name, "stable")
    assert {k: stable_config.get(k) for k in ("name", "version", "path")} == model("v2")
    promoted = [h for h in final.get("history") or [] if h.get("outcome") == "Promoted"]
    assert [h["version"] for h in promoted][-1] == "v2"
    # Status is written before the children (crash safety): the scale-down follows within the tick.
    wait_for(lambda: replicas_of(s.kube, ns, name, "canary") == 0, 10, "the canary scaled to 0", context=s.log)
    assert final.get("canaryWeight", 0) == 0
    assert final["observedGeneration"] == s.kube.rollout(ns, name)["metadata"]["generation"]
    assert s.pods.serving(ns, name).get("stable") == "v2"
    # The route went through the steps' weights and ends with all traffic on stable.
    route_weights = [
        {ref["name"]: ref.get("weight") for ref in v["spec"]["rules"][0]["backendRefs"]}
        for v in s.history_of(("gateway.networking.k8s.io", "v1", "httproutes"), "meeting-route")]
    canary_weights = [w.get(f"{name}-canary") for w in route_weights if f"{name}-canary" in w]
    assert 20 in canary_weights and 60 in canary_weights and canary_weights[-1] == 0
    assert route_weights[-1][f"{name}-stable"] == 100
    # No restart: every stored version of the stable Deployment has the same pod template.
    templates = {repr(v["spec"]["template"]) for v in
                 s.history_of(("apps", "v1", "deployments"), f"{name}-stable")}
    assert templates == {repr(stable_template)}
    if s.backend.real:  # the Deployment controller made one ReplicaSet: no pod was replaced
        replica_sets = s.kube.list("apps/v1", "replicasets", ns, label_selector=f"asr.rollout.dev/rollout={name},asr.rollout.dev/track=stable")
        assert len(replica_sets) == 1, [r["metadata"]["name"] for r in replica_sets]
    assert any(e["reason"] for e in s.events(name))
    assert_children_follow_the_contract(s, name)
    # The operator's own metrics say the same (docs/contracts.md, "Operator metrics").
    assert s.operator is not None
    samples = operator_samples(s.operator)
    assert samples[("asr_rollout_phase", (("namespace", ns), ("phase", "Succeeded"), ("rollout", name)))] == 1.0
    assert samples[("asr_rollout_phase", (("namespace", ns), ("phase", "Progressing"), ("rollout", name)))] == 0.0
    assert samples[("asr_rollout_canary_weight", (("namespace", ns), ("rollout", name)))] == 0.0


def operator_samples(operator: OperatorProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The operator's /metrics as {(sample name, sorted labels): value}."""
    import requests
    from prometheus_client.parser import text_string_to_metric_families
    text = requests.get(operator.metrics_url, timeout=5).text
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def assert_children_follow_the_contract(s: Scenario, name: str) -> None:
    """Names, labels, ownerReferences, env and mounts as docs/contracts.md fixes them."""
    ns = s.ns
    uid = s.kube.rollout(ns, name)["metadata"]["uid"]
    owned = [s.kube.get("v1", "configmaps", ns, f"{name}-{t}-model") for t in ("stable", "canary")]
    owned += [s.kube.get("apps/v1", "deployments", ns, f"{name}-{t}") for t in ("stable", "canary")]
    owned += [s.kube.get("v1", "services", ns, f"{name}-{t}") for t in ("stable", "canary")]
    for obj in owned:
        refs = obj["metadata"].get("ownerReferences") or []
        assert [(r["kind"], r["name"], r.get("uid")) for r in refs] == [("ASRModelRollout", name, uid)], obj["metadata"]
    for track in ("stable", "canary"):
        deployment = s.kube.get("apps/v1", "deployments", ns, f"{name}-{track}")
        template = deployment["spec"]["template"]
        assert template["metadata"]["labels"] == {
            "app.kubernetes.io/name": "asr-inference-server", "app.kubernetes.io/instance": name,
            "app.kubernetes.io/managed-by": "asr-rollout", "asr.rollout.dev/rollout": name,
            "asr.rollout.dev/track": track}
        container = template["spec"]["containers"][0]
        env = {e["name"]: e for e in container["env"]}
        assert env["ASR_ROLLOUT"]["value"] == name and env["ASR_TRACK"]["value"] == track
        assert env["ASR_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
        assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        assert mounts["/models"]["readOnly"] is True and "/etc/asr/model" in mounts
        volumes = {v["name"]: v for v in template["spec"]["volumes"]}
        assert volumes[mounts["/etc/asr/model"]["name"]]["configMap"]["name"] == f"{name}-{track}-model"
        assert volumes[mounts["/models"]["name"]]["persistentVolumeClaim"]["claimName"] == "asr-models"
        assert container["resources"]["limits"]["nvidia.com/gpu"] in (1, "1")


def test_breach_rolls_back_and_reverts_the_canary_configmap(scenario: Scenario) -> None:
    s, ns, name = scenario, scenario.ns, "breach"
    s.pods.watch(ns, name, default=GOOD, versions={"v2": BAD})
    s.start_operator()
    s.create(name, "v1", steps=[{"setWeight": 50}, {"pause": {"duration": "30s"}}])
    s.settled_on(name, "v1")
    start_new_version(s.kube, ns, name, "v2")
    s.phase(name, "Progressing")
    final = s.phase(name, "RolledBack", timeout=45)

    assert final["failedVersion"] == "v2"
    assert final.get("canaryWeight", 0) == 0
    assert final.get("currentStep") is None  # `kubectl get`'s Step column shows no step once rolled back
    assert config_of(s.kube, ns, name, "canary")["path"] == "paraformer-tiny/v1"  # reverted
    assert config_of(s.kube, ns, name, "stable")["path"] == "paraformer-tiny/v1"
    # status is written before the children (crash safety): the canary's scale-down follows it
    wait_for(lambda: replicas_of(s.kube, ns, name, "canary") == 0, 10, "the canary scaled to 0", context=s.log)
    error_rate = next(m for m in final["analysis"]["metrics"] if m["name"] == "error-rate")
    assert error_rate["phase"] == "Failed" and float(error_rate["value"]) > 0.05
    rolled_back = [h for h in final.get("history") or [] if h.get("outcome") == "RolledBack"]
    assert rolled_back and rolled_back[-1]["version"] == "v2" and rolled_back[-1]["reason"]
    assert any(e["type"] == "Warning" for e in s.events(name))
    assert not any(h.get("outcome") == "Promoted" and h.get("version") == "v2" for h in final.get("history") or [])
    # The failed version is not tried again on its own.
    s.pods.set_behaviour(ns, name, "v2", error_ratio=0.0)
    time.sleep(4)
    again = status(s.kube, ns, name)
    assert again["phase"] == "RolledBack" and again["stableVersion"] == "v1"
    # status is written before the children (crash safety): the canary's scale-down follows it
    wait_for(lambda: replicas_of(s.kube, ns, name, "canary") == 0, 10, "the canary scaled to 0", context=s.log)


def test_no_traffic_is_inconclusive_then_paused_never_promoted(scenario: Scenario) -> None:
    s, ns, name = scenario, scenario.ns, "quiet"
    s.pods.watch(ns, name, default=GOOD, versions={"v2": SILENT})
    s.start_operator()
    s.create(name, "v1", steps=[{"setWeight": 50}, {"pause": {"duration": "2s"}}], inconclusiveLimit=2)
    s.settled_on(name, "v1")
    start_new_version(s.kube, ns, name, "v2")
    paused = s.phase(name, "Paused", timeout=45)
    assert all(m["phase"] == "Inconclusive" for m in paused["analysis"]["metrics"]), paused["analysis"]
    reason = condition(paused, "Paused") or condition(paused, "Healthy") or {}
    assert "nconclusive" in (reason.get("reason", "") + reason.get("message", "")), paused["conditions"]
    time.sleep(3)
    later = status(s.kube, ns, name)
    assert later["phase"] == "Paused" and later["stableVersion"] == "v1"
    assert config_of(s.kube, ns, name, "stable")["version"] == "v1"
    assert not any(h.get("outcome") == "Promoted" and h.get("version") == "v2" for h in later.get("history") or [])
    # An unjudged canary holds no traffic (replicaRatio: no canary pod, stable at full size).
    assert later["canaryWeight"] == 0
    wait_for(lambda: replicas_of(s.kube, ns, name, "canary") == 0, 10, "the canary scaled to 0", context=s.log)
    assert replicas_of(s.kube, ns, name, "stable") == 2


def test_prometheus_down_never_promotes(scenario: Scenario) -> None:
    from asr_sandbox.processes import free_port
    s, ns, name = scenario, scenario.ns, "blind"
    s.pods.watch(ns, name, default=GOOD)
    s.start_operator()
    s.create(name, "v1", steps=[{"setWeight": 50}, {"pause": {"duration": "2s"}}], errorLimit=2)
    s.settled_on(name, "v1")
    # Nothing listens there: every query fails to connect.
    s.kube.patch(*RO, ns, name, {"spec": {"model": model("v2"),
                                           "analysis": {"prometheus": {"address": f"http://127.0.0.1:{free_port()}"}}}})
    paused = s.phase(name, "Paused", timeout=45)
    assert all(m["phase"] == "Error" for m in paused["analysis"]["metrics"]), paused["analysis"]
    # Each says what is wrong and what to check, not the request URL with its encoded query.
    for measured in paused["analysis"]["metrics"]:
        text = measured.get("message", "")
        assert "is unreachable" in text and "spec.analysis.prometheus.address" in text, measured
        assert "/api/v1/query" not in text and "%7B" not in text, measured
    time.sleep(3)
    later = status(s.kube, ns, name)
    assert later["phase"] == "Paused" and later["stableVersion"] == "v1"
    assert config_of(s.kube, ns, name, "stable")["version"] == "v1"
    # Prometheus down for a weekend is no canary serving 50% for a weekend.
    assert later["canaryWeight"] == 0
    wait_for(lambda: replicas_of(s.kube, ns, name, "canary") == 0, 10, "the canary scaled to 0", context=s.log)


def test_an_image_change_is_canaried_and_reaches_stable_only_at_promotion(scenario: Scenario) -> None:
    """A change of spec.server (here the image) runs through the steps and the analysis like a
    model change. Old code: it went straight to the stable pods, unjudged."""
    s, ns, name = scenario, scenario.ns, "image"
    s.pods.watch(ns, name, default=GOOD)
    s.start_operator()
    s.create(name, "v1", steps=[{"setWeight": 50}, {"pause": {"duration": "2s"}}])
    s.settled_on(name, "v1")

    def image(track: str) -> str:
        deployment = s.kube.get("apps/v1", "deployments", ns, f"{name}-{track}")
        return str(deployment["spec"]["template"]["spec"]["containers"][0]["image"])

    old_image, new_image = image("stable"), "registry.example/asr-inference-server:0.2.0"
    s.kube.patch(*RO, ns, name, {"spec": {"server": {"image": new_image}}})
    progressing = s.phase(name, "Progressing")
    assert progressing["canaryChanges"] == [f"image {old_image} -> {new_image}"]
    wait_for(lambda: image("canary") == new_image, 10, "the canary Deployment on the new image")
    assert image("stable") == old_image
    final = s.phase(name, "Succeeded", timeout=60)
    assert final["history"][-1]["outcome"] == "Promoted" and final["history"][-1]["changes"] == progressing["canaryChanges"]
    assert final["analysis"]["outcome"] == "Successful"
    assert final["stableTemplate"]["image"] == new_image
    wait_for(lambda: image("stable") == new_image, 10, "the stable Deployment on the new image")
    assert any(e["reason"] == "CanaryStarted" and new_image in e["message"] for e in s.events(name))


def test_progress_deadline_rolls_back_canary_that_never_gets_ready(scenario: Scenario) -> None:
    s, ns, name = scenario, scenario.ns, "stuck"
    s.pods.watch(ns, name, default=GOOD, versions={"v2": VersionBehaviour(ready=False)})
    s.start_operator()
    s.create(name, "v1")
    s.settled_on(name, "v1")
    s.kube.patch(*RO, ns, name, {"spec": {"model": model("v2"), "strategy": {"progressDeadlineSeconds": 3}}})
    final = s.phase(name, "RolledBack", timeout=30)
    text = " ".join(str(c.get("reason", "")) + " " + str(c.get("message", "")) for c in final["conditions"])
    assert "eadline" in text, final["conditions"]
    assert final["failedVersion"] == "v2" and final["stableVersion"] == "v1"
    assert config_of(s.kube, ns, name, "canary")["version"] == "v1"
    # status is written before the children (crash safety): the canary's scale-down follows it
    wait_for(lambda: replicas_of(s.kube, ns, name, "canary") == 0, 10, "the canary scaled to 0", context=s.log)


def test_invalid_spec_gets_a_condition_creates_nothing_and_others_proceed(scenario: Scenario) -> None:
    s, ns = scenario, scenario.ns
    s.pods.watch(ns, "fine", default=GOOD)
    s.start_operator()
    bad = rollout_manifest(ns, "bad-weight", "v1", s.prometheus.url, steps=[{"setWeight": 150}])
    unknown = rollout_manifest(ns, "bad-metric", "v1", s.prometheus.url)
    unknown["spec"]["analysis"]["metrics"] = [{"name": "accuracy", "max": 1}]
    fields = (("bad-weight", "spec.strategy.steps[0].setWeight"), ("bad-metric", "spec.analysis.metrics[0].name"))
    if s.backend.real:
        # A real API server refuses both by the CRD's schema, naming the field.
        for manifest, (_, field) in zip((bad, unknown), fields):
            with pytest.raises(ApiError) as refused:
                s.kube.create(manifest)
            assert refused.value.status == 422 and field in str(refused.value), refused.value
        fields = ()
    else:
        s.kube.create(bad)  # the emulator validates nothing, like a cluster with an old CRD
        s.kube.create(unknown)
    s.create("fine", "v1")
    for name, field in fields:
        def invalid(name: str = name) -> dict[str, Any] | None:
            c = condition(status(s.kube, ns, name), "InvalidSpec")
            return c if c and c.get("status") == "True" else None
        cond = wait_for(invalid, 20, f"InvalidSpec on {name}", context=s.log)
        assert field.split("[")[0] in cond["message"], cond
    s.settled_on("fine", "v1")
    for name in ("bad-weight", "bad-metric"):
        if s.backend.real:
            assert s.kube.get_or_none(*RO, ns, name) is None
        for api_version, plural, suffix in (("v1", "configmaps", "-stable-model"), ("apps/v1", "deployments", "-stable"),
                                            ("v1", "services", "-stable"), ("apps/v1", "deployments", "-canary")):
            assert s.kube.get_or_none(api_version, plural, ns, name + suffix) is None, (name, plural)
    assert s.operator is not None and s.operator.running


def annotate(s: Scenario, name: str, key: str, value: str) -> None:
    s.kube.annotate_rollout(s.ns, name, {f"asr.rollout.dev/{key}": value})


def annotations_of(s: Scenario, name: str) -> dict[str, str]:
    return s.kube.rollout(s.ns, name)["metadata"].get("annotations") or {}


def test_spec_change_mid_rollout_supersedes_the_running_canary(scenario: Scenario) -> None:
    s, ns, name = scenario, scenario.ns, "superseded"
    assert s.manual_canary_on_v2(name)["canaryVersion"] == "v2"
    start_new_version(s.kube, ns, name, "v3")
    wait_for(lambda: status(s.kube, ns, name).get("canaryVersion") == "v3"
             and config_of(s.kube, ns, name, "canary")["version"] == "v3", 20, "canary on v3", context=s.log)
    paused = s.manual_pause(name)
    assert paused["canaryVersion"] == "v3" and paused["stableVersion"] == "v1"
    annotate(s, name, "promote", "true")
    final = s.settled_on(name, "v3", timeout=40)
    assert config_of(s.kube, ns, name, "stable")["path"] == "paraformer-tiny/v3"
    versions_promoted = [h["version"] for h in final.get("history") or [] if h.get("outcome") == "Promoted"]
    assert "v2" not in versions_promoted and versions_promoted[-1] == "v3"
    assert final["observedGeneration"] == s.kube.rollout(ns, name)["metadata"]["generation"]


def test_manual_promote_then_rollback_to_a_version_from_history(scenario: Scenario) -> None:
    s, ns, name = scenario, scenario.ns, "manual"
    s.manual_canary_on_v2(name)
    time.sleep(2)  # a pause without duration waits for a person, however long
    assert status(s.kube, ns, name)["phase"] == "Paused"
    annotate(s, name, "promote", "true")
    s.settled_on(name, "v2", timeout=40)
    assert "asr.rollout.dev/promote" not in annotations_of(s, name)
    assert config_of(s.kube, ns, name, "stable")["version"] == "v2"

    annotate(s, name, "rollback-to", "v1")
    wait_for(lambda: status(s.kube, ns, name).get("stableVersion") == "v1"
             and config_of(s.kube, ns, name, "stable")["path"] == "paraformer-tiny/v1", 30,
             "stable back on v1", context=s.log)
    wait_for(lambda: "asr.rollout.dev/rollback-to" not in annotations_of(s, name), 10, "annotation removed")
    wait_for(lambda: s.pods.serving(ns, name).get("stable") == "v1", 10, "stable pods serving v1")


def test_manual_abort_then_retry(scenario: Scenario) -> None:
    s, ns, name = scenario, scenario.ns, "abort"
    s.manual_canary_on_v2(name)
    annotate(s, name, "abort", "true")
    aborted = s.phase(name, "RolledBack", timeout=30)
    assert aborted["failedVersion"] == "v2" and aborted["stableVersion"] == "v1"
    assert config_of(s.kube, ns, name, "canary")["version"] == "v1"
    # status is written before the children (crash safety): the canary's scale-down follows it
    wait_for(lambda: replicas_of(s.kube, ns, name, "canary") == 0, 10, "the canary scaled to 0", context=s.log)
    assert "asr.rollout.dev/abort" not in annotations_of(s, name)

    annotate(s, name, "retry", "true")
    retried = s.phase(name, ("Progressing", "Paused"), timeout=30)
    assert retried["canaryVersion"] == "v2"
    s.manual_pause(name)
    annotate(s, name, "promote", "true")
    final = s.settled_on(name, "v2", timeout=40)
    assert "asr.rollout.dev/retry" not in annotations_of(s, name)
    assert config_of(s.kube, ns, name, "stable")["version"] == "v2"
    assert not final.get("failedVersion")


def drive_with_kills(s: Scenario, name: str, done: Callable[[dict[str, Any]], bool],
                     kill_points: dict[str, Callable[[dict[str, Any]], bool]],
                     act: Callable[[dict[str, Any], list[str]], None] | None = None,
                     timeout: float = 90) -> list[str]:
    """Poll the rollout's status; the first time a kill point's predicate holds, SIGKILL the
    operator (no cleanup runs) and start a fresh one. `act` plays the person (annotations).
    Returns the kill points that fired, once `done(status)` holds."""
    fired: list[str] = []
    deadline = time.monotonic() + timeout
    while True:
        current = status(s.kube, s.ns, name)
        if act is not None:
            act(current, fired)
        if done(current):
            return fired
        for label, predicate in kill_points.items():
            if label not in fired and predicate(current):
                s.kill_operator()
                fired.append(label)
                s.start_operator()
                break
        if time.monotonic() > deadline:
            raise AssertionError(f"not done after kills at {fired}: {current}\n{s.log()}")
        time.sleep(0.05)


def in_phase(phase: str) -> Callable[[dict[str, Any]], bool]:
    return lambda st: st.get("phase") == phase


def test_operator_killed_in_every_phase_resumes_to_the_same_outcome(scenario: Scenario) -> None:
    s, ns, name = scenario, scenario.ns, "crashy"
    s.pods.watch(ns, name, default=GOOD, versions={"v3": BAD})
    s.start_operator()
    s.create(name, "v1", steps=[{"setWeight": 40}, {"pause": {"duration": "2s"}}, {"pause": {}}], failureLimit=3)
    fired = drive_with_kills(s, name, lambda st: st.get("phase") == "Succeeded", {"Pending": in_phase("Pending")})
    assert fired == ["Pending"]

    # Promotion path: killed while progressing, while paused for a person, while promoting.
    start_new_version(s.kube, ns, name, "v2")

    def person(st: dict[str, Any], fired: list[str]) -> None:
        manual = (condition(st, "Paused") or {}).get("reason") == "ManualPause"
        if st.get("phase") == "Paused" and manual and "Paused" in fired and \
                "asr.rollout.dev/promote" not in annotations_of(s, name):
            annotate(s, name, "promote", "true")
    fired = drive_with_kills(
        s, name, lambda st: st.get("phase") == "Succeeded" and st.get("stableVersion") == "v2",
        {"Progressing": in_phase("Progressing"), "Paused": in_phase("Paused"), "Promoting": in_phase("Promoting")},
        act=person)
    assert fired == ["Progressing", "Paused", "Promoting"], fired
    promoted = s.settled_on(name, "v2")
    entries = [h for h in promoted.get("history") or [] if h.get("version") == "v2"]
    assert [h["outcome"] for h in entries] == ["Promoted"], entries  # applied once
    assert config_of(s.kube, ns, name, "stable")["version"] == "v2"
    assert s.pods.serving(ns, name).get("stable") == "v2"

    # Rollback path: killed between failed measurements (the count lives in status), and while
    # rolling back if that phase is seen at all (it may be decided and finished in one tick).
    start_new_version(s.kube, ns, name, "v3")
    fired = drive_with_kills(
        s, name, in_phase("RolledBack"),
        {"one-failure": lambda st: st.get("phase") in ("Progressing", "Paused")
                                   and (st.get("counters") or {}).get("failed") == 1,
         "RollingBack": in_phase("RollingBack")})
    assert "one-failure" in fired, fired
    final = status(s.kube, ns, name)
    assert final["failedVersion"] == "v3" and final["stableVersion"] == "v2"
    assert config_of(s.kube, ns, name, "canary")["version"] == "v2"
    assert config_of(s.kube, ns, name, "stable")["version"] == "v2"
    # status is written before the children (crash safety): the canary's scale-down follows it
    wait_for(lambda: replicas_of(s.kube, ns, name, "canary") == 0, 10, "the canary scaled to 0", context=s.log)
    entries = [h for h in final.get("history") or [] if h.get("version") == "v3"]
    assert [h["outcome"] for h in entries] == ["RolledBack"], entries


def test_children_changed_by_others_are_put_back(scenario: Scenario) -> None:
    s, ns, name = scenario, scenario.ns, "drift"
    # The operator still ticks every analysis interval here. While the canary ConfigMap names a
    # version no pod serves, the canary gets no requests: a limit beyond the 30 s drift check keeps
    # the unjudged canary from being paused at weight 0 (no canary pods) before it is put back.
    s.manual_canary_on_v2(name, inconclusiveLimit=100)
    canary_replicas = replicas_of(s.kube, ns, name, "canary")
    # Someone points the canary at another model and scales it by hand.
    s.kube.patch("v1", "configmaps", ns, f"{name}-canary-model",
                 {"data": {"model.yaml": "name: paraformer-tiny\nversion: v9\npath: paraformer-tiny/v9\n"}})
    s.kube.patch("apps/v1", "deployments", ns, f"{name}-canary", {"spec": {"replicas": 7}})
    # The operator re-checks unchanged children every 30 s (Reconciler.drift_check_seconds).
    wait_for(lambda: config_of(s.kube, ns, name, "canary")["version"] == "v2"
             and replicas_of(s.kube, ns, name, "canary") == canary_replicas, 45,
             "the canary ConfigMap and replicas put back", context=s.log)
    assert status(s.kube, ns, name)["canaryVersion"] == "v2"
