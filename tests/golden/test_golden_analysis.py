"""The operator's golden-set verdicts and spec rules (pure functions)."""
from __future__ import annotations

import math
from typing import Any

import pytest

from asr_operator.analysis import golden
from asr_operator.analysis.verdict import FAILED, INCONCLUSIVE, SUCCESSFUL
from asr_operator.spec import InvalidSpec, parse_spec


def test_golden_cer_absolute_max() -> None:
    assert golden.judge_golden_cer("g", 0.04, None, 0.05, None).phase == SUCCESSFUL
    failed = golden.judge_golden_cer("g", 0.3, None, 0.05, None)
    assert failed.phase == FAILED and failed.value == 0.3 and "over max 0.05" in failed.message


def test_golden_cer_max_increase_over_stable() -> None:
    ok = golden.judge_golden_cer("g", 0.11, 0.10, None, 0.02)
    assert ok.phase == SUCCESSFUL and "stable 0.1" in ok.message
    worse = golden.judge_golden_cer("g", 0.9, 0.0, None, 0.02)
    assert worse.phase == FAILED and "0.9 over stable's 0" in worse.message
    # better than stable is never a failure, whatever the size of the change
    assert golden.judge_golden_cer("g", 0.0, 0.5, None, 0.02).phase == SUCCESSFUL
    # the absolute max is judged first, even when stable is as bad
    assert golden.judge_golden_cer("g", 0.6, 0.6, 0.5, 0.02).phase == FAILED


@pytest.mark.parametrize("canary, stable", [(None, 0.1), (math.nan, 0.1), (0.1, None), (0.1, math.nan)])
def test_golden_cer_missing_values_are_inconclusive(canary: float | None, stable: float | None) -> None:
    measurement = golden.judge_golden_cer("g", canary, stable, 0.5, 0.02)
    assert measurement.phase == INCONCLUSIVE
    assert "no canary pod" in measurement.message or "no stable pod" in measurement.message


def test_golden_cer_without_max_increase_needs_no_stable() -> None:
    assert golden.judge_golden_cer("g", 0.1, None, 0.5, None).phase == SUCCESSFUL


def test_golden_agreement() -> None:
    assert golden.judge_golden_agreement("a", 1.0, 0.9).phase == SUCCESSFUL
    low = golden.judge_golden_agreement("a", 0.5, 0.9)
    assert low.phase == FAILED and "50.0%" in low.message
    assert golden.judge_golden_agreement("a", 0.0, 0.9).phase == FAILED   # nothing agrees: a value
    assert golden.judge_golden_agreement("a", None, 0.9).phase == INCONCLUSIVE
    assert golden.judge_golden_agreement("a", math.nan, 0.9).phase == INCONCLUSIVE


def spec_with(metrics: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "model": {"name": "paraformer-zh", "version": "v2", "path": "paraformer-zh/v2"},
        "modelVolume": {"persistentVolumeClaim": {"claimName": "asr-models"}},
        "server": {"image": "registry.example/asr:0.1.0"},
        "traffic": {"replicaRatio": {}},
        "strategy": {"steps": [{"setWeight": 50}, {"pause": {"duration": "1m"}}]},
        "analysis": {"prometheus": {"address": "http://prometheus:9090"}, "metrics": metrics},
    }


def test_spec_accepts_golden_metrics() -> None:
    spec = parse_spec(spec_with([{"name": "golden-cer", "maxIncrease": 0.02, "max": 0.3},
                                 {"name": "golden-agreement", "min": 0.9},
                                 {"name": "golden-cer", "maxIncrease": 0.05}]))
    assert spec.analysis is not None
    cer, agreement, again = spec.analysis.metrics
    assert (cer.kind, cer.max, cer.max_increase) == ("golden-cer", 0.3, 0.02)
    assert (agreement.kind, agreement.min, agreement.max_increase) == ("golden-agreement", 0.9, None)
    assert (again.name, again.max_increase) == ("golden-cer#2", 0.05)  # a repeat keeps its threshold


@pytest.mark.parametrize("metric, message", [
    ({"name": "custom", "query": "up", "maxIncrease": 0.02}, "metrics[0].maxIncrease: custom has no stable-track"),
    ({"name": "golden-agreement", "min": 0.9, "maxIncrease": 0.1}, "golden-agreement has no stable-track counterpart"),
    ({"name": "golden-cer", "maxRatio": 1.5}, "metrics[0].maxRatio: maxRatio (canary / stable) works for"),
    ({"name": "golden-cer", "maxIncrease": -0.1}, "metrics[0].maxIncrease: -0.1 is under 0"),
    ({"name": "golden-cer", "maxIncrease": "2%"}, "metrics[0].maxIncrease: must be a number"),
    ({"name": "golden-cer"}, "needs a threshold: max and/or min, or a bound against the stable track"),
    ({"name": "golden-agreement", "max": 1.0}, "golden-agreement needs min"),
    ({"name": "golden-cer", "max": 0.1, "query": "up"}, "only `custom` metrics take a query"),
])
def test_spec_refuses_bad_golden_metrics(metric: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidSpec) as error:
        parse_spec(spec_with([metric]))
    assert any(message in problem for problem in error.value.problems), error.value.problems
