"""The rollout state machine as a pure function: spec + status + observations -> decision.

`decide()` does no I/O and reads no clock. All state lives in `status`, and every action is an
absolute desired state ("canary weight 10", "canary ConfigMap -> v1"), re-issued on every tick.
So a killed operator resumes by calling decide() on the persisted status: nothing is applied
twice, and a rollback decided before the crash is still carried out.

Phases: Pending (first version starting) -> Succeeded; a new spec.model -> Progressing
(steps run, analysis judges) <-> Paused -> Promoting (stable ConfigMap points at the canary's
model, wait for stable pods to serve it) -> Succeeded; or -> RollingBack -> RolledBack.
Failed: the first version never became ready.
"""
from __future__ import annotations

import copy
import datetime
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .analysis.verdict import ERROR, FAILED, INCONCLUSIVE, SUCCESSFUL, Measurement, tick_outcome
from .durations import format_time, parse_time, seconds_between
from .spec import InvalidSpec, ModelRef, RolloutSpec
from .traffic.replica_ratio import split_replicas

PENDING = "Pending"
PROGRESSING = "Progressing"
PAUSED = "Paused"
PROMOTING = "Promoting"
SUCCEEDED = "Succeeded"
ROLLING_BACK = "RollingBack"
ROLLED_BACK = "RolledBack"
FAILED_PHASE = "Failed"
CANARY_PHASES = (PROGRESSING, PAUSED)

ANNOTATION_PREFIX = "asr.rollout.dev/"
PROMOTE = ANNOTATION_PREFIX + "promote"
ABORT = ANNOTATION_PREFIX + "abort"
RETRY = ANNOTATION_PREFIX + "retry"
ROLLBACK_TO = ANNOTATION_PREFIX + "rollback-to"
ALERT = ANNOTATION_PREFIX + "alert"
MANUAL_ANNOTATIONS = (PROMOTE, ABORT, RETRY, ROLLBACK_TO)

HISTORY_LIMIT = 20
POLL_SECONDS = 2.0  # re-check while waiting on pods or on Prometheus during promotion


# --- inputs -------------------------------------------------------------------------------

@dataclass(frozen=True)
class DeploymentState:
    replicas: int  # spec.replicas the live object asks for
    ready: int  # status.readyReplicas
    up_to_date: bool = True  # the Deployment controller has seen the latest spec

    def ready_for(self, wanted: int) -> bool:
        return self.up_to_date and self.replicas >= wanted and self.ready >= wanted


@dataclass(frozen=True)
class AnalysisRun:
    measurements: tuple[Measurement, ...]


@dataclass(frozen=True)
class Observations:
    generation: int | None = None
    annotations: Mapping[str, str] = field(default_factory=dict)
    stable: DeploymentState | None = None
    canary: DeploymentState | None = None
    traffic_weight: int | None = None  # canary weight the router reports now
    canary_config: ModelRef | None = None  # what the canary ConfigMap points at now
    analysis: AnalysisRun | None = None  # measured this tick (only when wants().analysis)
    served_versions: Mapping[str, int] | None = None  # stable pods per version (wants().served_versions)
    canary_versions: Mapping[str, int] | None = None  # canary pods per version (wants().canary_versions)


@dataclass(frozen=True)
class Needs:
    """What decide() will want measured this tick; the I/O layer gathers only that."""

    analysis: bool = False
    served_versions: bool = False
    rollback_check: bool = False  # the live weight and canary ConfigMap, to confirm a rollback
    canary_versions: bool = False  # canary pods per version, after a superseding hot reload


# --- outputs ------------------------------------------------------------------------------

@dataclass(frozen=True)
class EnsureServices:
    replica_ratio: bool


@dataclass(frozen=True)
class SetWeight:
    weight: int


@dataclass(frozen=True)
class EnsureConfigMap:
    track: str
    model: ModelRef


@dataclass(frozen=True)
class EnsureDeployment:
    track: str
    replicas: int
    version: str


