"""Unit tests of the analysis: PromQL escaping and templates, verdicts, one measurement run.

The measurement run uses an in-memory MetricSource (stated where used); the real query path
against a real Prometheus is covered by tests/operator/test_operator_*.py and by promtool.
"""
from __future__ import annotations

import math

import pytest

from asr_operator.analysis import queries
from asr_operator.analysis.measure import measure, metric_query, served_versions
from asr_operator.analysis.prometheus_source import MetricSource, PrometheusSource, Sample, _parse_result
from asr_operator.analysis.verdict import (
    ERROR, FAILED, INCONCLUSIVE, SUCCESSFUL, Measurement, QueryFailed, judge, tick_outcome,
)
from asr_operator.spec import parse_spec

SCOPE = queries.QueryScope("speech", "meeting-zh", "canary", "v2")


@pytest.mark.parametrize("raw,escaped", [
    ("v1.2.0", "v1.2.0"),
    ('a"b', 'a\\"b'),
    ("a\\b", "a\\\\b"),
    ("a\nb", "a\\nb"),
    ("a\x01b", "a\\x01b"),
    ('x"} or vector(1) or {"', 'x\\"} or vector(1) or {\\"'),
])
def test_label_values_are_escaped(raw: str, escaped: str) -> None:
    assert queries.escape_label_value(raw) == escaped


def test_custom_template_substitutes_every_placeholder() -> None:
    template = 'sum(rate(x{namespace="{{namespace}}",rollout="{{ rollout }}",track="{{track}}",version="{{version}}"}[1m]))'
    assert queries.render_custom_query(template, SCOPE) == (
        'sum(rate(x{namespace="speech",rollout="meeting-zh",track="canary",version="v2"}[1m]))')


def test_custom_template_cannot_be_injected_through_a_value() -> None:
    hostile = queries.QueryScope("speech", "meeting-zh", "canary", 'v2"} or vector(1) #')
    rendered = queries.render_custom_query('sum(x{version="{{version}}"})', hostile)
    assert rendered == 'sum(x{version="v2\\"} or vector(1) #"})'


@pytest.mark.parametrize("template,problem", [
    ("rate(x[{{version}}])", "must be inside a double-quoted label value"),
    ("x{a='{{version}}'}", "must be inside a double-quoted label value"),
    ('x{a="b"} # "{{version}}"', "must be inside a double-quoted label value"),
    ('x{a="{{pod}}"}', "unknown placeholder {{pod}}"),
    ('x{a="{{version}"}', "malformed placeholder"),
])
def test_unsafe_templates_are_refused(template: str, problem: str) -> None:
    assert any(problem in p for p in queries.check_custom_template(template))
    with pytest.raises(ValueError):
        queries.render_custom_query(template, SCOPE)


def test_escaped_quotes_in_templates_are_tracked() -> None:
    assert queries.check_custom_template('x{a="say \\"hi\\" {{version}}"}') == []


@pytest.mark.parametrize("value,phase", [
    (0.001, SUCCESSFUL), (0.01, SUCCESSFUL), (0.02, FAILED), (None, INCONCLUSIVE), (math.nan, INCONCLUSIVE),
    (math.inf, FAILED), (-1.0, FAILED),
])
def test_judge(value: float | None, phase: str) -> None:
    assert judge("error-rate", value, 0.01, 0.0).phase == phase


def test_measurements_never_write_nan_or_inf_into_status() -> None:
    assert judge("p99", math.inf, 2.0, None).to_status()["value"] == "inf"
    assert "value" not in judge("p99", None, 2.0, None).to_status()


def test_tick_outcome_precedence() -> None:
    ok, bad = Measurement("a", SUCCESSFUL), Measurement("b", FAILED)
    err, inc = Measurement("c", ERROR), Measurement("d", INCONCLUSIVE)
    assert tick_outcome([ok, ok]) == SUCCESSFUL
    assert tick_outcome([ok, inc]) == INCONCLUSIVE
    assert tick_outcome([inc, err]) == ERROR
    assert tick_outcome([err, bad, ok]) == FAILED
    assert tick_outcome([]) == INCONCLUSIVE  # nothing measured is never a pass


def test_parse_prometheus_results() -> None:
    assert _parse_result([{"metric": {"version": "v1"}, "value": [1, "2"]}]) == [({"version": "v1"}, 2.0)]
    assert _parse_result([1.0, "NaN"])[0][1] != _parse_result([1.0, "NaN"])[0][1]  # NaN
    assert _parse_result([]) == []
    with pytest.raises(QueryFailed):
        _parse_result([{"metric": {}, "values": [[1, "2"]]}])


class TableSource(MetricSource):
    """In-memory MetricSource (a stand-in for Prometheus in this unit test only): answers each
    query by the first table key found in it; a key mapped to an exception raises it."""

    def __init__(self, table: dict[str, object]):
        self.table = table
        self.asked: list[str] = []

    async def query(self, promql: str) -> list[Sample]:
        self.asked.append(promql)
        for key, answer in self.table.items():
            if key in promql:
                if isinstance(answer, Exception):
                    raise answer
                return [] if answer is None else [({}, float(answer))]  # type: ignore[arg-type]
        return []


