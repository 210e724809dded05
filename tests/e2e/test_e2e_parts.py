"""The sandbox's decisions, tested without starting anything: routing by HTTPRoute weights, the
node agent's pod-template handling, judging a scenario, measuring time to restored traffic."""
from __future__ import annotations

from pathlib import Path

import pytest

from asr_sandbox import scenarios as sc
from asr_sandbox.gateway import WeightedChooser, canary_weight
from asr_sandbox.node_agent import (
    IMMEDIATE, KubeletDelay, NodeAgent, PodProcess, deployment_status, map_args, resolve_env,
)
from asr_sandbox.report import traffic_restored_at


def _route(stable: int, canary: int | None) -> dict:  # type: ignore[type-arg]
    refs = [{"name": "r-stable", "port": 8000, "weight": stable}]
    if canary is not None:
        refs.append({"name": "r-canary", "port": 8000, "weight": canary})
    return {"spec": {"rules": [{"backendRefs": [{"name": "other", "weight": 7}]}, {"backendRefs": refs}]}}


@pytest.mark.parametrize(("stable", "canary", "expected"), [(100, None, 0), (75, 25, 25), (0, 100, 100), (0, 0, 0),
                                                            (1, 1, 50)])
def test_canary_weight_from_the_route(stable: int, canary: int | None, expected: int) -> None:
    assert canary_weight(_route(stable, canary), "r-stable", "r-canary") == expected


def test_canary_weight_unknown_without_the_rollouts_services() -> None:
    assert canary_weight({"spec": {"rules": [{"backendRefs": [{"name": "x"}]}]}}, "r-stable", "r-canary") is None
    assert canary_weight(None, "r-stable", "r-canary") is None


@pytest.mark.parametrize("weight", [0, 10, 25, 50, 100])
def test_weighted_chooser_sends_exactly_the_weight_share(weight: int) -> None:
    chooser = WeightedChooser()
    picks = [chooser.choose(weight) for _ in range(100)]
    assert picks.count("canary") == weight


def test_pod_args_are_mapped_to_local_volumes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    args = ["--model-config", "/etc/asr/model/model.yaml", "--models-root", "/models", "--x", "/modelsx"]
    mapped = map_args(args, {"/etc/asr/model": tmp_path / "cm", "/models": tmp_path / "m"})
    assert mapped == ["--model-config", str(tmp_path / "cm" / "model.yaml"), "--models-root", str(tmp_path / "m"),
                      "--x", "/modelsx"]


