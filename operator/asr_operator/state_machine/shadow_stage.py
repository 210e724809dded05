"""The shadow stage: at weight 0, stable pods copy a share of their requests to the canary
(with their own transcript) and the canary is judged on those copies before any user gets its
answers. Its state is one status field, `status.shadow` = {step, percent, startedAt}; the stable
ConfigMap carries the copy setting only while `shadow_percent()` says so, so leaving the stage
any way (its end, promotion, rollback, abort, a new canary) stops the copies."""
from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..durations import format_time, seconds_between
from ..spec import Step
from .phases import CANARY_PHASES, PROGRESSING

if TYPE_CHECKING:  # tick imports children_plan, which imports this module
    from .tick import Tick


def shadow_percent(status: Mapping[str, Any]) -> int | None:
    """The share of stable's requests to copy now, or None: copies only while a canary runs at
    weight 0 in a shadow step (a stale field after a rollback or promotion copies nothing)."""
    shadow = status.get("shadow") or {}
    if status.get("phase") not in CANARY_PHASES or not status.get("canaryModel") or not shadow:
        return None
    if int(status.get("canaryWeight") or 0) != 0:
        return None
    percent = shadow.get("percent")
    return int(percent) if isinstance(percent, int) and 0 < percent <= 100 else None


def shadow_stage_active(status: Mapping[str, Any]) -> bool:
    return shadow_percent(status) is not None


def stage_started_at(status: Mapping[str, Any]) -> Any:
    """When the stage being judged began: the shadow stage's start, else the weight's."""
    if shadow_stage_active(status):
        return (status.get("shadow") or {}).get("startedAt")
    return status.get("weightSetAt")


def run_shadow_step(tick: Tick, index: int, step: Step, gate_open: bool) -> bool:
    """One tick of a shadow step. True when the stage passed (the caller goes on to the next
    step); False while it runs: the duration first, then an all-Successful analysis taken
    entirely inside the stage (`gate_open`). A failing analysis rolls back elsewhere (the
    analysis gate), before any user request reached the canary."""
    assert step.shadow_percent is not None and step.shadow_seconds is not None
    version = tick.s.get("canaryVersion")
    shadow = tick.s.get("shadow") or {}
    if shadow.get("step") != index:
        tick.s["shadow"] = {"step": index, "percent": step.shadow_percent, "startedAt": format_time(tick.now)}
        tick.enter(PROGRESSING, f"canary {version} in shadow stage: stable copies {step.shadow_percent}% of its "
                                f"requests to it for {step.shadow_seconds:g}s; no user gets its answers")
        tick.event("ShadowStarted", f"step {index}: {tick.s['message']}")
        tick.wait(step.shadow_seconds)
        return False
    waited = seconds_between(shadow.get("startedAt"), tick.now) or 0.0
    remaining = step.shadow_seconds - waited
    if remaining > 0:
        tick.wait(remaining)
        return False
    if not gate_open:
        return False  # the next analysis tick is scheduled; inconclusive ones count toward a pause
    tick.s["shadow"] = None
    tick.event("ShadowPassed", f"step {index}: canary {version} passed the shadow stage")
    return True
