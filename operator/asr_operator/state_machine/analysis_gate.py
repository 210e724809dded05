"""When the next analysis is due, how its outcome counts against the limits (pause or roll
back), and the data gate: no step forward without a successful analysis at the current weight."""
from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

from ..analysis.verdict import ERROR, FAILED, INCONCLUSIVE, SUCCESSFUL, tick_outcome
from ..durations import format_time, parse_time, seconds_between
from ..spec import RolloutSpec
from .conditions import set_condition
from .observations import AnalysisRun
from .phases import CANARY_PHASES, PAUSED, PROGRESSING
from .tick import Tick


def seconds_until_analysis(spec: RolloutSpec, status: Mapping[str, Any], now: datetime.datetime) -> float | None:
    """Seconds until the next analysis is due (<= 0: due now); None when none is wanted.

    The first analysis at a new weight waits one full interval after the weight was set:
    measured earlier, the canary has had no traffic yet and every metric is Inconclusive,
    which would count toward a pause before the canary had a chance."""
    if spec.analysis is None or not spec.analysis.metrics:
        return None
    if status.get("phase") not in CANARY_PHASES or int(status.get("canaryWeight") or 0) <= 0:
        return None
    interval = spec.analysis.interval_seconds
    waits = [0.0]
    for stamp in ((status.get("analysis") or {}).get("lastRun"), status.get("weightSetAt")):
        since = seconds_between(stamp, now)
        if since is not None:
            waits.append(interval - since)
    return max(waits)


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
        if counters["errors"] >= analysis.error_limit and tick.phase == PROGRESSING:
            _pause(tick, "AnalysisErrors",
                   f"{counters['errors']} analysis errors in a row (errorLimit {analysis.error_limit}): {detail}")
    elif outcome == INCONCLUSIVE:
        counters["inconclusive"] += 1
        counters["errors"] = 0
        tick.s["counters"] = counters
        set_condition(tick.s, "Healthy", False, "AnalysisInconclusive", detail, tick.now)
        if counters["inconclusive"] >= analysis.inconclusive_limit and tick.phase == PROGRESSING:
            _pause(tick, "InconclusiveLimit",
                   f"{counters['inconclusive']} inconclusive analyses in a row "
                   f"(inconclusiveLimit {analysis.inconclusive_limit}): {detail}")
    else:
        counters.update(inconclusive=0, errors=0)
        tick.s["counters"] = counters
        set_condition(tick.s, "Healthy", True, "AnalysisSuccessful", "every metric within limits", tick.now)
    assert outcome in (SUCCESSFUL, FAILED, ERROR, INCONCLUSIVE)
    return False


def _pause(tick: Tick, reason: str, message: str) -> None:
    tick.enter(PAUSED, f"paused: {message}; promote or retry to resume, abort to roll back")
    set_condition(tick.s, "Paused", True, reason, message, tick.now)
    tick.event("Paused", tick.s["message"], warning=True)


def gate_open(tick: Tick) -> bool:
    """Never move on without data: the last analysis must be all-Successful and newer than the
    current weight (unless the rollout has no metrics and is gated by hand instead)."""
    analysis = tick.spec.analysis
    if analysis is None or not analysis.metrics:
        return True
    last = tick.s.get("analysis") or {}
    if last.get("outcome") != SUCCESSFUL:
        return False
    ran, weight_set = parse_time(last.get("lastRun")), parse_time(tick.s.get("weightSetAt"))
    return ran is not None and (weight_set is None or ran > weight_set)
