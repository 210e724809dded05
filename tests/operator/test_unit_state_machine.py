"""Unit tests of the pure rollout state machine (`asr_operator.state_machine.decide`).

A pure, in-memory stand-in for the cluster (`World`) applies decide()'s actions to plain dicts,
makes pods ready the way a Deployment controller would, and feeds decide() the observations it
asks for. No server of any kind is involved: the state machine is pure, and this is its bench.
"""
from __future__ import annotations

import copy
import datetime
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from asr_operator.analysis.verdict import ERROR, FAILED, INCONCLUSIVE, SUCCESSFUL, Measurement
from asr_operator.spec import InvalidSpec, ModelRef, PodTemplate, RolloutSpec, parse_spec
from asr_operator.state_machine import (
    AnalysisRun, Decision, DeploymentState, EnsureConfigMap, EnsureDeployment, Observations, SetWeight,
    decide, desired_replicas, wants,
)

T0 = datetime.datetime(2026, 1, 1, 12, 0, 0, tzinfo=datetime.timezone.utc)
Analysis = Callable[[], tuple[Measurement, ...]]


def measurements(phase: str, value: float | None = 0.001) -> tuple[Measurement, ...]:
    return (Measurement("error-rate", phase, value, phase.lower()),
            Measurement("p99-latency-seconds", SUCCESSFUL if phase != ERROR else ERROR, 0.2, ""))


GOOD: Analysis = lambda: measurements(SUCCESSFUL)  # noqa: E731
BAD: Analysis = lambda: measurements(FAILED, 0.5)  # noqa: E731
QUIET: Analysis = lambda: measurements(INCONCLUSIVE, None)  # noqa: E731
DOWN: Analysis = lambda: measurements(ERROR, None)  # noqa: E731


def rollout_spec(version: str = "v1", steps: list[dict[str, Any]] | None = None, traffic: str = "gatewayAPI",
                 analysis: bool = True, **analysis_overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": {"name": "paraformer-tiny", "version": version, "path": f"paraformer-tiny/{version}"},
        "modelVolume": {"persistentVolumeClaim": {"claimName": "asr-models"}},
        "server": {"image": "asr:0.1", "replicas": 2},
        "traffic": {"gatewayAPI": {"httpRoute": "route"}} if traffic == "gatewayAPI" else {"replicaRatio": {}},
        "strategy": {"steps": steps if steps is not None else
                     [{"setWeight": 10}, {"pause": {"duration": "1m"}}, {"setWeight": 50},
                      {"pause": {"duration": "1m"}}, {"setWeight": 100}],
                     "progressDeadlineSeconds": 300},
        "rollback": {"onAlert": True, "postPromotionWindow": "10m"},
    }
    if analysis:
        spec["analysis"] = {"prometheus": {"address": "http://prometheus:9090"}, "interval": "30s",
                            "window": "30s", "failureLimit": 2, "inconclusiveLimit": 3, "errorLimit": 3,
                            "minRequests": 20,
                            "metrics": [{"name": "error-rate", "max": 0.01},
                                        {"name": "p99-latency-seconds", "max": 2.0}],
                            **analysis_overrides}
    return spec


@dataclass
class World:
    raw_spec: dict[str, Any]
    now: datetime.datetime = T0
    status: dict[str, Any] = field(default_factory=dict)
    weight: int | None = None
    configmaps: dict[str, ModelRef] = field(default_factory=dict)
    replicas: dict[str, int] = field(default_factory=dict)
    ready: dict[str, int] = field(default_factory=dict)
    pods_start: bool = True  # a Deployment controller makes every asked-for pod ready
    annotations: dict[str, str] = field(default_factory=dict)
    served: dict[str, int] | None = None  # stable pods per version; None = follow the ConfigMap
    canary_serves: dict[str, int] | None = None  # canary pods per version; None = follow the ConfigMap
    generation: int = 1
    decisions: list[Decision] = field(default_factory=list)
    weights_seen: list[int] = field(default_factory=list)
    templates: dict[str, PodTemplate] = field(default_factory=dict)  # each Deployment's pod template
    broken: set[tuple[str, str]] = field(default_factory=set)  # (track, image) whose new pods never get ready
    start_seconds: float = 0.0  # a new pod turns ready this long after it was asked for (a model load)
    pod_starts: dict[str, list[datetime.datetime]] = field(default_factory=dict)
    capacity_seen: list[int] = field(default_factory=list)  # ready stable + ready canary after each change
    pods_seen: list[int] = field(default_factory=list)  # stable + canary pods asked for after each change
    weight_raises: list[tuple[int, int]] = field(default_factory=list)  # (weight, ready canary pods) when raised
    old_pods: dict[str, int] = field(default_factory=dict)  # ready pods of a previous template, per track

    def spec(self) -> RolloutSpec | InvalidSpec:
        try:
            return parse_spec(self.raw_spec)
        except InvalidSpec as error:
            return error

    def observe(self, analysis: Analysis | None) -> Observations:
        spec = self.spec()
        needs = wants(spec if isinstance(spec, RolloutSpec) else None, self.status, self.now)
        run = AnalysisRun(analysis()) if needs.analysis and analysis is not None else None
        served = None
        if needs.served_versions:
            if self.served is not None:
                served = dict(self.served)
            elif "stable" in self.configmaps:
                served = {self.configmaps["stable"].version: self.ready.get("stable", 0)}
        canary_versions = None
        if needs.canary_versions:
            canary_versions = dict(self.canary_serves) if self.canary_serves is not None else (
                {self.configmaps["canary"].version: self.ready.get("canary", 0)})
        return Observations(
            canary_versions=canary_versions,
            generation=self.generation,
            annotations=dict(self.annotations),
            stable=self._deployment("stable"),
            canary=self._deployment("canary"),
            traffic_weight=self.weight,
            canary_config=self.configmaps.get("canary"),
            analysis=run,
            served_versions=served,
        )

    def _deployment(self, track: str) -> DeploymentState | None:
        if track not in self.replicas:
            return None
        old = self.old_pods.get(track, 0)
        # a Deployment controller's counts: readyReplicas includes old-template pods
        return DeploymentState(replicas=self.replicas[track], ready=self.ready.get(track, 0) + old,
                               updated=self.replicas[track], total=self.replicas[track] + old)

    def decide(self, analysis: Analysis | None = GOOD) -> Decision:
        return decide(self.spec(), self.status, self.observe(analysis), self.now)

    def apply(self, decision: Decision, status: bool = True, children: bool = True) -> None:
        """What the reconciler does with a decision; a crash is a partial apply."""
        for key in decision.remove_before:
            self.annotations.pop(key, None)
        if status:
            self.status = copy.deepcopy(decision.status)
        if children:
            for action in decision.actions:
                if isinstance(action, SetWeight):
                    if action.weight > (self.weight or 0):
                        self.weight_raises.append((action.weight, self.ready.get("canary", 0)))
                    self.weight = action.weight
                    self.weights_seen.append(action.weight)
                elif isinstance(action, EnsureConfigMap):
                    self.configmaps[action.track] = action.model
                elif isinstance(action, EnsureDeployment):
                    track = action.track
                    previous = self.templates.get(track)
                    self.replicas[track] = action.replicas
                    self.templates[track] = action.template
                    if (track, action.template.image) in self.broken:
                        if previous is not None and previous != action.template:
                            # a rolling update that never completes: the old pods keep running
                            self.old_pods[track] = self.ready.get(track, 0) or self.old_pods.get(track, 0)
                        self.ready[track] = 0
                    elif self.pods_start:
                        starts = self.pod_starts.setdefault(track, [])
                        del starts[action.replicas:]  # a scale-down takes the newest (unready) pods first
                        starts.extend([self.now] * (action.replicas - len(starts)))
                        self._mature(track)
                        self.old_pods.pop(track, None)
                    self.capacity_seen.append(self.ready.get("stable", 0) + self.ready.get("canary", 0))
                    self.pods_seen.append(sum(self.replicas.values()))
            if status:
                for key in decision.remove_after:
                    self.annotations.pop(key, None)

    def _mature(self, track: str) -> None:
        if track in self.pod_starts:
            self.ready[track] = sum(1 for started in self.pod_starts[track]
                                    if (self.now - started).total_seconds() >= self.start_seconds)

    def tick(self, seconds: float = 0.0, analysis: Analysis | None = GOOD) -> Decision:
        self.now += datetime.timedelta(seconds=seconds)
        for track in list(self.pod_starts):
            if (track, self.templates[track].image) not in self.broken and self.pods_start:
                self._mature(track)
        decision = self.decide(analysis)
        self.apply(decision)
        self.decisions.append(decision)
        return decision

    def run(self, until: Callable[["World"], bool], analysis: Analysis | None = GOOD, step: float = 10.0,
            limit: int = 500) -> None:
        """Tick like the daemon does (at once when asked, else every `step` s) until `until`."""
        wait = 0.0
        for _ in range(limit):
            if until(self):
                return
            decision = self.tick(wait, analysis)
            wait = 0.0 if decision.requeue_after == 0 else step
        raise AssertionError(f"never reached the condition; status: {self.status}")

    @property
    def phase(self) -> str:
        return str(self.status.get("phase"))

    def set_server(self, **server: Any) -> None:
        self.raw_spec = copy.deepcopy(self.raw_spec)
        self.raw_spec["server"] = {**self.raw_spec["server"], **server}
        self.generation += 1

    def set_spec_version(self, version: str) -> None:
        self.raw_spec = copy.deepcopy(self.raw_spec)
        self.raw_spec["model"] = {"name": "paraformer-tiny", "version": version, "path": f"paraformer-tiny/{version}"}
        self.generation += 1


