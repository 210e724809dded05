"""When the next analysis is due, how its outcome counts against the limits (pause or roll
back), and the data gate: no step forward without a successful analysis at the current weight."""
from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

from ..analysis.verdict import ERROR, FAILED, INCONCLUSIVE, SUCCESSFUL, tick_outcome
from ..durations import format_time, parse_time, seconds_between
from ..spec import RolloutSpec
from .conditions import condition_of, set_condition
from .observations import AnalysisRun
from .phases import CANARY_PHASES, MANUAL_PAUSE, PAUSED, USER_PAUSE
from .shadow_stage import shadow_stage_active, stage_started_at
from .tick import Tick


def seconds_until_analysis(spec: RolloutSpec, status: Mapping[str, Any], now: datetime.datetime) -> float | None:
    """Seconds until the next analysis is due (<= 0: due now); None when none is wanted.

    The first analysis at a new weight waits a full interval and a full query window after the
    weight was set: measured earlier, its window reaches back to the previous weight (or to no
    traffic at all, every metric Inconclusive, counting toward a pause before the canary had a
    chance). No analysis runs at weight 0 (without traffic there is nothing to judge) except in a
    shadow stage, where the canary is judged on copies of stable's requests."""
    if spec.analysis is None or not spec.analysis.metrics:
        return None
    if status.get("phase") not in CANARY_PHASES:
        return None
    if int(status.get("canaryWeight") or 0) <= 0 and not shadow_stage_active(status):
        return None
    interval = spec.analysis.interval_seconds
    waits = [0.0]
    since_run = seconds_between((status.get("analysis") or {}).get("lastRun"), now)
    if since_run is not None:
        waits.append(interval - since_run)
    since_weight = seconds_between(stage_started_at(status), now)
    if since_weight is not None:
        waits.append(_settle_seconds(spec) - since_weight)
    return max(waits)


def _settle_seconds(spec: RolloutSpec) -> float:
    """How long after a weight change an analysis window lies entirely at the new weight."""
    assert spec.analysis is not None
    return max(spec.analysis.interval_seconds, spec.analysis.window_seconds)


def analysis_due(spec: RolloutSpec, status: Mapping[str, Any], now: datetime.datetime) -> bool:
    remaining = seconds_until_analysis(spec, status, now)
    return remaining is not None and remaining <= 0


def schedule_analysis(tick: Tick) -> None:
    remaining = seconds_until_analysis(tick.spec, tick.s, tick.now)
    if remaining is not None:
        tick.wait(remaining)


def record_analysis(tick: Tick, run: AnalysisRun) -> bool:
    """Count the tick's outcome against its limit. True when it rolled back."""
    analysis = tick.spec.analysis
    assert analysis is not None
    outcome = tick_outcome(run.measurements)
    tick.s["analysis"] = {"lastRun": format_time(tick.now), "outcome": outcome,
                          "metrics": [measurement.to_status() for measurement in run.measurements]}
    counters = {"failed": 0, "inconclusive": 0, "errors": 0, **(tick.s.get("counters") or {})}
    bad = [m for m in run.measurements if m.phase == outcome]
    detail = "; ".join(f"{m.name}: {m.message}" for m in bad)
    if outcome == FAILED:
        counters["failed"] += 1
        tick.s["counters"] = counters
        set_condition(tick.s, "Healthy", False, "AnalysisFailed", detail, tick.now)
        if counters["failed"] >= analysis.failure_limit:
            tick.rollback(f"analysis failed {counters['failed']}x (failureLimit {analysis.failure_limit}): {detail}",
                          "AnalysisFailed")
            return True
        tick.event("AnalysisFailed", f"{detail} ({counters['failed']}/{analysis.failure_limit})", warning=True)
    elif outcome == ERROR:
        counters["errors"] += 1
        tick.s["counters"] = counters
        set_condition(tick.s, "Healthy", False, "AnalysisError", detail, tick.now)
        if counters["errors"] >= analysis.error_limit and not analysis_paused(tick.s):
            return _limit_reached(tick, analysis.on_error, "onError", "AnalysisErrors",
                                  f"{counters['errors']} analysis errors in a row "
                                  f"(errorLimit {analysis.error_limit}): {detail}")
    elif outcome == INCONCLUSIVE:
        counters["inconclusive"] += 1
        counters["errors"] = 0
        tick.s["counters"] = counters
        set_condition(tick.s, "Healthy", False, "AnalysisInconclusive", detail, tick.now)
        if counters["inconclusive"] >= analysis.inconclusive_limit and not analysis_paused(tick.s):
            return _limit_reached(tick, analysis.on_inconclusive, "onInconclusive", "InconclusiveLimit",
                                  f"{counters['inconclusive']} inconclusive analyses in a row "
                                  f"(inconclusiveLimit {analysis.inconclusive_limit}): {detail}")
    else:
        counters.update(inconclusive=0, errors=0)
        tick.s["counters"] = counters
        set_condition(tick.s, "Healthy", True, "AnalysisSuccessful", "every metric within limits", tick.now)
    assert outcome in (SUCCESSFUL, FAILED, ERROR, INCONCLUSIVE)
    return False


def analysis_paused(status: Mapping[str, Any]) -> bool:
    """Paused because the canary could not be judged (not a `pause: {}` step, not a person's pause)."""
    return status.get("phase") == PAUSED and (condition_of(status, "Paused") or {}).get("reason") not in (
        MANUAL_PAUSE, USER_PAUSE)


def _limit_reached(tick: Tick, action: str, field: str, reason: str, message: str) -> bool:
    """Inconclusive or Error analyses reached their limit: the canary cannot be judged. It never
    keeps users' traffic unjudged: pause at weight 0, or roll back (spec.analysis.onInconclusive,
    onError). True when it rolled back. Also in a `pause: {}` step: that pause then holds weight 0."""
    if action == "rollback":
        tick.rollback(f"{message} (spec.analysis.{field}: rollback)", reason)
        return True
    weight = int(tick.s.get("canaryWeight") or 0)
    tick.s["pendingWeight"] = None
    if weight:
        tick.s["canaryWeight"] = 0
        tick.stamp("weightSetAt")
    tick.enter(PAUSED, f"paused, canary weight {weight}% -> 0 until resumed: {message}; promote or retry to "
                       "resume (the step's weight is restored and judged from a fresh analysis), abort to roll back")
    set_condition(tick.s, "Paused", True, reason, message, tick.now)
    tick.event("Paused", tick.s["message"], warning=True)
    return False


def gate_open(tick: Tick) -> bool:
    """Never move on without data: the last analysis must be all-Successful and taken entirely
    at the current weight (unless the rollout has no metrics and is gated by hand instead)."""
    analysis = tick.spec.analysis
    if analysis is None or not analysis.metrics:
        return True
    last = tick.s.get("analysis") or {}
    if last.get("outcome") != SUCCESSFUL:
        return False
    ran, weight_set = parse_time(last.get("lastRun")), parse_time(stage_started_at(tick.s))
    if ran is None:
        return False
    # The analysis must have been taken entirely at the current weight: its window starts after
    # the weight was set (a 1m window measured 30s after a change is half the old weight).
    return weight_set is None or (ran - weight_set).total_seconds() >= _settle_seconds(tick.spec)
