"""Relative bounds against the stable track (maxIncrease, maxRatio) for the built-in traffic
metrics: the pure verdict table, the spec checks, and one measurement run.

The measurement run uses an in-memory MetricSource (a stand-in for Prometheus in this unit test
only) that answers by track and query kind; the queries themselves are checked against
promtool in test_unit_promql.py (the stable_v1 rules).
"""
from __future__ import annotations

import math
from typing import Any

import pytest

from asr_operator.analysis import queries
from asr_operator.analysis.measure import measure
from asr_operator.analysis.prometheus_source import MetricSource, Sample
from asr_operator.analysis.relative import judge_against_stable, ratio
from asr_operator.analysis.verdict import ERROR, FAILED, INCONCLUSIVE, SUCCESSFUL, QueryFailed
from asr_operator.spec import AnalysisSpec, InvalidSpec, parse_spec

CANARY = queries.QueryScope("speech", "meeting-zh", "canary", "v2")
STABLE = queries.QueryScope("speech", "meeting-zh", "stable", "v1")


@pytest.mark.parametrize("canary, stable, bounds, phase", [
    # p99: absolute max 2.0 s, at most 1.5x stable
    (1.2, 1.0, {"maximum": 2.0, "max_ratio": 1.5}, SUCCESSFUL),
    (1.8, 1.0, {"maximum": 2.0, "max_ratio": 1.5}, FAILED),        # under max, but 1.8x stable
    (2.5, 3.0, {"maximum": 2.0, "max_ratio": 1.5}, FAILED),        # over max whatever stable does
    (1.5, 1.0, {"maximum": 2.0, "max_ratio": 1.5}, SUCCESSFUL),    # the bound itself is allowed
    # error rate: at most 0.005 over stable
    (0.012, 0.008, {"maximum": 0.05, "max_increase": 0.005}, SUCCESSFUL),
    (0.012, 0.001, {"maximum": 0.05, "max_increase": 0.005}, FAILED),
    (0.0, 0.0, {"max_ratio": 1.5}, SUCCESSFUL),                    # 0 vs 0 is a ratio of 1
    (0.001, 0.0, {"max_ratio": 1.5}, FAILED),                      # anything over a 0 stable
    (0.001, 0.0, {"max_increase": 0.005}, SUCCESSFUL),
    # no stable value: never a pass
    (0.5, None, {"max_ratio": 1.5}, INCONCLUSIVE),
    (0.5, math.nan, {"max_increase": 0.1}, INCONCLUSIVE),
    # no canary value: Inconclusive as before
    (None, 1.0, {"max_ratio": 1.5}, INCONCLUSIVE),
    # relative bounds only apply when set
    (5.0, 1.0, {"maximum": 10.0}, SUCCESSFUL),
])
def test_judge_against_stable(canary: float | None, stable: float | None, bounds: dict[str, float],
                              phase: str) -> None:
    kwargs: dict[str, Any] = {"maximum": None, "minimum": None, "max_increase": None, "max_ratio": None, **bounds}
    measurement = judge_against_stable("m", canary, stable, **kwargs)
    assert measurement.phase == phase, measurement
    if phase == FAILED and stable is not None and canary is not None:
        assert measurement.stable_value == stable  # the verdict records both values


def test_too_few_stable_requests_is_inconclusive_with_the_reason() -> None:
    m = judge_against_stable("p99-latency-seconds", 1.0, None, maximum=2.0, minimum=None, max_increase=None,
                             max_ratio=1.5, stable_unavailable="only 3 stable requests in the window")
    assert m.phase == INCONCLUSIVE and "only 3 stable requests" in m.message and m.value == 1.0


