"""One analysis run: ask the metric source every configured metric and judge the answers."""
from __future__ import annotations

import asyncio
from dataclasses import replace

from ..spec import AnalysisSpec, MetricSpec
from . import golden, queries, shadow_queries
from .prometheus_source import MetricSource
from .relative import judge_against_stable
from .verdict import ERROR, INCONCLUSIVE, SUCCESSFUL, Measurement, QueryFailed, judge, judge_error, too_few_requests


def metric_query(metric: MetricSpec, scope: queries.QueryScope, window_seconds: float) -> str:
    if metric.kind in shadow_queries.SHADOW_METRICS:
        return shadow_queries.shadow_query(metric.kind, scope, window_seconds)
    if metric.kind == queries.CUSTOM_METRIC:
        assert metric.query is not None
        return queries.render_custom_query(metric.query, scope)
    return queries.builtin_query(metric.kind, scope, window_seconds)


def has_relative_bounds(metric: MetricSpec) -> bool:
    return metric.kind in queries.BUILTIN_METRICS and (metric.max_increase is not None or metric.max_ratio is not None)


def stage_analysis(analysis: AnalysisSpec, shadow_stage: bool) -> AnalysisSpec:
    """The metrics that judge this stage: in a shadow stage only the shadow metrics (at weight 0
    the user-traffic metrics have no requests and would only ever be Inconclusive), after it
    every other metric (no copies are made any more: the shadow metrics would have no data)."""
    metrics = tuple(metric for metric in analysis.metrics
                    if (metric.kind in shadow_queries.SHADOW_METRICS) == shadow_stage)
    return replace(analysis, metrics=metrics)


async def _request_gate(source: MetricSource, analysis: AnalysisSpec, scope: queries.QueryScope,
                        shadow: bool = False) -> Measurement | None:
    """None when the scope's track answered at least minRequests inference requests (shadow
    copies, for the shadow metrics) in the window; else the verdict its traffic metrics get
    (Inconclusive, or Error if unanswerable)."""
    count = shadow_queries.shadow_request_count_query if shadow else queries.request_count_query
    try:
        requests = await source.query_value(count(scope, analysis.window_seconds))
    except QueryFailed as error:
        return judge_error("", error)
    if analysis.min_requests > 0 and (requests is None or not requests >= analysis.min_requests):
        return too_few_requests("", requests, analysis.min_requests,
                                f"{scope.track} shadow" if shadow else scope.track)
    return None


STABLE_WITHOUT_TRAFFIC = ("relative bounds not applied: at weight 100 the stable track serves no traffic to "
                          "compare with (they were judged at the earlier weights)")


async def measure(source: MetricSource, analysis: AnalysisSpec, scope: queries.QueryScope,
                  stable: queries.QueryScope | None = None,
                  stable_serves_traffic: bool = True) -> tuple[Measurement, ...]:
    """Every metric gets a verdict. Too few requests makes all traffic metrics Inconclusive: a
    quiet canary has proven nothing, however good its numbers look. Relative bounds
    (maxIncrease, maxRatio) compare with the same query on `stable` (the stable track's scope),
    which needs minRequests of its own. The golden-set metrics measure the version itself, not
    its traffic, and compare it with `stable`. At weight 100 (`stable_serves_traffic` False) the
    stable pods get no requests, so traffic metrics are held to their absolute bounds only."""
    gate: Measurement | None = None  # the verdict every traffic metric gets (name set below)
    untouched = golden.GOLDEN_METRICS + queries.RESOURCE_METRICS + shadow_queries.SHADOW_METRICS
    if any(metric.kind not in untouched for metric in analysis.metrics):
        gate = await _request_gate(source, analysis, scope)
    shadow_gate: Measurement | None = None  # the same for the shadow metrics, on shadow copies
    if any(metric.kind in shadow_queries.SHADOW_METRICS for metric in analysis.metrics):
        shadow_gate = await _request_gate(source, analysis, scope, shadow=True)
    stable_gate: Measurement | None = None  # why the stable side cannot be compared, if it cannot
    if gate is None and stable_serves_traffic and any(has_relative_bounds(metric) for metric in analysis.metrics):
        if stable is None:
            stable_gate = Measurement("", INCONCLUSIVE, None,
                                      "there is no stable version yet (status.stableVersion is empty)")
        else:
            stable_gate = await _request_gate(source, analysis, stable)

    async def one(metric: MetricSpec) -> Measurement:
        if metric.kind in golden.GOLDEN_METRICS:
            return await golden.measure_golden(source, metric, scope, stable)
        if metric.kind in queries.RESOURCE_METRICS:  # the pods' resources, not their traffic: no gate
            try:
                value = await source.query_value(metric_query(metric, scope, analysis.window_seconds))
            except QueryFailed as error:
                return judge_error(metric.name, error)
            return judge(metric.name, value, metric.max, metric.min)
        if metric.kind in shadow_queries.SHADOW_METRICS:  # absolute bounds only (the spec allows no others)
            if shadow_gate is not None:
                return replace(shadow_gate, name=metric.name)
            try:
                value = await source.query_value(metric_query(metric, scope, analysis.window_seconds))
            except QueryFailed as error:
                return judge_error(metric.name, error)
            return judge(metric.name, value, metric.max, metric.min)
        if gate is not None:
            return replace(gate, name=metric.name)
        try:
            value = await source.query_value(metric_query(metric, scope, analysis.window_seconds))
        except QueryFailed as error:
            return judge_error(metric.name, error)
        if not has_relative_bounds(metric):
            return judge(metric.name, value, metric.max, metric.min)
        if not stable_serves_traffic:
            verdict = judge(metric.name, value, metric.max, metric.min)
            return replace(verdict, message=f"{verdict.message}; {STABLE_WITHOUT_TRAFFIC}")
        absolute = judge(metric.name, value, metric.max, metric.min)
        if absolute.phase != SUCCESSFUL:  # over max (or no canary value): stable cannot change that
            return absolute
        if stable_gate is not None:
            if stable_gate.phase == ERROR:
                return replace(stable_gate, name=metric.name, message=f"stable side: {stable_gate.message}")
            return judge_against_stable(metric.name, value, None, maximum=metric.max, minimum=metric.min,
                                        max_increase=metric.max_increase, max_ratio=metric.max_ratio,
                                        stable_unavailable=stable_gate.message)
        assert stable is not None
        try:
            stable_value = await source.query_value(metric_query(metric, stable, analysis.window_seconds))
        except QueryFailed as error:
            return replace(judge_error(metric.name, error), message=f"stable side: query failed: {error}")
        return judge_against_stable(metric.name, value, stable_value, maximum=metric.max, minimum=metric.min,
                                    max_increase=metric.max_increase, max_ratio=metric.max_ratio)

    return tuple(await asyncio.gather(*(one(metric) for metric in analysis.metrics)))


async def served_versions(source: MetricSource, namespace: str, rollout: str, track: str) -> dict[str, int]:
    samples = await source.query(queries.served_versions_query(namespace, rollout, track))
    return {str(labels.get("version", "")): int(value) for labels, value in samples}


async def can_load_beside(source: MetricSource, namespace: str, rollout: str, track: str) -> list[float]:
    """asr_model_can_load_beside of each of a track's pods (one value per pod that reports)."""
    samples = await source.query(queries.can_load_beside_query(namespace, rollout, track))
    return [float(value) for _, value in samples]
