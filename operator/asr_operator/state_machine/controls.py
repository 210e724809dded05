"""What people and alerts ask for through annotations: promote, abort, retry, rollback-to,
and a firing alert (roll back a canary, or revert a recent promotion)."""
from __future__ import annotations

import datetime
import json
from collections.abc import Mapping
from typing import Any

from ..durations import parse_time, seconds_between
from ..spec import PodTemplate
from .analysis_gate import analysis_paused
from .conditions import set_condition
from .phases import CANARY_PHASES, FAILED_PHASE, PAUSED, PROGRESSING, PROMOTING, ROLLED_BACK, ROLLING_BACK, SUCCEEDED
from .tick import Tick, model_from_history, same_revision


ANNOTATION_PREFIX = "asr.rollout.dev/"
PROMOTE = ANNOTATION_PREFIX + "promote"
ABORT = ANNOTATION_PREFIX + "abort"
RETRY = ANNOTATION_PREFIX + "retry"
ROLLBACK_TO = ANNOTATION_PREFIX + "rollback-to"
ALERT = ANNOTATION_PREFIX + "alert"
# Not consumed: it holds the canary while set (`asr-rollout pause`); removing it resumes.
PAUSE = ANNOTATION_PREFIX + "pause"
MANUAL_ANNOTATIONS = (PROMOTE, ABORT, RETRY, ROLLBACK_TO)


def _parse_alert(text: str | None) -> dict[str, Any] | None:
    if not text:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None  # the receiver always writes JSON; anything else was not an alert
    return data if isinstance(data, dict) else None


def apply_annotations(tick: Tick) -> None:
    notes = tick.obs.annotations
    for key in MANUAL_ANNOTATIONS:
        if key in notes:
            tick.remove_before.append(key)
    if ALERT in notes:
        tick.remove_after.append(ALERT)
        _alert(tick, _parse_alert(notes.get(ALERT)))
    if notes.get(ABORT, "").lower() == "true":
        if tick.phase in (*CANARY_PHASES, PROMOTING):
            tick.rollback("aborted by user (asr.rollout.dev/abort)", "Aborted")
        else:
            tick.event("AbortIgnored", f"nothing to abort in phase {tick.phase}", warning=True)
    if ROLLBACK_TO in notes:
        _rollback_to(tick, notes[ROLLBACK_TO].strip())
    if notes.get(RETRY, "").lower() == "true":
        if tick.phase in (ROLLED_BACK, ROLLING_BACK, FAILED_PHASE):
            tick.s["failedSpec"] = None
            tick.event("Retry", "retry requested: the failed version may be tried again")
        elif tick.phase == PAUSED:
            _resume(tick, "retry requested")
        else:
            tick.event("RetryIgnored", f"nothing to retry in phase {tick.phase}", warning=True)
    if notes.get(PROMOTE, "").lower() == "true":
        _promote_request(tick)


ALERTS_REMEMBERED = 32  # alerts acted on, kept in status.alertsSeen so that a repeat changes nothing


def _alert(tick: Tick, alert: dict[str, Any] | None) -> None:
    """A firing alert acts at most once: an episode (fingerprint + startsAt) already handled is a
    repeat, also when other alerts came in between (status.alertsSeen remembers the last ones)."""
    if alert is None:
        tick.event("AlertIgnored", "the asr.rollout.dev/alert annotation is not a JSON object like "
                                   '{"alertname": ..., "fingerprint": ..., "startsAt": ...}; ignored', warning=True)
        return
    fingerprint = str(alert.get("fingerprint") or "")
    episode = {"fingerprint": fingerprint, "startsAt": str(alert.get("startsAt") or "")}
    seen = [dict(item) for item in tick.s.get("alertsSeen") or []]
    last = tick.s.get("lastAlert") or {}
    last_episode = {"fingerprint": str(last.get("fingerprint") or ""), "startsAt": str(last.get("startsAt") or "")}
    if fingerprint and (episode in seen or episode == last_episode):
        return  # Alertmanager repeats a firing alert; this episode was handled already
    tick.s["alertsSeen"] = (seen + [episode])[-ALERTS_REMEMBERED:]
    name = str(alert.get("alertname") or "alert")
    summary = str(alert.get("summary") or "")
    track = str(alert.get("track") or "")
    tick.s["lastAlert"] = dict(alert)  # the same object as the annotation (docs/contracts.md)
    described = f"alert {name} firing" + (f" ({track} track)" if track else "") + (f": {summary}" if summary else "")
    action = _alert_action(tick, track, episode["startsAt"], described)
    set_condition(tick.s, "Alert", True, "AlertFiring", f"{described}; {action}", tick.now)
    tick.event("AlertReceived", f"{described}; {action}", warning=True)


def _alert_action(tick: Tick, track: str, starts_at: str, described: str) -> str:
    """What an alert does (docs/analysis.md, "How the operator judges"). By its `track` label: canary
    alerts roll the canary back; stable alerts revert a promotion inside the post-promotion
    window; no track: either, as the phase says. Never for an alert that started before the
    revision it would judge was serving (before the canary started, before the promotion)."""
    if not tick.spec.rollback.on_alert:
        return "ignored (spec.rollback.onAlert is false)"
    if track not in ("", "canary", "stable"):
        return f"recorded only: unknown track {track!r} (the track label is canary or stable)"
    started = _time_or_none(starts_at)
    if tick.phase in (*CANARY_PHASES, PROMOTING):
        if track == "stable":
            return "recorded only: a stable-track alert does not judge the canary"
        canary_start = _time_or_none(tick.s.get("rolloutStartedAt"))
        if started is not None and canary_start is not None and started < canary_start:
            return (f"ignored: it started at {starts_at}, before canary {tick.s.get('canaryVersion')} started "
                    f"({tick.s.get('rolloutStartedAt')})")
        tick.rollback(described, "AlertFiring")
        return "canary rolled back"
    if track == "canary":
        return f"recorded only: no canary running (phase {tick.phase})"
    if tick.phase == SUCCEEDED and _within_post_promotion_window(tick):
        promoted = _time_or_none(tick.s.get("promotedAt"))
        if started is not None and promoted is not None and started < promoted:
            return f"ignored: it started at {starts_at}, before the promotion ({tick.s.get('promotedAt')})"
        return _revert_last_promotion(tick, described)
    return f"ignored in phase {tick.phase} (no canary, outside the post-promotion window)"