@dataclass(frozen=True)
class EmitEvent:
    type: str  # Normal | Warning
    reason: str
    message: str


Action = EnsureServices | SetWeight | EnsureConfigMap | EnsureDeployment


@dataclass(frozen=True)
class Decision:
    status: dict[str, Any]
    actions: tuple[Action, ...]  # in this order: services, weight, ConfigMaps, Deployments
    events: tuple[EmitEvent, ...] = ()
    remove_before: tuple[str, ...] = ()  # manual annotations: removed before status is written
    remove_after: tuple[str, ...] = ()  # the alert annotation: removed after (fingerprint dedupes)
    requeue_after: float | None = None  # seconds; 0 = observe and decide again right away


# --- helpers ------------------------------------------------------------------------------

def set_condition(status: dict[str, Any], kind: str, value: bool, reason: str, message: str,
                  now: datetime.datetime) -> None:
    conditions: list[dict[str, Any]] = status.setdefault("conditions", [])
    text = "True" if value else "False"
    for condition in conditions:
        if condition.get("type") == kind:
            if condition.get("status") != text:
                condition["lastTransitionTime"] = format_time(now)
            condition.update(status=text, reason=reason, message=message)
            return
    conditions.append({"type": kind, "status": text, "reason": reason, "message": message,
                       "lastTransitionTime": format_time(now)})


def condition_of(status: Mapping[str, Any], kind: str) -> dict[str, Any] | None:
    for condition in status.get("conditions") or []:
        if condition.get("type") == kind:
            return dict(condition)
    return None


def desired_replicas(spec: RolloutSpec, status: Mapping[str, Any]) -> tuple[int, int]:
    """(stable, canary) pod counts for the phase and weight in `status`."""
    total = spec.server.replicas
    canary_on = status.get("phase") in (*CANARY_PHASES, PROMOTING) and status.get("canaryModel")
    if not canary_on:
        return total, 0
    weight = int(status.get("canaryWeight") or 0)
    if spec.traffic.provider == "replicaRatio":
        split = split_replicas(total, weight)
        if status.get("phase") == PROMOTING:
            # The stable pods take all traffic back once they serve the new version: full size.
            return total, split.canary
        return split.stable, split.canary
    return total, total


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


def wants(spec: RolloutSpec | None, status: Mapping[str, Any], now: datetime.datetime) -> Needs:
    if spec is None:
        return Needs()
    prometheus = spec.analysis is not None and bool(spec.analysis.prometheus_address)
    return Needs(analysis=analysis_due(spec, status, now),
                 served_versions=prometheus and status.get("phase") == PROMOTING,
                 rollback_check=status.get("phase") == ROLLING_BACK,
                 canary_versions=prometheus and status.get("phase") in CANARY_PHASES
                 and bool(status.get("canaryReloading")))


def _history_entry(model: ModelRef, outcome: str, reason: str, now: datetime.datetime) -> dict[str, Any]:
    entry: dict[str, Any] = {"version": model.version, "name": model.name, "path": model.path, "outcome": outcome,
             "reason": reason, "at": format_time(now)}
    if model.sha256:
        entry["sha256"] = model.sha256
    if model.vad_path:
        entry["vadPath"] = model.vad_path
    if model.options:
        entry["options"] = dict(model.options)
    return entry


def _model_from_history(entry: Mapping[str, Any]) -> ModelRef:
    return ModelRef(name=str(entry.get("name", "")), version=str(entry["version"]), path=str(entry.get("path", "")),
                    sha256=entry.get("sha256") or None, vad_path=entry.get("vadPath") or None,
                    options=dict(entry.get("options") or {}))


def _parse_alert(text: str | None) -> dict[str, Any] | None:
    if not text:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None  # the receiver always writes JSON; anything else was not an alert
    return data if isinstance(data, dict) else None


# --- the machine --------------------------------------------------------------------------