def settled(world: World) -> World:
    """A world whose first version v1 is serving (phase Succeeded)."""
    world.run(lambda w: w.phase == "Succeeded")
    return world


def canary_world(steps: list[dict[str, Any]] | None = None, traffic: str = "gatewayAPI", start: bool = True,
                 **kwargs: Any) -> World:
    """v1 serving, spec bumped to v2; with `start` the canary has started (phase Progressing)."""
    world = settled(World(rollout_spec("v1", steps, traffic, **kwargs)))
    world.set_spec_version("v2")
    if start:
        world.tick()
        assert world.phase == "Progressing"
    return world


def condition(world: World, kind: str) -> dict[str, Any]:
    for item in world.status.get("conditions") or []:
        if item["type"] == kind:
            return dict(item)
    raise AssertionError(f"no condition {kind}: {world.status.get('conditions')}")


def history(world: World) -> list[tuple[str, str]]:
    return [(entry["version"], entry["outcome"]) for entry in world.status.get("history") or []]


# --- first version ------------------------------------------------------------------------

def test_first_version_is_pending_until_stable_pods_are_ready() -> None:
    world = World(rollout_spec("v1"), pods_start=False)
    world.tick()
    assert world.phase == "Pending"
    assert world.configmaps["stable"].version == "v1" and world.configmaps["canary"].version == "v1"
    assert world.replicas == {"stable": 2, "canary": 0} and world.weight == 0
    world.ready["stable"] = 2
    world.tick(5)
    assert world.phase == "Succeeded"
    assert history(world) == [("v1", "Promoted")]
    assert condition(world, "Available")["status"] == "True"


def test_first_version_never_ready_fails_at_the_deadline_and_a_spec_change_restarts() -> None:
    world = World(rollout_spec("v1"), pods_start=False)
    world.tick()
    world.tick(301)
    assert world.phase == "Failed"
    assert condition(world, "Progressing")["reason"] == "ProgressDeadlineExceeded"
    world.tick(60)
    assert world.phase == "Failed"  # nothing changed: stays failed
    world.set_spec_version("v1b")
    world.tick(1)
    assert world.phase == "Pending" and world.configmaps["stable"].version == "v1b"


# --- happy path ---------------------------------------------------------------------------

def test_happy_path_steps_weights_then_promotion_by_hot_reload() -> None:
    world = canary_world(start=False)
    world.tick()
    assert world.phase == "Progressing"
    assert world.configmaps["canary"].version == "v2" and world.configmaps["stable"].version == "v1"
    assert world.replicas["canary"] == 1  # weight 0: one canary pod (at least one while a canary exists)
    world.run(lambda w: w.phase == "Succeeded")
    # weights only ever went up through the steps, then back to 0 after the promotion
    distinct = [w for i, w in enumerate(world.weights_seen) if i == 0 or world.weights_seen[i - 1] != w]
    assert distinct == [0, 10, 50, 100, 0]
    assert world.configmaps["stable"].version == "v2" and world.configmaps["canary"].version == "v2"
    assert world.replicas == {"stable": 2, "canary": 0} and world.weight == 0
    assert history(world) == [("v1", "Promoted"), ("v2", "Promoted")]
    assert world.status["stableVersion"] == "v2" and world.status.get("canaryVersion") is None
    reasons = [e.reason for d in world.decisions for e in d.events]
    assert reasons.count("SetWeight") == 3 and "Promoting" in reasons and "Promoted" in reasons
    # the stable Deployment's pod template never changed: the promotion restarted no pod
    stable_deployments = {a for d in world.decisions for a in d.actions
                          if type(a).__name__ == "EnsureDeployment" and a.track == "stable"}
    assert {a.replicas for a in stable_deployments} == {2}


def test_pause_duration_is_respected() -> None:
    world = canary_world(steps=[{"setWeight": 10}, {"pause": {"duration": "5m"}}, {"setWeight": 100}])
    world.tick()
    world.tick(30)
    assert world.status["canaryWeight"] == 10
    for _ in range(8):  # 4 minutes of good analyses: still pausing
        world.tick(30)
    assert world.status["canaryWeight"] == 10 and world.status["currentStep"] == 1
    world.run(lambda w: w.status.get("canaryWeight") == 100)


def test_promotion_waits_until_stable_pods_serve_the_new_version() -> None:
    world = canary_world(steps=[{"setWeight": 100}])
    world.served = {"v1": 2}
    world.run(lambda w: w.phase == "Promoting")
    assert world.configmaps["stable"].version == "v2"  # the hot reload was asked for
    for _ in range(5):
        world.tick(10)
    assert world.phase == "Promoting" and world.weight == 100
    world.served = {"v1": 1, "v2": 1}
    world.tick(10)
    assert world.phase == "Promoting"
    world.served = {"v2": 2}
    world.tick(10)
    assert world.phase == "Succeeded" and world.weight == 0 and world.replicas["canary"] == 0


def test_promotion_that_never_serves_rolls_back_and_reverts_the_stable_configmap() -> None:
    world = canary_world(steps=[{"setWeight": 100}])
    world.served = {"v1": 2}
    world.run(lambda w: w.phase == "Promoting")
    world.tick(301)
    assert world.phase == "RollingBack"
    assert world.configmaps["stable"].version == "v1" and world.configmaps["canary"].version == "v1"
    assert world.weight == 0 and world.replicas["canary"] == 0
    world.tick()
    assert world.phase == "RolledBack"
    assert condition(world, "Progressing")["reason"] == "PromotionTimedOut"


# --- rollback -----------------------------------------------------------------------------

def test_failures_reaching_the_limit_roll_back_in_the_same_tick() -> None:
    world = canary_world()
    world.tick()
    world.tick(0)
    assert world.status["canaryWeight"] == 10
    world.tick(30, BAD)
    assert world.phase == "Progressing" and world.status["counters"]["failed"] == 1
    decision = world.decide(BAD)  # 0 s later: not due yet, nothing measured
    assert decision.status["counters"]["failed"] == 1
    world.now += datetime.timedelta(seconds=30)
    decision = world.decide(BAD)
    assert decision.status["phase"] == "RollingBack"
    kinds = [type(a).__name__ for a in decision.actions]
    assert kinds.index("SetWeight") < kinds.index("EnsureConfigMap")  # traffic away first
    assert SetWeight(0) in decision.actions
    assert EnsureConfigMap("canary", ModelRef("paraformer-tiny", "v1", "paraformer-tiny/v1")) in decision.actions
    assert any(isinstance(a, EnsureDeployment) and a.track == "canary" and a.replicas == 0 for a in decision.actions)
    world.apply(decision)
    world.tick()
    assert world.phase == "RolledBack"
    assert world.status["failedVersion"] == "v2"
    assert history(world)[-1] == ("v2", "RolledBack")
    assert condition(world, "Progressing")["reason"] == "AnalysisFailed"
    assert "error-rate" in condition(world, "Progressing")["message"]
    assert any(e.reason == "RollingBack" and e.type == "Warning" for e in decision.events)


