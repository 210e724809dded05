"""Judging measurements: every one is Successful, Failed, Inconclusive or Error (Argo's model).

A missing value is never a success: an empty or NaN result, or too few requests, is
Inconclusive; a query that could not run is Error.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

SUCCESSFUL = "Successful"
FAILED = "Failed"
INCONCLUSIVE = "Inconclusive"
ERROR = "Error"


@dataclass(frozen=True)
class Measurement:
    name: str
    phase: str
    value: float | None = None          # the canary's value
    message: str = ""
    stable_value: float | None = None   # the stable track's value, for the relative bounds

    def to_status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "phase": self.phase, "message": self.message}
        # JSON has no NaN/Inf; Kubernetes would refuse the status. Show them as text.
        if self.value is not None:
            out["value"] = self.value if math.isfinite(self.value) else str(self.value)
        if self.stable_value is not None:
            out["stableValue"] = self.stable_value if math.isfinite(self.stable_value) else str(self.stable_value)
        return out


class QueryFailed(Exception):
    """The metric source could not answer (unreachable, bad query, timeout)."""


def judge(name: str, value: float | None, maximum: float | None, minimum: float | None) -> Measurement:
    """Compare one value with its thresholds."""
    if value is None:
        return Measurement(name, INCONCLUSIVE, None, "no data: the query returned no series")
    if math.isnan(value):
        return Measurement(name, INCONCLUSIVE, value, "no data: the query returned NaN (no traffic in the window?)")
    if maximum is not None and value > maximum:
        return Measurement(name, FAILED, value, f"{value:.6g} is over max {maximum:g}")
    if minimum is not None and value < minimum:
        return Measurement(name, FAILED, value, f"{value:.6g} is under min {minimum:g}")
    return Measurement(name, SUCCESSFUL, value, "within limits")


def judge_error(name: str, error: Exception) -> Measurement:
    return Measurement(name, ERROR, None, f"query failed: {error}")


def too_few_requests(name: str, requests: float | None, min_requests: int, track: str = "canary") -> Measurement:
    seen = 0 if requests is None or math.isnan(requests) else requests
    return Measurement(name, INCONCLUSIVE, None,
                       f"only {seen:.0f} {track} requests in the window, fewer than minRequests {min_requests}")


def tick_outcome(measurements: Sequence[Measurement]) -> str:
    """One analysis tick's result: any Failed wins, then Error, then Inconclusive."""
    phases = {measurement.phase for measurement in measurements}
    if not measurements:
        return INCONCLUSIVE
    for phase in (FAILED, ERROR, INCONCLUSIVE):
        if phase in phases:
            return phase
    return SUCCESSFUL