class _Tick:
    """One decide() run: a working copy of status plus what to emit. Internal to decide()."""

    def __init__(self, spec: RolloutSpec, status: Mapping[str, Any], obs: Observations,
                 now: datetime.datetime):
        self.spec = spec
        self.s: dict[str, Any] = copy.deepcopy(dict(status))
        self.obs = obs
        self.now = now
        self.events: list[EmitEvent] = []
        self.remove_before: list[str] = []
        self.remove_after: list[str] = []
        self.requeue: list[float] = []

    # small vocabulary
    @property
    def phase(self) -> str:
        return str(self.s.get("phase") or "")

    def event(self, reason: str, message: str, warning: bool = False) -> None:
        self.events.append(EmitEvent("Warning" if warning else "Normal", reason, message))

    def enter(self, phase: str, message: str) -> None:
        self.s["phase"] = phase
        self.s["message"] = message

    def stamp(self, key: str) -> None:
        self.s[key] = format_time(self.now)

    def wait(self, seconds: float) -> None:
        self.requeue.append(max(0.0, seconds))

    @property
    def stable_model(self) -> ModelRef | None:
        return ModelRef.from_status(self.s.get("stableModel"))

    @property
    def canary_model(self) -> ModelRef | None:
        return ModelRef.from_status(self.s.get("canaryModel"))

    def history(self, model: ModelRef, outcome: str, reason: str) -> None:
        entries = list(self.s.get("history") or [])
        entries.append(_history_entry(model, outcome, reason, self.now))
        self.s["history"] = entries[-HISTORY_LIMIT:]

    def blocked(self) -> bool:
        """The spec names a version that failed, and neither spec nor a retry changed that."""
        return bool(self.s.get("failedSpec")) and self.s.get("failedSpec") == self.spec.fingerprint

    # transitions
    def start_canary(self, reason: str, reload: bool = False) -> None:
        """`reload`: running canary pods hot-reload the new model (a superseded canary); no
        traffic goes to them until they report serving it."""
        model = self.spec.model
        self.s.update(canaryModel=model.to_status(), canaryVersion=model.version, canaryWeight=0,
                      currentStep=0, counters={"failed": 0, "inconclusive": 0, "errors": 0},
                      analysis={}, failedSpec=None, canaryReloading=reload or None)
        # New canary pods are not ready yet: the progress deadline counts from now.
        for key in ("stepStartedAt", "rolloutStartedAt", "weightSetAt", "canaryUnreadySince"):
            self.stamp(key)
        self.enter(PROGRESSING, f"canary {model.version} starting: {reason}")
        set_condition(self.s, "Progressing", True, "CanaryStarted", self.s["message"], self.now)
        set_condition(self.s, "Paused", False, "Running", "", self.now)
        self.event("CanaryStarted", f"canary {model.version} (stable {self.s.get('stableVersion')}): {reason}")
        self.wait(0)

    def rollback(self, reason: str, condition_reason: str, failed: bool = True) -> None:
        """Traffic back to stable first, canary ConfigMap reverted, canary scaled to zero.
        `failed=False`: the canary was withdrawn (spec changed back), not judged bad."""
        canary = self.canary_model
        if self.phase == PROMOTING and self.s.get("previousStableModel"):
            # A promotion already pointed the stable ConfigMap at the canary: point it back.
            self.s["stableModel"] = self.s["previousStableModel"]
            self.s["stableVersion"] = self.s["stableModel"].get("version")
        if canary is not None and failed:
            self.history(canary, "RolledBack", reason)
            self.s["failedVersion"] = canary.version
        self.s["failedSpec"] = self.spec.fingerprint if failed else None
        self.s.update(canaryWeight=0, canaryModel=None, canaryVersion=None, canaryUnreadySince=None,
                      previousStableModel=None)
        self.stamp("rolledBackAt")
        self.enter(ROLLING_BACK, f"rolling back {canary.version if canary else ''}: {reason}".strip())
        set_condition(self.s, "Progressing", False, condition_reason, reason, self.now)
        set_condition(self.s, "Healthy", False, condition_reason, reason, self.now)
        set_condition(self.s, "Paused", False, "RolledBack", "", self.now)
        self.event("RollingBack", self.s["message"], warning=True)
        self.wait(0)

    def begin_promotion(self) -> None:
        canary = self.canary_model
        assert canary is not None
        self.s["previousStableModel"] = self.s.get("stableModel")
        self.s["stableModel"] = canary.to_status()
        self.s["stableVersion"] = canary.version
        self.stamp("stepStartedAt")
        self.enter(PROMOTING, f"promoting {canary.version}: stable ConfigMap updated, waiting for stable pods to serve it")
        set_condition(self.s, "Progressing", True, "Promoting", self.s["message"], self.now)
        self.event("Promoting", self.s["message"])
        self.wait(0)

    def finish_promotion(self, how: str) -> None:
        canary = self.canary_model
        assert canary is not None
        self.history(canary, "Promoted", how)
        self.s.update(canaryWeight=0, canaryModel=None, canaryVersion=None, previousStableModel=None,
                      failedSpec=None, failedVersion=None)
        self.stamp("promotedAt")
        self.enter(SUCCEEDED, f"{canary.version} promoted: {how}")
        set_condition(self.s, "Progressing", False, "Promoted", self.s["message"], self.now)
        set_condition(self.s, "Healthy", True, "Promoted", self.s["message"], self.now)
        self.event("Promoted", self.s["message"])