def test_a_failed_version_is_not_retried_until_the_spec_changes_or_retry() -> None:
    world = canary_world()
    world.run(lambda w: w.phase == "RolledBack", analysis=BAD)
    for _ in range(10):
        world.tick(60, GOOD)
    assert world.phase == "RolledBack" and world.weight == 0 and world.replicas["canary"] == 0
    world.annotations["asr.rollout.dev/retry"] = "true"
    decision = world.tick()
    assert "asr.rollout.dev/retry" in decision.remove_before
    assert world.phase == "Progressing" and world.status["canaryVersion"] == "v2"
    world.run(lambda w: w.phase == "Succeeded")
    # and a spec change after a rollback starts the new version at once
    world2 = canary_world()
    world2.run(lambda w: w.phase == "RolledBack", analysis=BAD)
    world2.set_spec_version("v3")
    world2.tick()
    assert world2.phase == "Progressing" and world2.status["canaryVersion"] == "v3"


def test_canary_never_ready_rolls_back_at_the_progress_deadline() -> None:
    world = canary_world(start=False)
    world.pods_start = False
    world.tick()
    assert world.phase == "Progressing" and world.weight == 0
    for _ in range(29):
        world.tick(10)
    assert world.phase == "Progressing" and world.weight == 0  # no traffic to unready pods
    world.tick(11)
    assert world.phase == "RollingBack"
    assert condition(world, "Progressing")["reason"] == "ProgressDeadlineExceeded"


# --- no data, no promotion ----------------------------------------------------------------

def test_inconclusive_pauses_at_weight_zero_and_never_promotes() -> None:
    world = canary_world()
    world.run(lambda w: w.phase == "Paused", analysis=QUIET)
    assert condition(world, "Paused")["reason"] == "InconclusiveLimit"
    assert world.status["counters"]["inconclusive"] == 3
    assert world.weight == 0 and world.status["canaryWeight"] == 0  # no unjudged canary with traffic
    for _ in range(50):
        world.tick(30, QUIET)
    assert world.phase == "Paused" and world.status["stableVersion"] == "v1" and world.weight == 0
    assert world.configmaps["stable"].version == "v1"


def test_prometheus_down_pauses_at_weight_zero_and_never_promotes() -> None:
    world = canary_world()
    world.run(lambda w: w.phase == "Paused", analysis=DOWN)
    assert condition(world, "Paused")["reason"] == "AnalysisErrors"
    assert world.weight == 0 and "weight 10% -> 0" in world.status["message"]
    for _ in range(50):
        world.tick(30, DOWN)
    assert world.phase == "Paused" and world.configmaps["stable"].version == "v1" and world.weight == 0


@pytest.mark.parametrize("limit,analysis,reason", [
    ("onInconclusive", QUIET, "InconclusiveLimit"), ("onError", DOWN, "AnalysisErrors")])
def test_the_spec_may_choose_rollback_over_a_pause(limit: str, analysis: Analysis, reason: str) -> None:
    world = canary_world(**{limit: "rollback"})
    world.run(lambda w: w.phase == "RolledBack", analysis=analysis)
    assert condition(world, "Progressing")["reason"] == reason
    assert f"spec.analysis.{limit}: rollback" in condition(world, "Progressing")["message"]
    assert "Paused" not in [d.status.get("phase") for d in world.decisions]
    assert world.weight == 0 and world.status.get("failedVersion") == "v2"


def test_resume_restores_the_step_weight_and_judges_it_again_from_a_fresh_analysis() -> None:
    world = canary_world(steps=[{"setWeight": 25}, {"setWeight": 100}])
    world.run(lambda w: w.phase == "Paused", analysis=DOWN)
    assert world.weight == 0
    world.annotations["asr.rollout.dev/retry"] = "true"
    world.tick(0, GOOD)
    assert world.phase == "Progressing" and world.weight == 25
    assert "25% restored" in world.status["message"]
    world.tick(10, GOOD)  # too early for an analysis taken entirely at 25%
    assert world.weight == 25 and world.status["currentStep"] == 1
    world.run(lambda w: w.weight == 100, analysis=GOOD)
    world.run(lambda w: w.phase == "Succeeded")


def test_manual_pause_reaching_the_inconclusive_limit_drops_to_weight_zero() -> None:
    """A `pause: {}` step waits for a person, but its canary is still judged: once it cannot be
    (old code: paused with 20% forever, unobserved), it holds weight 0 like any analysis pause."""
    world = canary_world(steps=[{"setWeight": 20}, {"pause": {}}, {"setWeight": 100}])
    world.run(lambda w: w.phase == "Paused")
    assert condition(world, "Paused")["reason"] == "ManualPause" and world.weight == 20
    world.run(lambda w: condition(w, "Paused")["reason"] == "InconclusiveLimit", analysis=QUIET, step=30)
    assert world.phase == "Paused" and world.weight == 0
    world.annotations["asr.rollout.dev/promote"] = "true"  # resumes the analysis pause, weight back
    world.tick(0)
    assert world.weight == 20 and world.phase == "Progressing"
    world.run(lambda w: w.phase == "Paused")  # judged again, then back to the person's pause
    assert condition(world, "Paused")["reason"] == "ManualPause" and world.weight == 20
    world.annotations["asr.rollout.dev/promote"] = "true"
    world.run(lambda w: w.phase == "Succeeded")


def test_manual_pause_is_entered_only_with_a_judged_canary() -> None:
    world = canary_world(steps=[{"setWeight": 20}, {"pause": {}}, {"setWeight": 100}])
    for _ in range(2):
        world.tick(30, QUIET)
    assert world.phase == "Progressing" and world.status["currentStep"] == 1 and world.weight == 20
    world.run(lambda w: w.phase == "Paused")
    assert world.status["analysis"]["outcome"] == "Successful"


def test_missing_measurements_never_open_the_gate() -> None:
    """The analysis never runs at all (e.g. every tick failed before measuring): no promotion."""
    world = canary_world(steps=[{"setWeight": 100}])
    for _ in range(100):
        world.tick(30, analysis=None)
    assert world.phase == "Progressing" and world.configmaps["stable"].version == "v1"


def test_a_pass_measured_before_the_last_weight_change_does_not_count() -> None:
    world = canary_world(steps=[{"setWeight": 10}, {"setWeight": 100}])
    world.run(lambda w: w.status.get("canaryWeight") == 100)
    decision = world.tick(0)  # the pass at 10% opened the way to 100%, not to promotion
    assert world.phase == "Progressing", decision.status


@pytest.mark.parametrize("traffic", ["gatewayAPI", "replicaRatio"])
def test_consecutive_set_weights_are_each_held_until_judged_at_that_weight(traffic: str) -> None:
    """[10, 50, 100] without pauses: each weight is written, and left only after a Successful
    analysis whose whole window lies at that weight (old code: 0 -> 100 in one tick)."""
    world = canary_world(steps=[{"setWeight": 10}, {"setWeight": 50}, {"setWeight": 100}], traffic=traffic,
                         window="1m")
    runs: list[tuple[int, float]] = []  # (weight, seconds since it was set) per analysis

    def judged() -> tuple[Measurement, ...]:
        set_at = datetime.datetime.fromisoformat(str(world.status["weightSetAt"]).replace("Z", "+00:00"))
        runs.append((int(world.status["canaryWeight"]), (world.now - set_at).total_seconds()))
        return GOOD()

    world.run(lambda w: w.phase == "Succeeded", analysis=judged)
    assert [w for w in dict.fromkeys(world.weights_seen) if w] == [10, 50, 100]
    assert {weight for weight, _ in runs} == {10, 50, 100}
    assert all(since >= 60 for _, since in runs), runs  # each window (1m) entirely at its weight


def test_a_weight_is_not_left_while_its_analysis_is_inconclusive() -> None:
    world = canary_world(steps=[{"setWeight": 10}, {"setWeight": 50}, {"setWeight": 100}])
    for _ in range(2):  # under inconclusiveLimit (3)
        world.tick(30, QUIET)
    assert world.weight == 10 and world.status["currentStep"] == 1