def test_messages_and_status_name_both_values() -> None:
    m = judge_against_stable("p99-latency-seconds", 0.9, 0.3, maximum=2.0, minimum=None, max_increase=None,
                             max_ratio=1.5)
    assert m.phase == FAILED
    assert "canary 0.9 vs stable 0.3" in m.message and "3x stable" in m.message and "maxRatio 1.5" in m.message
    assert m.to_status() == {"name": "p99-latency-seconds", "phase": FAILED, "message": m.message,
                             "value": 0.9, "stableValue": 0.3}


def test_ratio() -> None:
    assert ratio(3.0, 2.0) == 1.5
    assert ratio(0.0, 0.0) == 1.0
    assert ratio(0.1, 0.0) == math.inf


def spec_with(metrics: list[dict[str, Any]], min_requests: int = 20) -> AnalysisSpec:
    spec = parse_spec({
        "model": {"name": "m", "version": "v2", "path": "m/v2"}, "modelVolume": {"hostPath": {"path": "/m"}},
        "server": {"image": "i"}, "traffic": {"replicaRatio": {}}, "strategy": {"steps": [{"setWeight": 10}]},
        "analysis": {"prometheus": {"address": "http://p:9090"}, "minRequests": min_requests, "metrics": metrics},
    })
    assert spec.analysis is not None
    return spec.analysis


def test_spec_reads_relative_bounds_for_every_builtin() -> None:
    analysis = spec_with([{"name": "error-rate", "max": 0.05, "maxIncrease": 0.005},
                          {"name": "p99-latency-seconds", "maxRatio": 1.5},          # relative only: fine
                          {"name": "real-time-factor", "max": 1, "maxIncrease": 0.1, "maxRatio": 2}])
    assert [(m.kind, m.max, m.max_increase, m.max_ratio) for m in analysis.metrics] == [
        ("error-rate", 0.05, 0.005, None), ("p99-latency-seconds", None, None, 1.5),
        ("real-time-factor", 1.0, 0.1, 2.0)]


@pytest.mark.parametrize("metric, message", [
    ({"name": "p99-latency-seconds", "maxRatio": 0}, "metrics[0].maxRatio: 0 must be above 0"),
    ({"name": "p99-latency-seconds", "maxRatio": "150%"}, "metrics[0].maxRatio: must be a number"),
    ({"name": "error-rate", "maxIncrease": -0.01}, "metrics[0].maxIncrease: -0.01 is under 0"),
    ({"name": "custom", "query": "up", "maxRatio": 2}, "metrics[0].maxRatio: maxRatio (canary / stable) works for"),
    ({"name": "error-rate"}, "needs a threshold"),
])
def test_spec_refuses_bad_relative_bounds(metric: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidSpec) as error:
        spec_with([metric])
    assert any(message in problem for problem in error.value.problems), error.value.problems


class TrackSource(MetricSource):
    """Answers by track (canary/stable) and query kind; a value may be an exception to raise."""

    def __init__(self, canary: dict[str, object], stable: dict[str, object]):
        self.tracks = {"canary": canary, "stable": stable}
        self.asked: list[str] = []

    async def query(self, promql: str) -> list[Sample]:
        self.asked.append(promql)
        table = self.tracks["stable" if 'track="stable"' in promql else "canary"]
        kind = ("requests" if "increase(asr_requests_total" in promql else "p99" if "histogram_quantile" in promql
                else "error-rate" if "code=~" in promql else "rtf")
        answer = table.get(kind)
        if isinstance(answer, Exception):
            raise answer
        return [] if answer is None else [({}, float(answer))]  # type: ignore[arg-type]


P99_RELATIVE = [{"name": "p99-latency-seconds", "max": 2.0, "maxRatio": 1.5},
                {"name": "error-rate", "max": 0.05}]