def decide(spec: RolloutSpec | InvalidSpec, status: Mapping[str, Any] | None, obs: Observations,
           now: datetime.datetime) -> Decision:
    """The next status and the desired state of every child, from what is known now."""
    status = status or {}
    if isinstance(spec, InvalidSpec):
        return _invalid(spec, status, obs, now)

    tick = _Tick(spec, status, obs, now)
    if obs.generation is not None:
        tick.s["observedGeneration"] = obs.generation
    if (condition_of(tick.s, "InvalidSpec") or {}).get("status") == "True":
        tick.event("SpecValid", "the spec is valid again")
    set_condition(tick.s, "InvalidSpec", False, "Valid", "", now)

    if tick.stable_model is None:
        _initial(tick)
    elif tick.phase in (PENDING, FAILED_PHASE):
        _annotations(tick)  # a retry may clear the failure
        if tick.phase == PENDING or not tick.blocked():
            _initial(tick)
    else:
        _annotations(tick)
        _advance(tick)
    _common_status(tick)
    return Decision(
        status=tick.s,
        actions=_desired_children(spec, tick.s),
        events=tuple(tick.events),
        remove_before=tuple(tick.remove_before),
        remove_after=tuple(tick.remove_after),
        requeue_after=min(tick.requeue) if tick.requeue else None,
    )


def _invalid(error: InvalidSpec, status: Mapping[str, Any], obs: Observations,
             now: datetime.datetime) -> Decision:
    """Create and change nothing; say what is wrong. Fixing the spec resumes from status."""
    s = copy.deepcopy(dict(status))
    if obs.generation is not None:
        s["observedGeneration"] = obs.generation
    message = str(error)
    events: tuple[EmitEvent, ...] = ()
    previous = condition_of(s, "InvalidSpec") or {}
    if previous.get("status") != "True" or previous.get("message") != message:
        events = (EmitEvent("Warning", "InvalidSpec", message),)
    set_condition(s, "InvalidSpec", True, "InvalidSpec", message, now)
    if not s.get("phase"):
        s["phase"] = FAILED_PHASE
    s["message"] = f"invalid spec: {message}"
    return Decision(status=s, actions=(), events=events)


