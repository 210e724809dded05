"""Relative bounds: the canary judged against the stable track over the same window.

An absolute bound alone cannot tell a bad canary from a bad hour: 0.8 % errors is fine when
stable has 0.7 % and a disaster when stable has 0.01 %. So every built-in traffic metric
(error-rate, p99-latency-seconds, real-time-factor) also takes
  maxIncrease: canary - stable may be at most this (same unit as the metric)
  maxRatio:    canary / stable may be at most this
The stable side is the same query on track=stable, version=status.stableVersion; it needs
minRequests of its own in the window, else there is nothing to compare with and the measurement
is Inconclusive, never a pass. Decisions here are pure: measure.py does the querying.
"""
from __future__ import annotations

import math

from .verdict import FAILED, INCONCLUSIVE, SUCCESSFUL, Measurement, judge


def ratio(canary: float, stable: float) -> float:
    """canary / stable. Stable at 0: equal values are a ratio of 1; any canary value above 0 is
    infinitely many times stable's (a breach of every maxRatio) - pair maxRatio with maxIncrease,
    or use maxIncrease alone, for metrics whose stable value is often exactly 0 (error-rate)."""
    if stable > 0:
        return canary / stable
    return 1.0 if canary <= stable else math.inf


def _missing(value: float | None) -> bool:
    return value is None or math.isnan(value)


def judge_against_stable(name: str, canary: float | None, stable: float | None, *,
                         maximum: float | None, minimum: float | None,
                         max_increase: float | None, max_ratio: float | None,
                         stable_unavailable: str | None = None) -> Measurement:
    """One metric with absolute (`max`/`min`) and relative (`maxIncrease`/`maxRatio`) bounds.

    The absolute bounds come first: a canary over `max` fails whatever stable does. Then, with
    relative bounds set, a missing stable value (`stable_unavailable` says why, e.g. too few
    stable requests) is Inconclusive."""
    absolute = judge(name, canary, maximum, minimum)
    absolute = Measurement(absolute.name, absolute.phase, absolute.value, absolute.message,
                           None if _missing(stable) else stable)
    if absolute.phase != SUCCESSFUL or (max_increase is None and max_ratio is None):
        return absolute
    assert canary is not None
    if stable_unavailable is not None or _missing(stable):
        why = stable_unavailable or "the stable query returned no data"
        return Measurement(name, INCONCLUSIVE, canary,
                           f"canary {canary:.6g}, but no stable value to compare with: {why}")
    assert stable is not None
    increase, times = canary - stable, ratio(canary, stable)
    both = f"canary {canary:.6g} vs stable {stable:.6g}"
    if max_increase is not None and increase > max_increase:
        return Measurement(name, FAILED, canary,
                           f"{both}: {increase:.6g} over stable, more than maxIncrease {max_increase:g}", stable)
    if max_ratio is not None and times > max_ratio:
        return Measurement(name, FAILED, canary,
                           f"{both}: {times:.4g}x stable, more than maxRatio {max_ratio:g}", stable)
    return Measurement(name, SUCCESSFUL, canary, f"{both} ({increase:+.6g}, {times:.4g}x): within limits", stable)
