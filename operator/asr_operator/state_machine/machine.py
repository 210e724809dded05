"""decide(): the state machine's entry point, and wants(): what it will need measured."""
from __future__ import annotations

import copy
import datetime
from collections.abc import Mapping
from typing import Any

from ..spec import InvalidSpec, RolloutSpec
from ..traffic.replica_ratio import split_replicas
from .analysis_gate import analysis_due
from .children_plan import desired_children, handing_over, routed_weight, stable_pod_revision, stable_update_mode
from .conditions import condition_of, set_condition
from .controls import apply_annotations
from .decision import Decision, EmitEvent
from .observations import Needs, Observations
from .phase_handlers import advance, first_version
from .phases import CANARY_PHASES, FAILED_PHASE, PENDING, PROMOTING, ROLLING_BACK
from .tick import POLL_SECONDS, Tick


def wants(spec: RolloutSpec | None, status: Mapping[str, Any], now: datetime.datetime) -> Needs:
    if spec is None:
        return Needs()
    prometheus = spec.analysis is not None and bool(spec.analysis.prometheus_address)
    return Needs(analysis=analysis_due(spec, status, now),
                 served_versions=prometheus and status.get("phase") == PROMOTING,
                 rollback_check=status.get("phase") == ROLLING_BACK,
                 canary_versions=prometheus and status.get("phase") in CANARY_PHASES
                 and bool(status.get("canaryReloading")),
                 # auto decides at the tick that changes the stable version: promotion or rollback
                 stable_room=prometheus and spec.strategy.stable_update == "auto"
                 and status.get("phase") in (*CANARY_PHASES, PROMOTING, ROLLING_BACK))


def decide(spec: RolloutSpec | InvalidSpec, status: Mapping[str, Any] | None, obs: Observations,
           now: datetime.datetime) -> Decision:
    """The next status and the desired state of every child, from what is known now."""
    status = status or {}
    if isinstance(spec, InvalidSpec):
        return _invalid(spec, status, obs, now)

    tick = Tick(spec, status, obs, now)
    tick.adopt_templates()
    if obs.generation is not None:
        tick.s["observedGeneration"] = obs.generation
    if (condition_of(tick.s, "InvalidSpec") or {}).get("status") == "True":
        tick.event("SpecValid", "the spec is valid again")
    set_condition(tick.s, "InvalidSpec", False, "Valid", "", now)

    if tick.stable_model is None:
        first_version(tick)
    elif tick.phase in (PENDING, FAILED_PHASE):
        apply_annotations(tick)  # a retry may clear the failure
        if tick.phase == PENDING or not tick.blocked():
            first_version(tick)
    else:
        apply_annotations(tick)
        advance(tick)
    _stable_update(tick, status.get("stableModel"))
    _common_status(tick)
    if handing_over(spec, tick.s, tick.obs.stable, tick.obs.canary):
        tick.wait(POLL_SECONDS)
    return Decision(
        status=tick.s,
        actions=desired_children(spec, tick.s, tick.obs.stable, tick.obs.canary),
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


def _stable_update(tick: Tick, stable_before: Any) -> None:
    """How the stable pods take a changed stable version (spec.strategy.stableUpdate): under
    rolling the pod template's model revision moves with it. The ConfigMap changes either way:
    it stays the source of truth for the model path, and a rollback reverts it."""
    stable = tick.stable_model
    if stable is None:
        return
    changed = tick.s.get("stableModel") != stable_before
    mode = stable_update_mode(tick.spec.strategy.stable_update, tick.obs.stable_has_room)
    revision = stable_pod_revision(mode, stable, tick.s.get("stablePodRevision"), changed)
    if changed:
        tick.s["stableUpdate"] = mode  # what this change used, for `kubectl get -o yaml` readers
    if revision is not None:
        tick.s["stablePodRevision"] = revision


def _common_status(tick: Tick) -> None:
    s = tick.s
    stable = tick.obs.stable
    ready = stable is not None and stable.ready_for(min(1, tick.spec.server.replicas))
    set_condition(s, "Available", ready, "StableReady" if ready else "StableNotReady",
                  f"stable pods ready: {stable.current_ready if stable else 0}/{tick.spec.server.replicas}", tick.now)
    if tick.spec.traffic.provider == "replicaRatio":
        weight = int(s.get("canaryWeight") or 0)
        s["weightApproximate"] = True
        s["effectiveCanaryWeight"] = split_replicas(tick.spec.server.replicas, weight).effective_weight
    else:
        s["weightApproximate"] = False
        s["effectiveCanaryWeight"] = routed_weight(tick.spec, s, tick.obs.stable, tick.obs.canary)
    s.setdefault("counters", {"failed": 0, "inconclusive": 0, "errors": 0})