def _initial(tick: _Tick) -> None:
    """The first version: no canary (nothing to compare with); Succeeded once stable is ready."""
    spec = tick.spec
    stable = tick.stable_model
    if stable is None or not spec.model.same_as(stable) or tick.phase == FAILED_PHASE:
        tick.s.update(stableModel=spec.model.to_status(), stableVersion=spec.model.version,
                      canaryWeight=0, currentStep=None, failedSpec=None, canaryModel=None, canaryVersion=None)
        tick.stamp("rolloutStartedAt")
        tick.enter(PENDING, f"starting the first version {spec.model.version}")
        set_condition(tick.s, "Progressing", True, "InitialDeploy", tick.s["message"], tick.now)
        tick.event("InitialDeploy", tick.s["message"])
    stable_ready = tick.obs.stable is not None and tick.obs.stable.ready_for(spec.server.replicas)
    if stable_ready:
        tick.history(spec.model, "Promoted", "first version")
        tick.stamp("promotedAt")
        tick.enter(SUCCEEDED, f"{spec.model.version} serving")
        set_condition(tick.s, "Progressing", False, "Ready", tick.s["message"], tick.now)
        tick.event("Ready", tick.s["message"])
        return
    waited = seconds_between(tick.s.get("rolloutStartedAt"), tick.now) or 0.0
    deadline = spec.strategy.progress_deadline_seconds
    if waited >= deadline:
        reason = f"stable pods of {spec.model.version} not ready after {deadline:g}s (progressDeadlineSeconds)"
        tick.s["failedSpec"] = spec.fingerprint
        tick.s["failedVersion"] = spec.model.version
        tick.enter(FAILED_PHASE, reason)
        set_condition(tick.s, "Progressing", False, "ProgressDeadlineExceeded", reason, tick.now)
        tick.event("ProgressDeadlineExceeded", reason, warning=True)
        return
    tick.wait(min(POLL_SECONDS, deadline - waited))


def _annotations(tick: _Tick) -> None:
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


def _alert(tick: _Tick, alert: dict[str, Any] | None) -> None:
    if alert is None:
        tick.event("AlertIgnored", "the asr.rollout.dev/alert annotation is not a JSON object like "
                                   '{"alertname": ..., "fingerprint": ..., "startsAt": ...}; ignored', warning=True)
        return
    fingerprint = str(alert.get("fingerprint") or "")
    last = tick.s.get("lastAlert") or {}
    if fingerprint and last.get("fingerprint") == fingerprint and last.get("startsAt", "") == alert.get("startsAt", ""):
        return  # Alertmanager repeats a firing alert; this episode was handled already
    name = str(alert.get("alertname") or "alert")
    summary = str(alert.get("summary") or "")
    tick.s["lastAlert"] = dict(alert)  # the same object as the annotation (docs/contracts.md)
    described = f"alert {name} firing" + (f": {summary}" if summary else "")
    if not tick.spec.rollback.on_alert:
        action = "ignored (spec.rollback.onAlert is false)"
    elif tick.phase in (*CANARY_PHASES, PROMOTING):
        action = "canary rolled back"
        tick.rollback(described, "AlertFiring")
    elif tick.phase == SUCCEEDED and _within_post_promotion_window(tick):
        action = _revert_last_promotion(tick, described)
    else:
        action = f"ignored in phase {tick.phase} (no canary, outside the post-promotion window)"
    set_condition(tick.s, "Alert", True, "AlertFiring", f"{described}; {action}", tick.now)
    tick.event("AlertReceived", f"{described}; {action}", warning=True)


def _within_post_promotion_window(tick: _Tick) -> bool:
    since = seconds_between(tick.s.get("promotedAt"), tick.now)
    return since is not None and since <= tick.spec.rollback.post_promotion_window_seconds


def _previous_promoted(tick: _Tick, before_version: str) -> dict[str, Any] | None:
    promoted = [entry for entry in tick.s.get("history") or [] if entry.get("outcome") == "Promoted"]
    for entry in reversed(promoted[:-1] if promoted and promoted[-1].get("version") == before_version else promoted):
        if entry.get("version") != before_version:
            return entry
    return None


def _revert_last_promotion(tick: _Tick, reason: str) -> str:
    current = tick.stable_model
    assert current is not None
    previous = _previous_promoted(tick, current.version)
    if previous is None:
        return "no earlier promoted version in history to revert to"
    _point_stable_at(tick, _model_from_history(previous), current, reason)
    return f"stable reverted from {current.version} to {previous['version']}"


