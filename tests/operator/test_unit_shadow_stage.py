"""The shadow stage in the pure state machine (decide() tables on the in-memory World of
test_unit_state_machine) and in the spec: copies only at weight 0, judged before the first
weight, the stable ConfigMap's copy setting on exactly while the stage runs."""
from __future__ import annotations

from typing import Any

import pytest

from asr_operator.analysis.measure import stage_analysis
from asr_operator.analysis.verdict import FAILED, INCONCLUSIVE, SUCCESSFUL, Measurement
from asr_operator.children import configmap
from asr_operator.spec import InvalidSpec, ModelRef, parse_spec
from asr_operator.state_machine import Decision, EnsureConfigMap, EnsureDeployment
from tests.operator.test_unit_state_machine import Analysis, World, canary_world, rollout_spec

SHADOW_METRICS: list[dict[str, Any]] = [{"name": "shadow-error-rate", "max": 0.01}, {"name": "shadow-cer", "max": 0.1},
                  {"name": "error-rate", "max": 0.01}]
STEPS: list[dict[str, Any]] = [{"shadow": {"percent": 20, "duration": "2m"}}, {"setWeight": 10}, {"pause": {"duration": "1m"}},
         {"setWeight": 100}]


def shadow(phase: str, value: float | None) -> Analysis:
    return lambda: (Measurement("shadow-cer", phase, value, phase.lower()),
                    Measurement("shadow-error-rate", SUCCESSFUL, 0.0, ""))


GOOD = shadow(SUCCESSFUL, 0.02)
DRIFTS = shadow(FAILED, 0.6)  # the canary's transcripts are far from stable's
QUIET = shadow(INCONCLUSIVE, None)


def world(traffic: str = "gatewayAPI") -> World:
    return canary_world(STEPS, traffic, metrics=SHADOW_METRICS)


def stable_shadow(decision: Decision) -> int | None:
    (stable,) = [a for a in decision.actions if isinstance(a, EnsureConfigMap) and a.track == "stable"]
    return stable.shadow_percent


@pytest.mark.parametrize("traffic", ["gatewayAPI", "replicaRatio"])
def test_a_good_canary_passes_the_stage_after_its_duration_then_gets_its_first_weight(traffic: str) -> None:
    w = world(traffic)
    w.tick(0, GOOD)
    assert w.status["shadow"]["percent"] == 20 and stable_shadow(w.decisions[-1]) == 20
    assert w.status["canaryWeight"] == 0
    w.run(lambda w: int(w.status.get("canaryWeight") or 0) > 0, GOOD)
    # The weight came only after the stage's duration (2m) and an analysis inside it.
    first_weight = next(i for i, d in enumerate(w.decisions) if d.status.get("canaryWeight"))
    assert stable_shadow(w.decisions[first_weight]) is None, "copies stop when the stage ends"
    assert all(stable_shadow(d) == 20 for d in w.decisions[:first_weight] if d.status.get("shadow"))
    if traffic == "replicaRatio":  # one canary pod to copy to, and no user request reaches it
        in_stage = next(d for d in w.decisions if d.status.get("shadow"))
        assert [a.replicas for a in in_stage.actions if isinstance(a, EnsureDeployment)] == [2, 1]
        assert w.weights_seen[:first_weight] == [0] * first_weight
    assert w.status["shadow"] is None and w.status["currentStep"] == 2
    assert any(e.reason == "ShadowPassed" for d in w.decisions for e in d.events)
    w.run(lambda w: w.phase == "Succeeded", GOOD)
    assert w.configmaps["stable"].version == "v2"


def test_the_stage_is_not_left_before_its_duration_even_with_passing_analyses() -> None:
    w = world()
    w.tick(0, GOOD)
    for _ in range(11):  # 110 s of passing analyses: under the 2m duration
        w.tick(10, GOOD)
        assert w.status["canaryWeight"] == 0 and w.status["shadow"] is not None