def test_first_analysis_at_a_new_weight_waits_one_interval_for_canary_traffic() -> None:
    """Measured the moment a weight is set, the canary has had no traffic: every metric would be
    Inconclusive and count toward a pause before the canary had a chance."""
    world = canary_world()  # 10%, pause 1m, 50%, ...
    world.run(lambda w: w.status.get("canaryWeight") == 10, analysis=None)
    calls: list[float] = []

    def counted() -> tuple[Measurement, ...]:
        calls.append(1.0)
        return QUIET()

    world.tick(0, counted)
    world.tick(29, counted)
    assert calls == [] and world.status["counters"]["inconclusive"] == 0
    decision = world.tick(1, counted)
    assert len(calls) == 1 and world.status["counters"]["inconclusive"] == 1, decision.status


def test_a_manual_pause_still_rolls_back_on_failures() -> None:
    world = canary_world(steps=[{"setWeight": 20}, {"pause": {}}, {"setWeight": 100}])
    world.run(lambda w: w.phase == "Paused")
    world.run(lambda w: w.phase == "RolledBack", analysis=BAD)


def test_promote_resumes_an_analysis_pause_with_counters_reset() -> None:
    world = canary_world()
    world.run(lambda w: w.phase == "Paused", analysis=QUIET)
    world.annotations["asr.rollout.dev/promote"] = "true"
    world.tick()
    assert world.phase == "Progressing" and world.status["counters"]["inconclusive"] == 0
    assert "asr.rollout.dev/promote" not in world.annotations
    world.run(lambda w: w.phase == "Succeeded")


def test_retry_resumes_an_error_pause() -> None:
    world = canary_world()
    world.run(lambda w: w.phase == "Paused", analysis=DOWN)
    world.annotations["asr.rollout.dev/retry"] = "true"
    world.tick()
    assert world.phase == "Progressing" and world.status["counters"]["errors"] == 0


# --- manual control -----------------------------------------------------------------------

def test_manual_pause_waits_for_promote() -> None:
    world = canary_world(steps=[{"setWeight": 20}, {"pause": {}}, {"setWeight": 100}])
    world.run(lambda w: w.phase == "Paused")
    assert condition(world, "Paused")["reason"] == "ManualPause"
    for _ in range(20):
        world.tick(30)
    assert world.phase == "Paused" and world.weight == 20
    world.annotations["asr.rollout.dev/promote"] = "true"
    world.tick()
    # 100% needs both canary pods: they are asked for first, the weight follows once they are ready
    assert world.status["currentStep"] >= 2 and world.weight == 20 and world.status["pendingWeight"] == 100
    assert world.replicas["canary"] == 2
    world.tick()
    assert world.weight == 100 and world.status.get("pendingWeight") is None
    world.run(lambda w: w.phase == "Succeeded")


def test_manual_pause_without_analysis_is_gated_by_a_person_only() -> None:
    world = canary_world(steps=[{"setWeight": 50}, {"pause": {}}], analysis=False)
    world.run(lambda w: w.phase == "Paused", analysis=None)
    world.annotations["asr.rollout.dev/promote"] = "true"
    world.run(lambda w: w.phase == "Succeeded", analysis=None)


def test_abort_rolls_back() -> None:
    world = canary_world()
    world.tick()
    world.tick(0)
    world.annotations["asr.rollout.dev/abort"] = "true"
    decision = world.tick()
    assert decision.remove_before == ("asr.rollout.dev/abort",)
    assert world.phase == "RollingBack" and world.weight == 0
    assert world.configmaps["canary"].version == "v1"
    world.tick()
    assert world.phase == "RolledBack" and condition(world, "Progressing")["reason"] == "Aborted"


def test_abort_with_nothing_running_is_ignored_with_a_warning() -> None:
    world = settled(World(rollout_spec("v1")))
    world.annotations["asr.rollout.dev/abort"] = "true"
    decision = world.tick()
    assert world.phase == "Succeeded" and "asr.rollout.dev/abort" not in world.annotations
    assert [e.reason for e in decision.events] == ["AbortIgnored"]


def test_rollback_to_a_version_from_history() -> None:
    world = canary_world(steps=[{"setWeight": 100}])
    world.run(lambda w: w.phase == "Succeeded")
    world.annotations["asr.rollout.dev/rollback-to"] = "v1"
    world.tick()
    assert world.phase == "RolledBack" and world.configmaps["stable"].version == "v1"
    assert world.status["stableVersion"] == "v1" and history(world)[-1] == ("v2", "RolledBack")
    for _ in range(5):  # the spec still names v2: it is not rolled forward again by itself
        world.tick(30)
    assert world.configmaps["stable"].version == "v1" and world.phase == "RolledBack"


def test_rollback_to_an_unknown_version_changes_nothing() -> None:
    world = settled(World(rollout_spec("v1")))
    world.annotations["asr.rollout.dev/rollback-to"] = "v9"
    decision = world.tick()
    assert world.phase == "Succeeded" and world.configmaps["stable"].version == "v1"
    assert decision.events[0].reason == "RollbackToIgnored" and "v9" in decision.events[0].message


def test_rollback_to_during_a_canary_rolls_the_canary_back_first() -> None:
    world = canary_world()
    world.tick()
    world.annotations["asr.rollout.dev/rollback-to"] = "v1"
    world.tick()
    assert world.weight == 0 and world.configmaps["canary"].version == "v1"
    assert world.phase == "RollingBack"


# --- alerts -------------------------------------------------------------------------------

def alert(fingerprint: str = "f1", starts: str = "2026-01-01T12:00:10Z", track: str | None = None) -> str:
    """The annotation the webhook writes (startsAt by default: when canary_world's canary started)."""
    body = {"alertname": "ASRCanaryHighErrorRate", "fingerprint": fingerprint, "startsAt": starts,
            "summary": "5xx over 5%"}
    if track is not None:
        body["track"] = track
    return json.dumps(body)


def test_alert_during_a_canary_rolls_back_and_a_repeat_is_a_no_op() -> None:
    world = canary_world()
    world.tick()
    world.tick(0)
    world.annotations["asr.rollout.dev/alert"] = alert()
    decision = world.tick()
    assert decision.remove_after == ("asr.rollout.dev/alert",) and not decision.remove_before
    assert world.phase == "RollingBack" and world.weight == 0
    assert world.status["lastAlert"]["fingerprint"] == "f1"
    assert condition(world, "Alert")["status"] == "True"
    world.tick()
    world.annotations["asr.rollout.dev/alert"] = alert()  # Alertmanager repeats
    decision = world.tick()
    assert decision.events == () and world.phase == "RolledBack"


def test_alert_after_promotion_within_the_window_reverts_stable() -> None:
    world = canary_world(steps=[{"setWeight": 100}])
    world.run(lambda w: w.phase == "Succeeded")
    world.annotations["asr.rollout.dev/alert"] = alert("f2", "2026-01-01T12:01:00Z")
    world.tick(60)
    assert world.phase == "RolledBack" and world.configmaps["stable"].version == "v1"
    assert history(world)[-1] == ("v2", "RolledBack")
    world.tick(60)
    assert world.configmaps["stable"].version == "v1"  # v2 is not rolled forward again


def test_alert_outside_the_window_is_recorded_and_ignored() -> None:
    world = canary_world(steps=[{"setWeight": 100}])
    world.run(lambda w: w.phase == "Succeeded")
    world.annotations["asr.rollout.dev/alert"] = alert("f3")
    decision = world.tick(601)
    assert world.phase == "Succeeded" and world.configmaps["stable"].version == "v2"
    assert "ignored" in decision.events[0].message
    assert world.status["lastAlert"]["fingerprint"] == "f3"


def test_a_new_firing_episode_of_the_same_alert_acts_again() -> None:
    world = canary_world(steps=[{"setWeight": 100}])
    world.annotations["asr.rollout.dev/alert"] = alert("f5", "2026-01-01T12:00:20Z")
    world.run(lambda w: w.phase == "RolledBack")
    assert world.status["lastAlert"] == json.loads(alert("f5", "2026-01-01T12:00:20Z"))
    world.set_spec_version("v3")
    world.run(lambda w: w.phase == "Succeeded")
    world.annotations["asr.rollout.dev/alert"] = alert("f5", "2026-01-01T13:00:00Z")  # fires again later
    world.tick(10)
    assert world.phase == "RolledBack" and world.configmaps["stable"].version == "v1"


def _alert_reasons(world: World) -> list[str]:
    return [e.message for d in world.decisions for e in d.events if e.reason == "AlertReceived"]