def _point_stable_at(tick: _Tick, target: ModelRef, current: ModelRef, reason: str) -> None:
    tick.history(current, "RolledBack", reason)
    tick.s.update(stableModel=target.to_status(), stableVersion=target.version, failedVersion=current.version)
    # The spec still names the reverted version: do not roll it forward again by itself.
    tick.s["failedSpec"] = None if tick.spec.model.same_as(target) else tick.spec.fingerprint
    tick.stamp("rolledBackAt")
    tick.enter(ROLLED_BACK, f"stable reverted to {target.version}: {reason}")
    set_condition(tick.s, "Healthy", False, "Reverted", tick.s["message"], tick.now)
    tick.event("StableReverted", tick.s["message"], warning=True)


def _rollback_to(tick: _Tick, version: str) -> None:
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
    current = tick.stable_model
    assert current is not None
    target = _model_from_history(matches[-1])
    if current.same_as(target):
        tick.event("RollbackToIgnored", f"rollback-to {version}: stable already serves it")
        return
    _point_stable_at(tick, target, current, f"rollback to {version} requested by user")


def _promote_request(tick: _Tick) -> None:
    """promote = skip the current wait: a pause step, or a pause the analysis caused. It never
    skips the data gate: promotion itself still needs a successful analysis."""
    steps = tick.spec.strategy.steps
    index = int(tick.s.get("currentStep") or 0)
    if tick.phase == PAUSED and (condition_of(tick.s, "Paused") or {}).get("reason") != "ManualPause":
        _resume(tick, "promote requested")
    elif tick.phase in CANARY_PHASES and index < len(steps) and steps[index].pause:
        tick.s["currentStep"] = index + 1
        tick.stamp("stepStartedAt")
        tick.enter(PROGRESSING, f"step {index} (pause) skipped by promote")
        set_condition(tick.s, "Paused", False, "Resumed", "promote requested", tick.now)
        tick.event("Resumed", tick.s["message"])
    else:
        tick.event("PromoteIgnored", f"nothing to skip in phase {tick.phase} at step {index}", warning=True)


def _resume(tick: _Tick, why: str) -> None:
    counters = dict(tick.s.get("counters") or {})
    counters.update(inconclusive=0, errors=0)
    tick.s["counters"] = counters
    tick.enter(PROGRESSING, f"resumed: {why}")
    set_condition(tick.s, "Paused", False, "Resumed", why, tick.now)
    tick.event("Resumed", tick.s["message"])


def _advance(tick: _Tick) -> None:
    spec = tick.spec
    phase = tick.phase
    if phase == ROLLING_BACK:
        _finish_rollback(tick)
        return
    if phase == PROMOTING:
        _promoting(tick)
        return
    if phase in CANARY_PHASES:
        canary = tick.canary_model
        if canary is None:  # status edited by hand: start over cleanly
            tick.enter(SUCCEEDED, "no canary in status")
        elif not spec.model.same_as(canary):
            if spec.model.same_as(tick.stable_model):
                tick.rollback(f"spec.model changed back to the stable {spec.model.version}", "Superseded",
                              failed=False)
            else:
                tick.event("Superseded", f"spec changed mid-rollout: canary {canary.version} replaced by {spec.model.version}")
                tick.start_canary(f"supersedes {canary.version}", reload=True)
            return
        else:
            _canary(tick)
            return
    # Succeeded, RolledBack, Failed-with-stable: is there something new to roll out?
    if spec.model.same_as(tick.stable_model):
        if tick.phase != SUCCEEDED:
            tick.s["failedSpec"] = None
            tick.enter(SUCCEEDED, f"spec names the stable version {spec.model.version}")
        return
    if tick.blocked():
        return  # the failed version waits for a spec change or the retry annotation
    tick.start_canary(f"spec.model is {spec.model.version}")