def _time_or_none(text: Any) -> datetime.datetime | None:
    try:
        return parse_time(str(text)) if text else None
    except ValueError:
        return None  # not a time: the alert still acts (when it started is unknown)


def _within_post_promotion_window(tick: Tick) -> bool:
    since = seconds_between(tick.s.get("promotedAt"), tick.now)
    return since is not None and since <= tick.spec.rollback.post_promotion_window_seconds


def _entry_template(entry: Mapping[str, Any]) -> PodTemplate | None:
    return PodTemplate.from_status(entry.get("template"))


def _previous_promoted(tick: Tick) -> dict[str, Any] | None:
    """The last promoted revision before the one stable runs now (model or pod template differ)."""
    current, template = tick.stable_model, tick.stable_template
    for entry in reversed([entry for entry in tick.s.get("history") or [] if entry.get("outcome") == "Promoted"]):
        if not same_revision(model_from_history(entry), _entry_template(entry), current, template):
            return entry
    return None


def _revert_last_promotion(tick: Tick, reason: str) -> str:
    current = tick.stable_model
    assert current is not None
    previous = _previous_promoted(tick)
    if previous is None:
        return "no earlier promoted revision in history to revert to"
    _point_stable_at(tick, previous, reason)
    return f"stable reverted from {current.version} to {previous['version']}"


def _point_stable_at(tick: Tick, entry: Mapping[str, Any], reason: str) -> None:
    """Stable back to a revision from history: its model and, where recorded, its pod template."""
    current = tick.stable_model
    assert current is not None
    target, template = model_from_history(entry), _entry_template(entry)
    tick.history(current, "RolledBack", reason, tick.stable_template)
    tick.s.update(stableModel=target.to_status(), stableVersion=target.version, failedVersion=current.version)
    if template is not None:
        tick.s["stableTemplate"] = template.to_status()
    # The spec still names the reverted revision: do not roll it forward again by itself.
    tick.s["failedSpec"] = None if tick.spec_is_stable() else tick.spec.fingerprint
    tick.stamp("rolledBackAt")
    tick.enter(ROLLED_BACK, f"stable reverted to {target.version}: {reason}")
    set_condition(tick.s, "Healthy", False, "Reverted", tick.s["message"], tick.now)
    tick.event("StableReverted", tick.s["message"], warning=True)


def _rollback_to(tick: Tick, version: str) -> None:
    entries = [entry for entry in tick.s.get("history") or [] if entry.get("outcome") == "Promoted"]
    matches = [entry for entry in entries if entry.get("version") == version]
    if not matches:
        known = ", ".join(sorted({str(entry.get("version")) for entry in entries})) or "none"
        tick.event("RollbackToIgnored",
                   f"rollback-to {version!r}: not a promoted version in status.history (known: {known})",
                   warning=True)
        return
    if tick.phase in (*CANARY_PHASES, PROMOTING):
        tick.rollback(f"rollback to {version} requested by user", "RollbackRequested")
    target = matches[-1]
    if same_revision(model_from_history(target), _entry_template(target), tick.stable_model, tick.stable_template):
        tick.event("RollbackToIgnored", f"rollback-to {version}: stable already serves it")
        return
    _point_stable_at(tick, target, f"rollback to {version} requested by user")


def _promote_request(tick: Tick) -> None:
    """promote = skip the current wait: a pause step, or a pause the analysis caused. It never
    skips the data gate: promotion itself still needs a successful analysis."""
    steps = tick.spec.strategy.steps
    index = int(tick.s.get("currentStep") or 0)
    if analysis_paused(tick.s):
        _resume(tick, "promote requested")
    elif tick.phase in CANARY_PHASES and index < len(steps) and steps[index].pause:
        tick.s["currentStep"] = index + 1
        tick.stamp("stepStartedAt")
        tick.enter(PROGRESSING, f"step {index} (pause) skipped by promote")
        set_condition(tick.s, "Paused", False, "Resumed", "promote requested", tick.now)
        tick.event("Resumed", tick.s["message"])
    else:
        tick.event("PromoteIgnored", f"nothing to skip in phase {tick.phase} at step {index}", warning=True)


def _resume(tick: Tick, why: str) -> None:
    """Out of a pause: the step's weight comes back (an analysis pause held it at 0) and is
    judged again from a fresh analysis (weightSetAt moves, so older analyses do not count)."""
    counters = dict(tick.s.get("counters") or {})
    counters.update(inconclusive=0, errors=0)
    tick.s["counters"] = counters
    weight = tick.step_weight()
    restored = ""
    if int(tick.s.get("canaryWeight") or 0) != weight:
        if tick.raise_weight(weight, f"canary weight {weight}% restored"):
            restored = f", canary weight {weight}% restored and judged again"
        else:
            restored = f", canary weight {weight}% restored once its pods are ready, then judged again"
    tick.enter(PROGRESSING, f"resumed: {why}{restored}")
    set_condition(tick.s, "Paused", False, "Resumed", why, tick.now)
    tick.event("Resumed", tick.s["message"])