def test_two_alerts_interleaved_across_two_canaries_act_once_each() -> None:
    """Alertmanager sends A, then B, then repeats A and B on every repeat_interval. Old code
    compared a repeat only with the last alert: A's repeat rolled back the next, unrelated canary.
    The startsAt values here are ahead of the operator's clock (Prometheus' clock may be), so
    only remembering what was acted on stops the repeat."""
    world = canary_world()
    a = alert("A", "2026-01-01T18:00:00Z")
    b = alert("B", "2026-01-01T18:00:05Z", track="canary")
    world.annotations["asr.rollout.dev/alert"] = a
    world.tick(10)
    assert world.phase == "RollingBack" and "canary rolled back" in _alert_reasons(world)[-1]
    world.annotations["asr.rollout.dev/alert"] = b
    world.tick(10)
    assert "recorded only: no canary running" in _alert_reasons(world)[-1]
    world.set_spec_version("v3")
    world.run(lambda w: w.status.get("canaryWeight") == 10)
    events = len(_alert_reasons(world))
    for repeat in (a, b, a, b):
        world.annotations["asr.rollout.dev/alert"] = repeat
        world.tick(10)
        assert world.phase == "Progressing" and "asr.rollout.dev/alert" not in world.annotations
    assert len(_alert_reasons(world)) == events  # nothing acted, nothing announced
    world.run(lambda w: w.phase == "Succeeded")
    assert world.status["stableVersion"] == "v3"


def test_alerts_remembered_are_bounded() -> None:
    world = canary_world(steps=[{"setWeight": 20}, {"pause": {}}])
    world.raw_spec["rollback"] = {"onAlert": False}
    for index in range(50):
        world.annotations["asr.rollout.dev/alert"] = alert(f"f{index}")
        world.tick(1)
    assert len(world.status["alertsSeen"]) == 32
    assert world.status["alertsSeen"][-1]["fingerprint"] == "f49"


def test_an_alert_that_started_before_the_canary_never_rolls_it_back() -> None:
    world = canary_world()
    world.run(lambda w: w.status.get("canaryWeight") == 10)
    world.annotations["asr.rollout.dev/alert"] = alert("old", "2026-01-01T11:59:00Z")
    world.tick(5)
    assert world.phase == "Progressing" and "before canary v2 started" in condition(world, "Alert")["message"]


@pytest.mark.parametrize("track,acts", [("canary", True), ("", True), ("stable", False), ("gpu", False)])
def test_alert_track_during_a_canary(track: str, acts: bool) -> None:
    """Old code ignored the track: a stable-track alert rolled back an innocent canary."""
    world = canary_world()
    world.run(lambda w: w.status.get("canaryWeight") == 10)
    world.annotations["asr.rollout.dev/alert"] = alert("t", "2026-01-01T12:00:30Z", track=track or None)
    world.tick(5)
    assert (world.phase == "RollingBack") is acts
    assert condition(world, "Alert")["status"] == "True"  # recorded either way
    if not acts:
        assert "recorded only" in condition(world, "Alert")["message"] and world.weight == 10


@pytest.mark.parametrize("track,reverts", [("stable", True), ("", True), ("canary", False)])
def test_alert_track_after_a_promotion(track: str, reverts: bool) -> None:
    world = canary_world(steps=[{"setWeight": 100}])
    world.run(lambda w: w.phase == "Succeeded")
    world.annotations["asr.rollout.dev/alert"] = alert("s", "2026-01-01T12:05:00Z", track=track or None)
    world.tick(300)
    assert (world.configmaps["stable"].version == "v1") is reverts
    assert (world.phase == "RolledBack") is reverts


def test_a_stable_alert_outside_the_window_is_recorded_and_changes_nothing() -> None:
    world = canary_world(steps=[{"setWeight": 100}])
    world.run(lambda w: w.phase == "Succeeded")
    world.annotations["asr.rollout.dev/alert"] = alert("s", "2026-01-01T12:20:00Z", track="stable")
    decision = world.tick(1200)
    assert world.phase == "Succeeded" and world.configmaps["stable"].version == "v2"
    assert [e.reason for e in decision.events] == ["AlertReceived"] and condition(world, "Alert")["status"] == "True"


def test_a_stable_alert_that_started_before_the_promotion_does_not_revert_it() -> None:
    world = canary_world(steps=[{"setWeight": 100}])
    world.run(lambda w: w.phase == "Succeeded")
    world.annotations["asr.rollout.dev/alert"] = alert("s", "2026-01-01T12:00:11Z", track="stable")
    world.tick(60)
    assert world.phase == "Succeeded" and "before the promotion" in condition(world, "Alert")["message"]


def test_alert_and_healthy_of_a_finished_rollback_do_not_linger_on_the_next_canary() -> None:
    world = canary_world()
    world.annotations["asr.rollout.dev/alert"] = alert()
    world.run(lambda w: w.phase == "RolledBack")
    assert condition(world, "Alert")["status"] == "True" and condition(world, "Healthy")["status"] == "False"
    world.set_spec_version("v3")
    world.tick()
    assert world.phase == "Progressing"
    assert condition(world, "Alert")["status"] == "False"
    assert (condition(world, "Healthy")["status"], condition(world, "Healthy")["reason"]) == ("Unknown", "NotJudgedYet")


def test_a_garbled_alert_annotation_is_ignored_and_removed() -> None:
    world = canary_world()
    world.annotations["asr.rollout.dev/alert"] = "not json"
    decision = world.tick()
    assert world.phase == "Progressing" and "asr.rollout.dev/alert" not in world.annotations
    assert decision.events[0].reason == "AlertIgnored"


def test_spec_change_while_promoting_lets_the_promotion_finish_first() -> None:
    world = canary_world(steps=[{"setWeight": 100}])
    world.served = {"v1": 2}
    world.run(lambda w: w.phase == "Promoting")
    world.set_spec_version("v3")
    world.served = {"v2": 2}
    world.tick(5)
    assert world.phase == "Succeeded" and world.status["stableVersion"] == "v2"
    world.served = None
    world.tick()
    assert world.phase == "Progressing" and world.status["canaryVersion"] == "v3"


def test_alerts_are_ignored_when_on_alert_is_false() -> None:
    world = canary_world()
    world.raw_spec["rollback"] = {"onAlert": False}
    world.tick()
    world.annotations["asr.rollout.dev/alert"] = alert()
    world.tick()
    assert world.phase == "Progressing"


# --- spec changes -------------------------------------------------------------------------

def test_spec_change_mid_rollout_supersedes_the_canary() -> None:
    world = canary_world()
    world.run(lambda w: w.status.get("canaryWeight") == 50)
    world.set_spec_version("v3")
    decision = world.tick()
    assert decision.actions[1] == SetWeight(0)  # traffic off the old canary before its ConfigMap changes
    assert world.status["canaryVersion"] == "v3" and world.status["currentStep"] in (0, 1)
    assert world.configmaps["canary"].version == "v3"
    assert [e.reason for e in decision.events][:2] == ["Superseded", "CanaryStarted"]
    world.run(lambda w: w.phase == "Succeeded")
    assert world.configmaps["stable"].version == "v3"
    assert ("v2", "Promoted") not in history(world)


def test_superseded_canary_gets_no_traffic_until_its_pods_serve_the_new_version() -> None:
    world = canary_world()
    world.run(lambda w: w.status.get("canaryWeight") == 50)
    world.canary_serves = {"v2": 2}  # the running pods still serve the old canary version
    world.set_spec_version("v3")
    for _ in range(10):
        world.tick(10)
    assert world.weight == 0 and world.status["canaryVersion"] == "v3" and world.status["currentStep"] == 0
    world.canary_serves = {"v3": 2}
    world.run(lambda w: w.status.get("canaryWeight") == 10)
    assert any(e.reason == "CanaryReloaded" for d in world.decisions for e in d.events)
    world.canary_serves = None
    world.run(lambda w: w.phase == "Succeeded")