def _finish_rollback(tick: _Tick) -> None:
    """RollingBack -> RolledBack once traffic and the canary ConfigMap are seen reverted."""
    stable = tick.stable_model
    obs = tick.obs
    if obs.traffic_weight == 0 and stable is not None and stable.same_as(obs.canary_config):
        tick.enter(ROLLED_BACK, str(tick.s.get("message", "")).replace("rolling back", "rolled back", 1))
        tick.event("RolledBack", tick.s["message"], warning=True)
    else:
        tick.wait(POLL_SECONDS)


def _promoting(tick: _Tick) -> None:
    canary = tick.canary_model
    assert canary is not None
    spec = tick.spec
    stable = tick.obs.stable
    stable_ready = stable is not None and stable.ready_for(spec.server.replicas)
    served = tick.obs.served_versions
    checks_prometheus = spec.analysis is not None and bool(spec.analysis.prometheus_address)
    if checks_prometheus:
        done = stable_ready and served is not None and set(served) == {canary.version} and served[canary.version] >= 1
    else:
        done = stable_ready  # no Prometheus to ask: the stable pods' readiness is all there is
    if done:
        tick.finish_promotion("stable pods serve it" + ("" if checks_prometheus else " (readiness only: no Prometheus)"))
        return
    waited = seconds_between(tick.s.get("stepStartedAt"), tick.now) or 0.0
    deadline = spec.strategy.progress_deadline_seconds
    if waited >= deadline:
        seen = ", ".join(f"{version}: {count}" for version, count in sorted((served or {}).items())) or "nothing"
        tick.rollback(f"stable pods did not serve {canary.version} within {deadline:g}s (serving {seen})",
                      "PromotionTimedOut")
        return
    tick.wait(min(POLL_SECONDS, deadline - waited))


def _canary(tick: _Tick) -> None:
    spec = tick.spec
    _, canary_wanted = desired_replicas(spec, tick.s)
    canary_state = tick.obs.canary
    ready = canary_wanted == 0 or (canary_state is not None and canary_state.ready_for(canary_wanted))
    if ready and tick.s.get("canaryReloading"):
        if canary_wanted == 0:
            # No canary pod runs (replicaRatio at weight 0), so none can report a reload; pods
            # started later read the new ConfigMap from the start: their readiness says it then.
            tick.s["canaryReloading"] = None
        else:
            ready = _canary_reloaded(tick)
    deadline = spec.strategy.progress_deadline_seconds
    if not ready:
        if not tick.s.get("canaryUnreadySince"):
            tick.stamp("canaryUnreadySince")
        waited = seconds_between(tick.s.get("canaryUnreadySince"), tick.now) or 0.0
        if waited >= deadline:
            tick.rollback(f"canary pods not ready after {deadline:g}s (progressDeadlineSeconds)",
                          "ProgressDeadlineExceeded")
            return
        tick.wait(min(POLL_SECONDS, deadline - waited))
    else:
        tick.s["canaryUnreadySince"] = None

    if tick.obs.analysis is not None and analysis_due(spec, tick.s, tick.now):
        if _record_analysis(tick, tick.obs.analysis):
            return  # rolled back: act on it now, in this same tick
    if tick.phase == PAUSED and (condition_of(tick.s, "Paused") or {}).get("reason") != "ManualPause":
        _schedule_analysis(tick)
        return  # an analysis pause waits for a person (promote or retry)
    if ready:
        _run_steps(tick)
    _schedule_analysis(tick)


def _canary_reloaded(tick: _Tick) -> bool:
    """After a superseding spec change the running canary pods hot-reload: they are ready all
    along (serving the old model), so readiness alone cannot say the new model serves."""
    analysis = tick.spec.analysis
    version = tick.s.get("canaryVersion")
    served = tick.obs.canary_versions
    if analysis is None or not analysis.prometheus_address:
        reloaded = True  # no Prometheus to ask: readiness is all there is
    else:
        reloaded = served is not None and set(served) == {version}
    if reloaded:
        tick.s["canaryReloading"] = None
        tick.event("CanaryReloaded", f"canary pods serve {version}")
    return reloaded