def test_a_canary_whose_transcripts_drift_rolls_back_in_the_stage_with_no_user_traffic() -> None:
    w = world()
    w.run(lambda w: w.phase in ("RollingBack", "RolledBack"), DRIFTS)
    assert set(w.weights_seen) == {0}, "no user request ever reached the canary"
    assert "shadow-cer" in w.status["message"]
    assert w.status["shadow"] is None
    assert stable_shadow(w.decisions[-1]) is None, "the rollback stops the copies"
    w.run(lambda w: w.phase == "RolledBack", DRIFTS)
    assert w.configmaps["stable"].version == "v1"


def test_an_unjudgeable_stage_pauses_at_weight_zero_and_never_reaches_a_weight() -> None:
    w = world()
    w.run(lambda w: w.phase == "Paused", QUIET)
    for _ in range(20):
        w.tick(30, QUIET)
    assert set(w.weights_seen) == {0}


@pytest.mark.parametrize("annotation,phase", [("asr.rollout.dev/abort", "RollingBack"),
                                              ("asr.rollout.dev/promote", "Promoting")])
def test_leaving_the_stage_by_hand_stops_the_copies(annotation: str, phase: str) -> None:
    w = world()
    w.tick(0, GOOD)
    assert stable_shadow(w.decisions[-1]) == 20
    w.annotations[annotation] = "true"
    w.run(lambda w: w.phase == phase, GOOD)
    assert stable_shadow(w.decisions[-1]) is None and w.status.get("shadow") is None


def test_stable_configmap_carries_the_canary_service_address_only_in_the_stage() -> None:
    model = ModelRef(name="m", version="v1", path="m/v1")
    on = configmap("speech", "meeting", "stable", model, {"metadata": {"name": "meeting"}}, shadow_percent=20)
    off = configmap("speech", "meeting", "stable", model, {"metadata": {"name": "meeting"}})
    assert "shadow:\n  percent: 20\n  url: http://meeting-canary.speech.svc:8000\n" in on["data"]["model.yaml"]
    assert "shadow" not in off["data"]["model.yaml"]


def test_each_stage_is_judged_by_its_own_metrics() -> None:
    spec = parse_spec(rollout_spec("v2", STEPS, metrics=SHADOW_METRICS))
    assert spec.analysis is not None
    assert [m.name for m in stage_analysis(spec.analysis, True).metrics] == ["shadow-error-rate", "shadow-cer"]
    assert [m.name for m in stage_analysis(spec.analysis, False).metrics] == ["error-rate"]


@pytest.mark.parametrize("steps,metrics,problem", [
    ([{"setWeight": 10}, {"shadow": {"percent": 20, "duration": "1m"}}], SHADOW_METRICS,
     "spec.strategy.steps[1].shadow: a shadow stage runs at weight 0, before any user traffic; move it before the "
     "first setWeight (steps[0])"),
    ([{"shadow": {"percent": 20, "duration": "1m"}}, {"setWeight": 10}], [{"name": "error-rate", "max": 0.01}],
     "spec.analysis.metrics: a shadow step needs at least one shadow metric"),
    ([{"setWeight": 10}], SHADOW_METRICS, "measure a shadow stage, and no step is one"),
    ([{"shadow": {"percent": 0, "duration": "1m"}}, {"setWeight": 10}], SHADOW_METRICS,
     "spec.strategy.steps[0].shadow.percent: 0 is under 1"),
    ([{"shadow": {"percent": 20}}, {"setWeight": 10}], SHADOW_METRICS,
     "spec.strategy.steps[0].shadow.duration: is required"),
])
def test_misplaced_or_unjudged_shadow_stages_are_refused(steps: list[dict[str, Any]], metrics: list[Any],
                                                          problem: str) -> None:
    with pytest.raises(InvalidSpec) as error:
        parse_spec(rollout_spec("v2", steps, metrics=metrics))
    assert any(p.startswith(problem) or problem in p for p in error.value.problems), error.value.problems


def test_shadow_metrics_take_no_bound_against_stable() -> None:
    metrics = [{"name": "shadow-cer", "maxIncrease": 0.1}]
    with pytest.raises(InvalidSpec, match="shadow-cer has no stable-track counterpart"):
        parse_spec(rollout_spec("v2", STEPS, metrics=metrics))
