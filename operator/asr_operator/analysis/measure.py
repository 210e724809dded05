"""One analysis run: ask the metric source every configured metric and judge the answers."""
from __future__ import annotations

import asyncio
from dataclasses import replace

from ..spec import AnalysisSpec, MetricSpec
from . import golden, queries
from .prometheus_source import MetricSource
from .verdict import Measurement, QueryFailed, judge, judge_error, too_few_requests


def metric_query(metric: MetricSpec, scope: queries.QueryScope, window_seconds: float) -> str:
    if metric.kind == queries.CUSTOM_METRIC:
        assert metric.query is not None
        return queries.render_custom_query(metric.query, scope)
    return queries.builtin_query(metric.kind, scope, window_seconds)


async def measure(source: MetricSource, analysis: AnalysisSpec, scope: queries.QueryScope,
                  stable: queries.QueryScope | None = None) -> tuple[Measurement, ...]:
    """Every metric gets a verdict. Too few requests makes all traffic metrics Inconclusive: a
    quiet canary has proven nothing, however good its numbers look. The golden-set metrics
    measure the version itself, not its traffic, and compare it with `stable` (the stable
    track's scope)."""
    gate: Measurement | None = None  # the verdict every traffic metric gets (name set below)
    if any(metric.kind not in golden.GOLDEN_METRICS for metric in analysis.metrics):
        try:
            requests = await source.query_value(queries.request_count_query(scope, analysis.window_seconds))
        except QueryFailed as error:
            gate = judge_error("", error)
        else:
            if analysis.min_requests > 0 and (requests is None or not requests >= analysis.min_requests):
                gate = too_few_requests("", requests, analysis.min_requests)

    async def one(metric: MetricSpec) -> Measurement:
        if metric.kind in golden.GOLDEN_METRICS:
            return await golden.measure_golden(source, metric, scope, stable)
        if gate is not None:
            return replace(gate, name=metric.name)
        try:
            value = await source.query_value(metric_query(metric, scope, analysis.window_seconds))
        except QueryFailed as error:
            return judge_error(metric.name, error)
        return judge(metric.name, value, metric.max, metric.min)

    return tuple(await asyncio.gather(*(one(metric) for metric in analysis.metrics)))


async def served_versions(source: MetricSource, namespace: str, rollout: str, track: str) -> dict[str, int]:
    samples = await source.query(queries.served_versions_query(namespace, rollout, track))
    return {str(labels.get("version", "")): int(value) for labels, value in samples}