def _schedule_analysis(tick: _Tick) -> None:
    remaining = seconds_until_analysis(tick.spec, tick.s, tick.now)
    if remaining is not None:
        tick.wait(remaining)


def _record_analysis(tick: _Tick, run: AnalysisRun) -> bool:
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


def _pause(tick: _Tick, reason: str, message: str) -> None:
    tick.enter(PAUSED, f"paused: {message}; promote or retry to resume, abort to roll back")
    set_condition(tick.s, "Paused", True, reason, message, tick.now)
    tick.event("Paused", tick.s["message"], warning=True)


def _gate_open(tick: _Tick) -> bool:
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


def _run_steps(tick: _Tick) -> None:
    steps = tick.spec.strategy.steps
    for _ in range(len(steps) + 1):
        index = int(tick.s.get("currentStep") or 0)
        if index >= len(steps):
            if _gate_open(tick):
                tick.begin_promotion()
            return
        step = steps[index]
        if step.set_weight is not None:
            if int(tick.s.get("canaryWeight") or 0) != step.set_weight:
                tick.s["canaryWeight"] = step.set_weight
                tick.stamp("weightSetAt")
                tick.event("SetWeight", f"step {index}: canary weight {step.set_weight}%")
            tick.s["currentStep"] = index + 1
            tick.stamp("stepStartedAt")
            tick.enter(PROGRESSING, f"canary {tick.s.get('canaryVersion')} at {step.set_weight}%")
            continue
        if step.is_manual_pause:
            if tick.phase != PAUSED:
                tick.enter(PAUSED, f"step {index}: paused until promoted (asr-rollout promote)")
                set_condition(tick.s, "Paused", True, "ManualPause", tick.s["message"], tick.now)
                tick.event("Paused", tick.s["message"])
            return
        waited = seconds_between(tick.s.get("stepStartedAt"), tick.now) or 0.0
        remaining = (step.pause_seconds or 0.0) - waited
        if remaining > 0:
            tick.wait(remaining)
            return
        if not _gate_open(tick):
            return  # the next analysis tick is scheduled; inconclusive ones count toward a pause
        tick.s["currentStep"] = index + 1
        tick.stamp("stepStartedAt")


def _common_status(tick: _Tick) -> None:
    s = tick.s
    stable = tick.obs.stable
    ready = stable is not None and stable.ready_for(min(1, tick.spec.server.replicas))
    set_condition(s, "Available", ready, "StableReady" if ready else "StableNotReady",
                  f"stable pods ready: {stable.ready if stable else 0}/{tick.spec.server.replicas}", tick.now)
    if tick.spec.traffic.provider == "replicaRatio":
        weight = int(s.get("canaryWeight") or 0)
        s["weightApproximate"] = True
        s["effectiveCanaryWeight"] = split_replicas(tick.spec.server.replicas, weight).effective_weight
    else:
        s["weightApproximate"] = False
        s["effectiveCanaryWeight"] = int(s.get("canaryWeight") or 0)
    s.setdefault("counters", {"failed": 0, "inconclusive": 0, "errors": 0})


def _desired_children(spec: RolloutSpec, s: Mapping[str, Any]) -> tuple[Action, ...]:
    """Desired state of every child for this status. Order matters for safety: traffic first
    (a rollback takes weight away before the canary ConfigMap changes), then ConfigMaps."""
    stable = ModelRef.from_status(s.get("stableModel"))
    if stable is None:
        return ()
    canary = ModelRef.from_status(s.get("canaryModel")) or stable
    stable_replicas, canary_replicas = desired_replicas(spec, s)
    weight = int(s.get("canaryWeight") or 0) if s.get("phase") in (*CANARY_PHASES, PROMOTING) else 0
    return (
        EnsureServices(replica_ratio=spec.traffic.provider == "replicaRatio"),
        SetWeight(weight),
        EnsureConfigMap("stable", stable),
        EnsureConfigMap("canary", canary),
        EnsureDeployment("stable", stable_replicas, stable.version),
        EnsureDeployment("canary", canary_replicas, canary.version),
    )