def test_superseded_replica_ratio_canary_keeps_its_pod_until_stable_is_back_then_reloads() -> None:
    world = canary_world(traffic="replicaRatio")
    world.run(lambda w: w.status.get("canaryWeight") == 50)
    assert world.replicas == {"stable": 1, "canary": 1}
    world.canary_serves = {"v2": 1}  # the canary pod still serves v2 while it hot-reloads v3
    world.set_spec_version("v3")
    world.tick()
    # weight 0: stable back to full size first; the canary pod stays until stable's pods are ready
    assert world.replicas == {"stable": 2, "canary": 1} and world.weight == 0
    for _ in range(3):  # the next step wants that pod at 10%, but not before it serves v3
        world.tick(10)
        assert world.weight == 0 and world.status["pendingWeight"] == 10 and world.replicas["canary"] == 1
    world.canary_serves = {"v3": 1}
    world.run(lambda w: w.status.get("canaryWeight") == 10)


def test_superseded_canary_that_never_reloads_rolls_back_at_the_deadline() -> None:
    world = canary_world()
    world.run(lambda w: w.status.get("canaryWeight") == 50)
    world.canary_serves = {"v2": 2}
    world.set_spec_version("v3")
    world.run(lambda w: w.phase == "RolledBack", step=30)
    assert condition(world, "Progressing")["reason"] == "ProgressDeadlineExceeded"


def test_spec_back_to_the_stable_version_mid_rollout_drops_the_canary() -> None:
    world = canary_world()
    world.run(lambda w: w.status.get("canaryWeight") == 50)
    world.set_spec_version("v1")
    decision = world.tick()
    assert decision.actions[1] == SetWeight(0)
    world.run(lambda w: w.phase == "Succeeded")
    assert world.weight == 0 and world.replicas["canary"] == 0
    assert world.configmaps["canary"].version == "v1"
    assert history(world) == [("v1", "Promoted")]  # withdrawn, not failed
    assert world.status.get("failedVersion") is None


def test_invalid_spec_creates_nothing_and_says_which_field() -> None:
    raw = rollout_spec("v1", steps=[{"setWeight": 120}])
    world = World(raw)
    decision = world.tick()
    assert decision.actions == () and world.configmaps == {} and world.replicas == {}
    invalid = condition(world, "InvalidSpec")
    assert invalid["status"] == "True"
    assert "spec.strategy.steps[0].setWeight: 120 is over 100; use 0..100" in invalid["message"]
    assert decision.events[0].reason == "InvalidSpec"
    assert world.tick(5).events == ()  # the same problem is not re-announced every tick
    world.raw_spec = rollout_spec("v1")
    world.run(lambda w: w.phase == "Succeeded")
    assert condition(world, "InvalidSpec")["status"] == "False"


def test_invalid_spec_mid_rollout_freezes_children_and_keeps_the_phase() -> None:
    world = canary_world()
    world.run(lambda w: w.status.get("canaryWeight") == 50)
    world.raw_spec = dict(world.raw_spec, analysis={"metrics": [{"name": "bogus", "max": 1}]})
    decision = world.tick(30)
    assert decision.actions == () and world.phase == "Progressing" and world.weight == 50
    assert "unknown metric 'bogus'" in condition(world, "InvalidSpec")["message"]


def test_observed_generation_follows_the_resource() -> None:
    world = settled(World(rollout_spec("v1")))
    world.set_spec_version("v2")
    world.tick()
    assert world.status["observedGeneration"] == world.generation


# --- every change canaried: the revision is model + pod template -------------------------

def test_an_image_change_is_canaried_and_stable_keeps_its_template_until_promotion() -> None:
    """Old code: the new image went straight to every stable pod, unjudged."""
    world = settled(World(rollout_spec("v1")))
    world.set_server(image="asr:0.2")
    decision = world.tick()
    assert world.phase == "Progressing" and world.status["canaryVersion"] == "v1"
    assert world.status["canaryChanges"] == ["image asr:0.1 -> asr:0.2"]
    assert world.templates["stable"].image == "asr:0.1" and world.templates["canary"].image == "asr:0.2"
    started = [e.message for e in decision.events if e.reason == "CanaryStarted"]
    assert started and "image asr:0.1 -> asr:0.2" in started[0]
    world.run(lambda w: w.phase == "Promoting")
    assert world.templates["stable"].image == "asr:0.2"  # promotion: stable pods replaced (rolling update)
    assert "rolling update" in world.status["message"]
    world.run(lambda w: w.phase == "Succeeded")
    assert world.status["stableTemplate"]["image"] == "asr:0.2" and world.templates["canary"].image == "asr:0.2"
    last = world.status["history"][-1]
    assert (last["outcome"], last["changes"], last["template"]["image"]) == ("Promoted", ["image asr:0.1 -> asr:0.2"],
                                                                              "asr:0.2")