def test_pod_env_fills_the_downward_api() -> None:
    env = resolve_env([{"name": "ASR_TRACK", "value": "canary"},
                       {"name": "ASR_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                       {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}], "ns", "p-0")
    assert env == {"ASR_TRACK": "canary", "ASR_NAMESPACE": "ns", "POD_NAME": "p-0"}
    with pytest.raises(ValueError, match="only fieldRef"):
        resolve_env([{"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}], "ns", "p")


def test_pod_env_reads_secret_key_refs() -> None:
    ref = {"name": "ASR_ADMIN_TOKEN", "valueFrom": {"secretKeyRef": {"name": "r-admin-token", "key": "token"}}}
    secrets = {("r-admin-token", "token"): "t0ken"}
    assert resolve_env([ref], "ns", "p", lambda n, k: secrets.get((n, k))) == {"ASR_ADMIN_TOKEN": "t0ken"}
    with pytest.raises(LookupError, match="r-admin-token"):  # a real pod waits in CreateContainerConfigError
        resolve_env([ref], "ns", "p", lambda n, k: None)
    optional = {**ref, "valueFrom": {"secretKeyRef": {**ref["valueFrom"]["secretKeyRef"], "optional": True}}}
    assert resolve_env([optional], "ns", "p", lambda n, k: None) == {}


def test_kubelet_delay_is_drawn_up_to_the_sync_period_plus_jitter() -> None:
    import random

    rng = random.Random(7)
    draws = [KubeletDelay().draw(rng) for _ in range(2000)]
    assert 0 <= min(draws) and max(draws) <= 90.0
    assert max(draws) > 60.0  # the jitter stretches some intervals past the sync period
    assert IMMEDIATE.draw(rng) == 0.0


def test_a_running_pod_gets_a_changed_configmap_only_at_its_next_sync(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import yaml

    from asr_sandbox import ConfigMapDir

    agent = NodeAgent("http://127.0.0.1:1", "ns", "r", tmp_path, tmp_path / "pods",
                      kubelet_delay=KubeletDelay(sync_period_s=3600.0))
    pod = PodProcess("r-stable-0", "r-stable", "stable", tmp_path, ConfigMapDir(tmp_path / "cm"))
    v1, v2, v3 = (yaml.safe_dump({"version": v}) for v in ("v1", "v2", "v3"))
    agent._project(pod, v1)  # a starting pod reads the ConfigMap at once
    assert yaml.safe_load(pod.config_dir.path.read_text())["version"] == "v1"
    agent._project(pod, v2)  # changed while it runs: waits for the pod's next sync
    assert pod.sync_due is not None and yaml.safe_load(pod.config_dir.path.read_text())["version"] == "v1"
    agent._project(pod, v3)  # changed again meanwhile: the same sync, with whatever is current then
    pod.sync_due = 0.0  # the sync is due
    agent._project(pod, v3)
    assert yaml.safe_load(pod.config_dir.path.read_text())["version"] == "v3"
    assert [name for name, _, _ in agent.projections] == ["r-stable-0"] and pod.sync_due is None


def test_deployment_status_counts_ready_pods_and_ignores_terminating(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from asr_sandbox import ConfigMapDir

    def pod(name: str, ready: bool, terminating: bool = False) -> PodProcess:
        return PodProcess(name, "d", "stable", tmp_path, ConfigMapDir(tmp_path / name), ready=ready,
                          terminating=terminating)
    status = deployment_status({"metadata": {"generation": 4}},
                               [pod("a", True), pod("b", False), pod("c", True, terminating=True)])
    assert status == {"observedGeneration": 4, "replicas": 2, "updatedReplicas": 2, "readyReplicas": 1,
                      "availableReplicas": 1}


def test_traffic_restored_at_the_first_zero_weight_after_the_first_bad_request() -> None:
    log = [(0.0, 0), (10.0, 25), (20.0, 50), (30.0, 0), (40.0, 25)]
    assert traffic_restored_at(log, 12.0) == 30.0
    assert traffic_restored_at(log, 31.0) == 31.0  # already restored
    assert traffic_restored_at(log, 41.0) is None  # never restored


def test_model_spec_patch_removes_the_vad_path_of_the_previous_version() -> None:
    errors = next(s for s in sc.STORY if s.key == "errors")
    assert sc.model_spec(errors, None)["vadPath"] is None  # JSON merge patch: null deletes
    assert "vadPath" in sc.model_spec(sc.FIRST, None)


def _status(phase: str, stable: str, reason: str, metric_phase: str, version: str) -> dict:  # type: ignore[type-arg]
    return {"phase": phase, "stableVersion": stable,
            "history": [{"version": version, "outcome": "RolledBack"}],
            "conditions": [{"type": "Progressing", "reason": reason}],
            "analysis": {"metrics": [{"name": "error-rate", "phase": metric_phase}]}}


def test_judge_accepts_only_the_expected_guard() -> None:
    errors = next(s for s in sc.STORY if s.key == "errors")
    assert sc.judge(errors, _status("RolledBack", "v2", "AnalysisFailed", "Failed", "v3-broken"), "v2")[0]
    # rolled back, but by the progress deadline: not what this scenario is about
    assert not sc.judge(errors, _status("RolledBack", "v2", "ProgressDeadlineExceeded", "Inconclusive",
                                        "v3-broken"), "v2")[0]
    assert not sc.judge(errors, _status("Succeeded", "v3-broken", "Promoted", "Successful", "v3-broken"), "v2")[0]


def test_judge_of_a_relative_scenario_wants_the_bound_against_stable() -> None:
    sluggish = next(s for s in sc.STORY if s.key == "sluggish")

    def status(rtf_message: str, p99_phase: str = "Successful") -> dict:  # type: ignore[type-arg]
        return {"phase": "RolledBack", "stableVersion": "v2",
                "history": [{"version": "v3-sluggish", "outcome": "RolledBack"}],
                "conditions": [{"type": "Progressing", "reason": "AnalysisFailed"}],
                "analysis": {"metrics": [
                    {"name": "error-rate", "phase": "Successful"},
                    {"name": "p99-latency-seconds", "phase": p99_phase},
                    {"name": "real-time-factor", "phase": "Failed", "message": rtf_message}]}}

    relative = "canary 0.05 vs stable 0.012: 4.17x stable, more than maxRatio 2"
    assert sc.judge(sluggish, status(relative), "v2")[0]
    assert not sc.judge(sluggish, status("0.7 is over max 0.5"), "v2")[0]  # an absolute bound caught it
    assert not sc.judge(sluggish, status(relative, p99_phase="Failed"), "v2")[0]  # not within absolute bounds
    manifest = sc.rollout_manifest(sc.FIRST, None, "http://p:9090", sc.DemoSettings())
    rtf = next(m for m in manifest["spec"]["analysis"]["metrics"] if m["name"] == "real-time-factor")
    assert rtf["maxRatio"] == sc.DemoSettings().max_real_time_factor_ratio


def test_judge_accepts_an_alternative_guard_where_the_scenario_names_one() -> None:
    slow = next(s for s in sc.STORY if s.key == "slow")
    status = _status("RolledBack", "v2", "AnalysisFailed", "Successful", "v3-slow")
    status["analysis"]["metrics"] = [{"name": "p99-latency-seconds", "phase": "Successful"},
                                     {"name": "real-time-factor", "phase": "Failed"}]
    assert sc.judge(slow, status, "v2")[0]
    status["analysis"]["metrics"][1]["phase"] = "Successful"
    assert not sc.judge(slow, status, "v2")[0]


def test_demo_refuses_a_bad_rate() -> None:
    from asr_sandbox.demo import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--rate", "0"])


def test_prometheus_target_files_are_absolute_for_a_relative_workdir(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """`make demo` passes a relative report folder; Prometheus would resolve a relative file_sd
    path against its config file's folder and never find the pods."""
    import yaml

    from asr_sandbox.prometheus_runner import PrometheusRunner

    monkeypatch.chdir(tmp_path)
    runner = PrometheusRunner(Path("reports/run/prometheus"))
    runner.workdir.mkdir(parents=True)
    config = yaml.safe_load(runner._write_config().read_text())
    files = [f for job in config["scrape_configs"] for sd in job["file_sd_configs"] for f in sd["files"]]
    assert files and all(Path(f).is_absolute() and Path(f).parent == tmp_path / "reports/run/prometheus/targets"
                         for f in files), files