def analysis_spec(min_requests: int = 20) -> object:
    spec = parse_spec({
        "model": {"name": "m", "version": "v2", "path": "m/v2"}, "modelVolume": {"hostPath": {"path": "/m"}},
        "server": {"image": "i"}, "traffic": {"replicaRatio": {}}, "strategy": {"steps": [{"setWeight": 10}]},
        "analysis": {"prometheus": {"address": "http://p:9090"}, "minRequests": min_requests, "metrics": [
            {"name": "error-rate", "max": 0.01}, {"name": "p99-latency-seconds", "max": 2},
            {"name": "custom", "query": 'sum(my_metric{rollout="{{rollout}}"})', "max": 5}]},
    })
    return spec.analysis


async def test_measure_judges_every_metric() -> None:
    source = TableSource({"sum(increase(asr_requests_total": 100, "code=~": 0.5, "histogram_quantile": 0.3,
                          "my_metric": 1})
    result = await measure(source, analysis_spec(), SCOPE)  # type: ignore[arg-type]
    assert [(m.name, m.phase) for m in result] == [
        ("error-rate", FAILED), ("p99-latency-seconds", SUCCESSFUL), ("custom", SUCCESSFUL)]
    assert any('rollout="meeting-zh"' in q and "my_metric" in q for q in source.asked)


async def test_too_few_requests_make_every_metric_inconclusive() -> None:
    source = TableSource({"sum(increase(asr_requests_total": 19, "code=~": 0.0, "histogram_quantile": 0.1,
                          "my_metric": 1})
    result = await measure(source, analysis_spec(20), SCOPE)  # type: ignore[arg-type]
    assert {m.phase for m in result} == {INCONCLUSIVE}
    assert "fewer than minRequests 20" in result[0].message
    no_series = await measure(TableSource({}), analysis_spec(20), SCOPE)  # type: ignore[arg-type]
    assert {m.phase for m in no_series} == {INCONCLUSIVE}


async def test_an_unreachable_source_is_error_for_every_metric() -> None:
    source = TableSource({"asr_requests_total": QueryFailed("connection refused")})
    result = await measure(source, analysis_spec(), SCOPE)  # type: ignore[arg-type]
    assert {m.phase for m in result} == {ERROR}
    assert "connection refused" in result[0].message


async def test_real_client_against_a_closed_port_is_a_query_failure() -> None:
    import socket
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    source = PrometheusSource(f"http://127.0.0.1:{port}", timeout_seconds=1.0)
    with pytest.raises(QueryFailed, match="Prometheus at http://127.0.0.1"):
        await source.query("up")


async def test_served_versions() -> None:
    class Versions(MetricSource):
        async def query(self, promql: str) -> list[Sample]:
            assert 'track="stable"' in promql
            return [({"version": "v1"}, 1.0), ({"version": "v2"}, 3.0)]
    assert await served_versions(Versions(), "speech", "meeting-zh", "stable") == {"v1": 1, "v2": 3}


def test_metric_query_uses_the_builtin_for_named_metrics() -> None:
    spec = analysis_spec()
    assert metric_query(spec.metrics[0], SCOPE, 60) == queries.error_rate_query(SCOPE, 60)  # type: ignore[attr-defined]


async def test_gpu_memory_growth_is_judged_without_the_request_gate() -> None:
    """A quiet canary proves nothing about its traffic, but a leak is a leak: the resource
    built-in is judged on its value, the traffic ones stay Inconclusive; no series: Inconclusive."""
    spec = parse_spec({
        "model": {"name": "m", "version": "v2", "path": "m/v2"}, "modelVolume": {"hostPath": {"path": "/m"}},
        "server": {"image": "i"}, "traffic": {"replicaRatio": {}}, "strategy": {"steps": [{"setWeight": 10}]},
        "analysis": {"prometheus": {"address": "http://p:9090"}, "metrics": [
            {"name": "error-rate", "max": 0.01},
            {"name": "gpu-memory-growth-bytes-per-minute", "max": 100e6}]},
    })
    leaking = TableSource({"sum(increase(asr_requests_total": 3, "deriv(asr_gpu_memory_used_bytes": 2e8})
    result = await measure(leaking, spec.analysis, SCOPE)
    assert [(m.name, m.phase) for m in result] == [
        ("error-rate", INCONCLUSIVE), ("gpu-memory-growth-bytes-per-minute", FAILED)]
    flat = TableSource({"sum(increase(asr_requests_total": 3, "deriv(asr_gpu_memory_used_bytes": 1e6})
    assert (await measure(flat, spec.analysis, SCOPE))[1].phase == SUCCESSFUL
    no_cuda = TableSource({"sum(increase(asr_requests_total": 3})
    assert (await measure(no_cuda, spec.analysis, SCOPE))[1].phase == INCONCLUSIVE