async def test_a_canary_within_max_but_slower_than_stable_fails() -> None:
    source = TrackSource({"requests": 100, "p99": 0.9, "error-rate": 0.0},
                         {"requests": 400, "p99": 0.3, "error-rate": 0.0})
    p99, errors = await measure(source, spec_with(P99_RELATIVE), CANARY, STABLE)
    assert (p99.phase, p99.value, p99.stable_value) == (FAILED, 0.9, 0.3)
    assert errors.phase == SUCCESSFUL  # no relative bound: stable is not asked for it
    stable_queries = [q for q in source.asked if 'track="stable"' in q]
    assert len(stable_queries) == 2 and all('version="v1"' in q for q in stable_queries)  # requests + p99
    assert all(queries.INFERENCE_ENDPOINT_REGEX in q for q in stable_queries)


async def test_too_few_stable_requests_make_relative_metrics_inconclusive() -> None:
    source = TrackSource({"requests": 100, "p99": 0.9, "error-rate": 0.0},
                         {"requests": 5, "p99": 0.3})
    p99, errors = await measure(source, spec_with(P99_RELATIVE), CANARY, STABLE)
    assert p99.phase == INCONCLUSIVE and "only 5 stable requests" in p99.message and "minRequests 20" in p99.message
    assert errors.phase == SUCCESSFUL


async def test_no_stable_version_is_inconclusive() -> None:
    source = TrackSource({"requests": 100, "p99": 0.9}, {})
    p99, = await measure(source, spec_with(P99_RELATIVE[:1]), CANARY, None)
    assert p99.phase == INCONCLUSIVE and "no stable version" in p99.message


async def test_an_unanswerable_stable_side_is_error() -> None:
    source = TrackSource({"requests": 100, "p99": 0.9}, {"requests": QueryFailed("connection refused")})
    p99, = await measure(source, spec_with(P99_RELATIVE[:1]), CANARY, STABLE)
    assert p99.phase == ERROR and "stable side" in p99.message and "connection refused" in p99.message


async def test_a_canary_over_max_fails_without_asking_stable() -> None:
    source = TrackSource({"requests": 100, "p99": 2.5}, {"requests": QueryFailed("not needed")})
    p99, = await measure(source, spec_with(P99_RELATIVE[:1]), CANARY, STABLE)
    assert p99.phase == FAILED and "over max 2" in p99.message


async def test_relative_within_bounds_passes_with_both_values() -> None:
    source = TrackSource({"requests": 100, "p99": 0.4}, {"requests": 400, "p99": 0.3})
    p99, = await measure(source, spec_with(P99_RELATIVE[:1]), CANARY, STABLE)
    assert (p99.phase, p99.value, p99.stable_value) == (SUCCESSFUL, 0.4, 0.3)


async def test_at_weight_100_stable_serves_nothing_so_only_absolute_bounds_apply() -> None:
    """At weight 100 the stable pods get no requests: demanding stable minRequests there would
    hold every rollout with relative bounds at its last step forever (seen in the e2e story)."""
    source = TrackSource({"requests": 100, "p99": 0.9}, {"requests": 0})
    p99, = await measure(source, spec_with(P99_RELATIVE[:1]), CANARY, STABLE, stable_serves_traffic=False)
    assert p99.phase == SUCCESSFUL and "relative bounds not applied" in p99.message
    assert not [q for q in source.asked if 'track="stable"' in q]
    over, = await measure(TrackSource({"requests": 100, "p99": 2.5}, {}), spec_with(P99_RELATIVE[:1]), CANARY,
                          STABLE, stable_serves_traffic=False)
    assert over.phase == FAILED


def test_cli_status_shows_the_stable_value_next_to_the_canary_value() -> None:
    from asr_operator import cli

    m = judge_against_stable("p99-latency-seconds", 0.9, 0.3, maximum=2.0, minimum=None, max_increase=None,
                             max_ratio=1.5)
    text = cli.format_status({"metadata": {"name": "r", "namespace": "ns"},
                              "status": {"phase": "Progressing", "analysis": {"metrics": [m.to_status()]}}})
    row = next(line for line in text.splitlines() if line.strip().startswith("p99-latency-seconds"))
    assert row.split()[:4] == ["p99-latency-seconds", "Failed", "0.9", "0.3"]