@pytest.mark.parametrize("server,changes", [
    ({"resources": {"limits": {"nvidia.com/gpu": 1}}}, ["resources"]),
    ({"env": [{"name": "ASR_LOAD_NICE", "value": "5"}]}, ["env"]),
    ({"image": "asr:0.3", "env": [{"name": "X", "value": "1"}]}, ["image asr:0.1 -> asr:0.3", "env"]),
    ({"podTemplate": {"spec": {"tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}]}}},
     ["podTemplate.spec.tolerations"]),
    ({"podTemplate": {"metadata": {"annotations": {"a": "b"}}}, "startupTimeout": "20m"},
     ["podTemplate.metadata.annotations", "startupTimeout"]),
])
def test_every_pod_template_change_is_canaried_and_named(server: dict[str, Any], changes: list[str]) -> None:
    world = settled(World(rollout_spec("v1")))
    world.set_server(**server)
    world.tick()
    assert world.phase == "Progressing" and world.status["canaryChanges"] == changes
    assert world.templates["stable"] == PodTemplate.from_status(world.decisions[0].status["stableTemplate"])


def test_scaling_is_not_a_revision() -> None:
    world = settled(World(rollout_spec("v1")))
    world.set_server(replicas=4)
    world.tick()
    assert world.phase == "Succeeded" and world.replicas["stable"] == 4


def test_a_model_and_image_change_together_is_one_canary_naming_both() -> None:
    world = settled(World(rollout_spec("v1")))
    world.set_spec_version("v2")
    world.set_server(image="asr:0.2")
    world.tick()
    assert world.status["canaryChanges"] == ["model v1 -> v2", "image asr:0.1 -> asr:0.2"]
    world.run(lambda w: w.phase == "Succeeded")
    assert world.configmaps["stable"].version == "v2" and world.templates["stable"].image == "asr:0.2"


def test_a_bad_image_is_rolled_back_by_its_analysis_and_never_reaches_stable() -> None:
    world = settled(World(rollout_spec("v1")))
    world.set_server(image="asr:bad")
    world.run(lambda w: w.phase == "RolledBack", analysis=BAD)
    assert world.templates["stable"].image == "asr:0.1" and world.templates["canary"].image == "asr:0.1"
    assert world.status["history"][-1]["changes"] == ["image asr:0.1 -> asr:bad"]
    for _ in range(5):  # the failed revision is not retried by itself
        world.tick(30)
    assert world.phase == "RolledBack" and world.templates["stable"].image == "asr:0.1"


def test_stable_readiness_counts_only_pods_of_the_current_template() -> None:
    """Promotion of a new template: the old pods stay ready while the new ones never do. Old
    code counted readyReplicas (old pods included) and called the promotion done."""
    world = settled(World(rollout_spec("v1", steps=[{"setWeight": 100}])))
    world.broken.add(("stable", "asr:0.2"))
    world.set_server(image="asr:0.2")
    world.run(lambda w: w.phase == "Promoting")
    for _ in range(5):
        world.tick(10)
    assert world.phase == "Promoting"
    assert world.observe(None).stable == DeploymentState(replicas=2, ready=2, updated=2, total=4)
    world.run(lambda w: w.phase in ("RolledBack", "RollingBack"), step=30)
    assert condition(world, "Progressing")["reason"] == "PromotionTimedOut"
    assert world.templates["stable"].image == "asr:0.1"  # stable back on its own template


def test_deployment_state_counts_ready_pods_of_the_current_template() -> None:
    rolling = DeploymentState(replicas=2, ready=2, updated=1, total=3)  # 1 new pod (unready), 2 old ready
    assert rolling.current_ready == 0 and not rolling.ready_for(1)
    assert DeploymentState(replicas=2, ready=3, updated=2, total=3).ready_for(2)  # 2 new ready, 1 old leaving
    assert not DeploymentState(replicas=2, ready=2, updated=2, total=2, up_to_date=False).ready_for(2)


def test_the_first_version_is_the_only_unjudged_revision() -> None:
    world = World(rollout_spec("v1"), pods_start=False)
    world.tick()
    world.set_server(image="asr:0.2")  # still starting: no stable to compare with
    world.tick()
    assert world.phase == "Pending" and world.templates["stable"].image == "asr:0.2"
    world.pods_start = True
    world.run(lambda w: w.phase == "Succeeded")
    assert world.status["history"][-1]["template"]["image"] == "asr:0.2"


def test_a_template_change_mid_canary_replaces_the_canary_pods_instead_of_reloading() -> None:
    world = canary_world()
    world.run(lambda w: w.status.get("canaryWeight") == 10)
    world.set_server(image="asr:0.2")
    world.tick()
    assert world.status["canaryVersion"] == "v2" and world.status.get("canaryReloading") is None
    assert world.templates["canary"].image == "asr:0.2" and world.templates["stable"].image == "asr:0.1"
    assert world.status["canaryChanges"] == ["model v1 -> v2", "image asr:0.1 -> asr:0.2"]
    world.run(lambda w: w.phase == "Succeeded")


def test_spec_back_to_the_stable_template_mid_canary_withdraws_it() -> None:
    world = settled(World(rollout_spec("v1")))
    world.set_server(image="asr:0.2")
    world.run(lambda w: w.status.get("canaryWeight") == 10)
    world.set_server(image="asr:0.1")
    world.run(lambda w: w.phase == "Succeeded")
    assert world.templates["canary"].image == "asr:0.1" and world.status.get("failedVersion") is None


def test_an_alert_after_a_template_promotion_reverts_the_template() -> None:
    world = settled(World(rollout_spec("v1", steps=[{"setWeight": 100}])))
    world.set_server(image="asr:0.2")
    world.tick()
    world.run(lambda w: w.phase == "Succeeded")
    world.annotations["asr.rollout.dev/alert"] = alert("f9", "2026-01-01T13:00:00Z")
    world.tick(60)
    assert world.phase == "RolledBack" and world.templates["stable"].image == "asr:0.1"
    assert world.status["stableTemplate"]["image"] == "asr:0.1"
    for _ in range(3):  # the spec still names asr:0.2: not rolled forward again by itself
        world.tick(30)
    assert world.templates["stable"].image == "asr:0.1"


def test_a_status_from_before_templates_were_recorded_starts_no_canary() -> None:
    """An operator upgrade: status has no stableTemplate; the spec's template is adopted."""
    world = settled(World(rollout_spec("v1")))
    world.status.pop("stableTemplate")
    world.tick(30)
    assert world.phase == "Succeeded" and world.status["stableTemplate"]["image"] == "asr:0.1"


# --- replica ratio ------------------------------------------------------------------------

def test_replica_ratio_scales_pods_and_says_the_weight_is_approximate() -> None:
    world = canary_world(steps=[{"setWeight": 10}, {"pause": {}}], traffic="replicaRatio")
    world.run(lambda w: w.phase == "Paused")
    assert world.replicas == {"stable": 1, "canary": 1}
    assert world.status["weightApproximate"] is True and world.status["effectiveCanaryWeight"] == 50
    world.annotations["asr.rollout.dev/promote"] = "true"
    world.run(lambda w: w.phase == "Succeeded")
    assert world.replicas == {"stable": 2, "canary": 0}


# --- canary sizing: pods follow the weight, traffic follows ready pods ----------------------

RAMP = [{"setWeight": 10}, {"pause": {"duration": "1m"}}, {"setWeight": 25}, {"pause": {"duration": "1m"}},
        {"setWeight": 50}, {"pause": {"duration": "1m"}}, {"setWeight": 100}, {"pause": {"duration": "1m"}}]


def sized_world(traffic: str = "gatewayAPI", start_seconds: float = 45.0, replicas: int = 4,
                **strategy: Any) -> World:
    """v1 serving on `replicas` pods; new pods take `start_seconds` to turn ready."""
    raw = rollout_spec("v1", RAMP, traffic)
    raw["server"]["replicas"] = replicas
    raw["strategy"].update(strategy, progressDeadlineSeconds=600)
    world = settled(World(raw))
    world.start_seconds = start_seconds
    world.pod_starts = {track: [T0 - datetime.timedelta(hours=1)] * count for track, count in world.replicas.items()}
    world.capacity_seen.clear()
    world.pods_seen.clear()
    world.set_spec_version("v2")
    return world


@pytest.mark.parametrize("weight,canary", [(0, 1), (1, 1), (10, 1), (25, 1), (26, 2), (50, 2), (75, 3), (100, 4)])
def test_gateway_canary_replicas_follow_the_weight(weight: int, canary: int) -> None:
    spec = parse_spec({**rollout_spec("v1"), "server": {"image": "asr:0.1", "replicas": 4}})
    status = {"phase": "Progressing", "canaryModel": spec.model.to_status(), "canaryWeight": weight}
    assert desired_replicas(spec, status) == (4, canary)
    fixed = parse_spec({**rollout_spec("v1"), "server": {"image": "asr:0.1", "replicas": 4},
                        "strategy": {"steps": [{"setWeight": 10}], "canaryReplicas": 2}})
    assert desired_replicas(fixed, status) == (4, 2)
    assert desired_replicas(spec, {**status, "phase": "Succeeded", "canaryModel": None}) == (4, 0)


def test_gateway_weight_is_written_only_once_the_pods_that_carry_it_are_ready() -> None:
    world = sized_world()
    world.run(lambda w: w.phase == "Succeeded" and w.status["stableVersion"] == "v2", limit=2000)
    raises = [(weight, ready) for weight, ready in world.weight_raises if weight > 0]
    assert [weight for weight, _ in raises] == [10, 25, 50, 100]
    assert all(ready >= math.ceil(4 * weight / 100) for weight, ready in raises), raises
    assert max(world.pods_seen) == 4 + 4  # replicas + ceil(replicas x max weight / 100)
    assert world.replicas == {"stable": 4, "canary": 0}  # back to replicas when done
    scaling = [e for d in world.decisions for e in d.events if e.reason == "ScalingCanary"]
    assert [e.message.split(" for ")[1].split("%")[0] for e in scaling] == ["50", "100"]


def test_a_pending_weight_survives_a_restart_and_a_pause_drops_it() -> None:
    world = sized_world()
    world.run(lambda w: w.status.get("pendingWeight") == 50, limit=2000)
    assert world.weight == 25 and world.replicas["canary"] == 2
    restarted = world.decide()  # a new operator process: the same pending weight, the same pods
    assert restarted.status["pendingWeight"] == 50
    assert [a.replicas for a in restarted.actions if isinstance(a, EnsureDeployment) and a.track == "canary"] == [2]
    world.annotations["asr.rollout.dev/abort"] = "true"
    world.run(lambda w: w.phase == "RolledBack")
    assert world.status.get("pendingWeight") is None and world.weight == 0 and world.replicas["canary"] == 0


def test_a_canary_that_never_gets_its_extra_pods_rolls_back_at_the_deadline() -> None:
    world = sized_world()
    world.run(lambda w: w.status.get("canaryWeight") == 25, limit=2000)
    world.pod_starts["canary"] = [T0 - datetime.timedelta(days=1)] * len(world.pod_starts["canary"])  # stays ready
    world.start_seconds = (world.now - T0).total_seconds() + 10_000  # no free GPU for a second canary pod
    world.run(lambda w: w.phase == "RolledBack", limit=2000)
    assert condition(world, "Progressing")["reason"] == "ProgressDeadlineExceeded"
    assert "1/2 ready" in condition(world, "Progressing")["message"]
    assert 50 not in world.weights_seen  # the weight never went ahead of the pods


def test_replica_ratio_stable_goes_down_only_once_the_canary_pods_taking_its_share_are_ready() -> None:
    """Old code: stable 2 -> 1 while the canary stayed 0/1, for as long as the rollout paused."""
    world = sized_world(traffic="replicaRatio")
    world.run(lambda w: w.phase == "Succeeded" and w.status["stableVersion"] == "v2", limit=2000)
    assert min(world.capacity_seen) >= 4, world.capacity_seen
    assert min(world.pods_seen) >= 4 and 1 in {r for d in world.decisions for a in d.actions
                                               if isinstance(a, EnsureDeployment) and a.track == "stable"
                                               for r in [a.replicas]}
    assert world.replicas == {"stable": 4, "canary": 0}


def test_replica_ratio_rollback_scales_stable_up_before_the_canary_goes() -> None:
    world = sized_world(traffic="replicaRatio")
    world.run(lambda w: w.status.get("canaryWeight") == 50, limit=2000)
    assert world.replicas == {"stable": 2, "canary": 2}
    world.annotations["asr.rollout.dev/abort"] = "true"
    decision = world.tick()
    assert world.replicas == {"stable": 4, "canary": 2}  # the canary stays until stable's pods are ready
    assert world.phase == "RollingBack"
    assert decision.requeue_after is not None and decision.requeue_after <= 2  # and is looked at again soon
    world.run(lambda w: w.phase == "RolledBack" and w.replicas["canary"] == 0, limit=2000)
    assert world.replicas == {"stable": 4, "canary": 0}
    assert min(world.capacity_seen) >= 4, world.capacity_seen


def test_dynamic_stable_scale_keeps_the_peak_within_one_and_a_half_times_replicas() -> None:
    world = sized_world(dynamicStableScale=True)
    world.run(lambda w: w.phase == "Succeeded" and w.status["stableVersion"] == "v2", limit=2000)
    assert max(world.pods_seen) == 6, world.pods_seen  # stable 2 (at 50%) + canary 4 (for 100%)
    assert min(world.capacity_seen) >= 4, world.capacity_seen
    raises = [(weight, ready) for weight, ready in world.weight_raises if weight > 0]
    assert all(ready >= math.ceil(4 * weight / 100) for weight, ready in raises), raises
    assert world.replicas == {"stable": 4, "canary": 0} and world.weight == 0


def test_dynamic_stable_scale_rollback_returns_traffic_as_stable_pods_turn_ready() -> None:
    world = sized_world(dynamicStableScale=True)
    world.run(lambda w: w.status.get("canaryWeight") == 100 and w.replicas["stable"] == 1, limit=2000)
    world.annotations["asr.rollout.dev/abort"] = "true"
    world.tick()
    assert world.phase == "RollingBack" and world.replicas["stable"] == 4
    assert world.weight == 75  # stable's one ready pod carries a quarter; the rest stays where pods are
    later = world.now + datetime.timedelta(hours=1)
    for ready, weight in ((2, 50), (3, 25), (4, 0)):
        world.pod_starts["stable"][:ready] = [world.now - datetime.timedelta(hours=1)] * ready  # turned ready
        world.tick(1)
        assert (world.weight, world.ready["stable"]) == (weight, ready)
        assert world.ready["canary"] >= 4 - ready  # canary pods stay while they carry traffic
    assert later > world.now
    world.run(lambda w: w.phase == "RolledBack" and w.replicas["canary"] == 0)
    assert world.replicas == {"stable": 4, "canary": 0}


# --- restart safety -----------------------------------------------------------------------

def _outcome(world: World) -> tuple[Any, ...]:
    return (world.phase, history(world)[-1], world.weight, world.configmaps["stable"].version,
            world.configmaps["canary"].version, dict(world.replicas), world.status.get("failedVersion"))


def _scenario(crash_at: int | None, crash_kind: str, analysis: Analysis, steps: list[dict[str, Any]]) -> World:
    """Run a canary to its end; at tick `crash_at` the operator dies after deciding: either
    before writing anything, or after the status write but before any child was changed."""
    world = canary_world(steps=steps, start=False)
    ticks = 0
    wait = 0.0
    while (ticks == 0 or world.phase not in ("Succeeded", "RolledBack")) and ticks < 400:
        world.now += datetime.timedelta(seconds=wait)
        decision = world.decide(analysis)
        if ticks == crash_at:
            if crash_kind == "after-status":
                world.apply(decision, status=True, children=False)
            # "before-anything": nothing applied at all
            restart = world.decide(analysis)  # a new process, same clock, reads the persisted status
            if crash_kind == "after-status":
                # the persisted decision is re-derived, not advanced a second time
                assert restart.status.get("currentStep") == decision.status.get("currentStep")
                assert restart.status.get("canaryWeight") == decision.status.get("canaryWeight")
                assert restart.actions == decision.actions
            decision = restart
        world.apply(decision)
        world.decisions.append(decision)
        wait = 0.0 if decision.requeue_after == 0 else 10.0
        ticks += 1
    return world


@pytest.mark.parametrize("analysis,steps", [
    (GOOD, [{"setWeight": 10}, {"pause": {"duration": "1m"}}, {"setWeight": 100}]),
    (BAD, [{"setWeight": 10}, {"pause": {"duration": "1m"}}, {"setWeight": 100}]),
], ids=["to-promotion", "to-rollback"])
@pytest.mark.parametrize("crash_kind", ["before-anything", "after-status"])
def test_killed_at_any_tick_resumes_to_the_same_outcome(analysis: Analysis, steps: list[dict[str, Any]],
                                                        crash_kind: str) -> None:
    reference = _scenario(None, crash_kind, analysis, steps)
    total = len(reference.decisions)
    assert total > 5
    phases_covered = {d.status.get("phase") for d in reference.decisions}
    for crash_at in range(total):
        world = _scenario(crash_at, crash_kind, analysis, steps)
        assert _outcome(world) == _outcome(reference), f"crash at tick {crash_at} ({crash_kind})"
        steps_applied = [e.message for d in world.decisions for e in d.events if e.reason == "SetWeight"]
        assert len(steps_applied) == len(set(steps_applied)), "a step was applied twice"
    expected = {"Progressing", "Promoting", "Succeeded"} if analysis is GOOD else {"Progressing", "RollingBack", "RolledBack"}
    assert expected <= phases_covered


def test_decide_is_deterministic_on_the_same_inputs() -> None:
    world = canary_world()
    world.run(lambda w: w.status.get("canaryWeight") == 50)
    first, second = world.decide(GOOD), world.decide(GOOD)
    assert first == second


# --- a person's pause (`asr-rollout pause` / `resume`: the asr.rollout.dev/pause annotation) -----

def test_pause_annotation_holds_the_canary_at_its_weight_until_removed() -> None:
    world = canary_world(steps=[{"setWeight": 20}, {"pause": {"duration": "1m"}}, {"setWeight": 100}])
    world.run(lambda w: w.weight == 20)
    step = world.status["currentStep"]
    world.annotations["asr.rollout.dev/pause"] = "true"
    decision = world.tick()
    assert world.phase == "Paused" and condition(world, "Paused")["reason"] == "UserPause"
    assert "asr.rollout.dev/pause" not in decision.remove_before  # it holds while set
    assert [event.reason for event in decision.events] == ["Paused"]
    for _ in range(20):  # well past the 1m pause step: nothing moves while paused
        world.tick(30)
    assert world.phase == "Paused" and world.weight == 20 and world.status["currentStep"] == step
    assert world.annotations["asr.rollout.dev/pause"] == "true"
    del world.annotations["asr.rollout.dev/pause"]
    world.tick()
    assert condition(world, "Paused")["reason"] == "Resumed" and world.phase == "Progressing"
    world.run(lambda w: w.phase == "Succeeded")


def test_a_paused_canary_is_still_judged_and_rolls_back() -> None:
    world = canary_world()
    world.run(lambda w: w.weight == 10)
    world.annotations["asr.rollout.dev/pause"] = "true"
    world.tick()
    world.run(lambda w: w.phase == "RolledBack", analysis=BAD)
    assert world.weight == 0


def test_a_person_s_pause_is_not_an_analysis_pause() -> None:
    """promote and retry resume an analysis pause; they must not lift a person's pause."""
    world = canary_world()
    world.run(lambda w: w.weight == 10)
    world.annotations["asr.rollout.dev/pause"] = "true"
    world.tick()
    world.annotations["asr.rollout.dev/retry"] = "true"
    world.tick()
    assert world.phase == "Paused" and condition(world, "Paused")["reason"] == "UserPause" and world.weight == 10


def test_a_new_canary_starts_paused_at_weight_zero_while_the_annotation_is_set() -> None:
    world = settled(World(rollout_spec("v1")))
    world.annotations["asr.rollout.dev/pause"] = "true"
    world.tick(30)
    assert world.phase == "Succeeded"  # nothing to hold without a canary
    world.set_spec_version("v2")
    for _ in range(10):
        world.tick(30)
    assert world.phase == "Paused" and world.weight == 0 and world.status["canaryVersion"] == "v2"
