"""The golden-set quality gate: `golden-cer` and `golden-agreement` (queries and verdicts).

Both read what every inference pod exports after running its version's golden set
(docs/contracts.md): `asr_golden_cer` and `asr_golden_transcript_info{file, digest}`.

- `golden-cer`: the canary version's CER (worst pod), judged against an absolute `max` and,
  with `maxIncrease`, against the stable version's CER read the same way. No canary value, or
  no stable value when `maxIncrease` is set, is Inconclusive (no pod has reported yet).
- `golden-agreement`: the share of golden clips (present in both versions' sets) for which the
  canary and the stable version produce the same normalised transcript, judged with `min`. For
  versions that ship clips without references. It compares transcript digests through
  Prometheus rather than fetching `/v1/golden` from pods: the operator then needs no network path
  to the inference pods (NetworkPolicies, meshes), every pod counts rather than one, and the same
  query runs against the emulator-based tests (where no Service routes anywhere) and is tested
  with promtool like the other built-ins. Nothing reported by either side is Inconclusive.

Neither depends on live traffic, so neither waits for `minRequests`.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

from .prometheus_source import MetricSource
from .queries import QueryScope, escape_label_value
from .verdict import FAILED, INCONCLUSIVE, SUCCESSFUL, Measurement, QueryFailed, judge_error

if TYPE_CHECKING:
    from ..spec import MetricSpec

GOLDEN_CER = "golden-cer"
GOLDEN_AGREEMENT = "golden-agreement"
GOLDEN_METRICS = (GOLDEN_CER, GOLDEN_AGREEMENT)


def _selector(scope: QueryScope) -> str:
    return ("{" f'namespace="{escape_label_value(scope.namespace)}",'
            f'rollout="{escape_label_value(scope.rollout)}",'
            f'track="{escape_label_value(scope.track)}",'
            f'version="{escape_label_value(scope.version)}"' "}")


def golden_cer_query(scope: QueryScope) -> str:
    """The worst (highest) golden CER any pod of the scope's track reports for its version."""
    return f"max(asr_golden_cer{_selector(scope)})"


def golden_agreement_query(canary: QueryScope, stable: QueryScope) -> str:
    """Clips with an identical transcript digest on both tracks / clips both sets contain.

    `or vector(0)` gives 0 when no clip agrees, while the denominator stays empty (-> no value,
    Inconclusive) until both tracks have reported the same clips."""
    c = f"asr_golden_transcript_info{_selector(canary)}"
    s = f"asr_golden_transcript_info{_selector(stable)}"
    agreeing = (f"count(count by (file) (count by (file, digest) ({c}) "
                f"and on (file, digest) count by (file, digest) ({s})))")
    common = f"count(count by (file) ({c}) and on (file) count by (file) ({s}))"
    return f"(({agreeing}) or vector(0)) / ({common})"


def _missing(value: float | None) -> bool:
    return value is None or math.isnan(value)


def judge_golden_cer(name: str, canary: float | None, stable: float | None, maximum: float | None,
                     max_increase: float | None) -> Measurement:
    if _missing(canary):
        return Measurement(name, INCONCLUSIVE, None,
                           "no data: no canary pod has reported asr_golden_cer for its version yet "
                           "(does the version ship a golden set with references?)")
    assert canary is not None
    if maximum is not None and canary > maximum:
        return Measurement(name, FAILED, canary, f"canary golden CER {canary:.4g} is over max {maximum:g}")
    if max_increase is not None:
        if _missing(stable):
            return Measurement(name, INCONCLUSIVE, canary,
                               f"canary golden CER {canary:.4g}, but no stable pod has reported asr_golden_cer "
                               "for the stable version: maxIncrease cannot be judged")
        assert stable is not None
        increase = canary - stable
        if increase > max_increase:
            return Measurement(name, FAILED, canary,
                               f"canary golden CER {canary:.4g} is {increase:.4g} over stable's {stable:.4g}; "
                               f"maxIncrease is {max_increase:g}", stable)
        return Measurement(name, SUCCESSFUL, canary,
                           f"canary golden CER {canary:.4g}, stable {stable:.4g}: within limits", stable)
    return Measurement(name, SUCCESSFUL, canary, f"canary golden CER {canary:.4g}: within limits")


def judge_golden_agreement(name: str, agreement: float | None, minimum: float | None) -> Measurement:
    if _missing(agreement):
        return Measurement(name, INCONCLUSIVE, None,
                           "no data: canary and stable pods have not both reported transcripts of the "
                           "same golden clips yet")
    assert agreement is not None
    if minimum is not None and agreement < minimum:
        return Measurement(name, FAILED, agreement,
                           f"canary and stable agree on {agreement:.1%} of the golden clips, under min {minimum:g}")
    return Measurement(name, SUCCESSFUL, agreement, f"agree on {agreement:.1%} of the golden clips")


async def measure_golden(source: MetricSource, metric: MetricSpec, canary: QueryScope,
                         stable: QueryScope | None) -> Measurement:
    """One golden metric's measurement. `stable` is the stable track's scope (its version from
    status.stableVersion); None when there is no stable version to compare with yet."""
    try:
        if metric.kind == GOLDEN_CER:
            canary_cer = await source.query_value(golden_cer_query(canary))
            stable_cer = None
            if metric.max_increase is not None and stable is not None and not _missing(canary_cer):
                stable_cer = await source.query_value(golden_cer_query(stable))
            return judge_golden_cer(metric.name, canary_cer, stable_cer, metric.max, metric.max_increase)
        if stable is None:
            return judge_golden_agreement(metric.name, None, metric.min)
        return judge_golden_agreement(metric.name, await source.query_value(golden_agreement_query(canary, stable)),
                                      metric.min)
    except QueryFailed as error:
        return judge_error(metric.name, error)
