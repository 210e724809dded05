"""The desired state of every child (Services, traffic weight, ConfigMaps, Deployments, disruption
budgets) for a status, and the pod counts of each track.

Pod counts (README, "Canary sizing"):
- gatewayAPI: the canary runs ceil(replicas x weight / 100) pods, at least 1 while a canary
  exists (or `spec.strategy.canaryReplicas`); stable keeps `replicas`. A weight that needs more
  canary pods is written only once they are ready (`status.pendingWeight` holds it meanwhile).
- gatewayAPI with `spec.strategy.dynamicStableScale`: stable also follows its share
  (ceil(replicas x (100 - weight) / 100), at least 1); the route never gives stable more traffic
  than its ready pods carry, so traffic returns to it (rollback, analysis pause, promotion) as its
  pods turn ready; a promotion grows stable only within the peak the steps already needed.
- replicaRatio: the pod counts are the traffic split (`split_replicas`).
In every mode that moves stable pods, a track goes down only as far as the other track's ready
pods make up for it: ready stable + ready canary never falls below `replicas` while both are
healthy (stable shrinks after the canary pods that take its share are ready; a canary going away
waits for stable's pods).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ..spec import ModelRef, PodTemplate, RolloutSpec
from ..traffic.replica_ratio import split_replicas
from .decision import Action, EnsureConfigMap, EnsureDeployment, EnsureDisruptionBudgets, EnsureServices, SetWeight
from .observations import DeploymentState
from .phases import CANARY_PHASES, PROMOTING
from .shadow_stage import shadow_percent


def canary_exists(status: Mapping[str, Any]) -> bool:
    return status.get("phase") in (*CANARY_PHASES, PROMOTING) and bool(status.get("canaryModel"))


def canary_pods_for(spec: RolloutSpec, weight: int) -> int:
    """Canary pods that carry `weight` percent of the traffic while a canary exists."""
    total = spec.server.replicas
    if spec.traffic.provider == "replicaRatio":
        return split_replicas(total, weight).canary
    if spec.strategy.canary_replicas is not None:
        return spec.strategy.canary_replicas
    return max(1, math.ceil(total * min(max(weight, 0), 100) / 100))


def dynamic_stable(spec: RolloutSpec) -> bool:
    return spec.traffic.provider == "gatewayAPI" and spec.strategy.dynamic_stable_scale


def stable_pods_for(spec: RolloutSpec, weight: int) -> int:
    """Stable pods while the canary holds `weight` percent."""
    total = spec.server.replicas
    if spec.traffic.provider == "replicaRatio":
        return split_replicas(total, weight).stable
    if dynamic_stable(spec):
        return max(1, math.ceil(total * (100 - min(max(weight, 0), 100)) / 100))
    return total


def peak_pods(spec: RolloutSpec) -> int:
    """dynamicStableScale: the most pods both tracks need at once while the steps raise the
    weight (stable still sized for the old weight, canary already for the new one). A promotion
    hands traffic back within it."""
    peak, weight = spec.server.replicas + 1, 0
    for step in spec.strategy.steps:
        if step.set_weight is None:
            continue
        if step.set_weight > weight:
            peak = max(peak, stable_pods_for(spec, weight) + canary_pods_for(spec, step.set_weight))
        weight = step.set_weight
    return peak


def _written_weight(status: Mapping[str, Any]) -> int:
    return int(status.get("canaryWeight") or 0) if status.get("phase") in (*CANARY_PHASES, PROMOTING) else 0


def routed_weight(spec: RolloutSpec, status: Mapping[str, Any], stable: DeploymentState | None = None,
                  canary: DeploymentState | None = None) -> int:
    """The canary weight the route carries now: the status' weight, except that with
    dynamicStableScale stable never gets more traffic than its ready pods carry (while ready
    canary pods can carry the rest)."""
    weight = _written_weight(status)
    if not dynamic_stable(spec) or stable is None or canary is None:
        return weight
    if status.get("phase") == PROMOTING:
        weight = 0  # stable runs the new revision now: all traffic goes back, as fast as its pods take it
    total = spec.server.replicas
    uncovered = 100 - math.floor(100 * min(stable.current_ready, total) / total)
    carried = math.floor(100 * min(canary.current_ready, total) / total)
    return max(weight, min(uncovered, carried))


def replica_targets(spec: RolloutSpec, status: Mapping[str, Any]) -> tuple[int, int]:
    """(stable, canary) pod counts the weights in `status` ask for. The canary is sized for the
    larger of the written weight and a pending one (pods first, traffic once they are ready)."""
    total = spec.server.replicas
    if not canary_exists(status):
        return total, 0
    weight = int(status.get("canaryWeight") or 0)
    if spec.traffic.provider == "replicaRatio" and shadow_percent(status) is not None:
        # One canary pod to take the copies; the combined Service selects only stable pods at
        # weight 0 (children.combined_service), so no user request reaches it.
        return total, 1
    pending = int(status.get("pendingWeight") or 0) if status.get("phase") in CANARY_PHASES else 0
    canary = canary_pods_for(spec, max(weight, pending))
    if status.get("phase") == PROMOTING:
        # The stable pods take all traffic back once they serve the new version: full size.
        return total, canary
    return stable_pods_for(spec, weight), canary


def model_revision(model: ModelRef) -> str:
    """The stable pod template's model revision: changing it makes Kubernetes replace the pods."""
    return f"{model.version}@{model.sha256[:16] if model.sha256 else model.path}"


def stable_update_mode(setting: str, every_pod_has_room: bool | None) -> str:
    """hot or rolling for this change of the stable version. auto takes hot only where every
    stable pod said it has room to load beside; not knowing (no Prometheus answer, a pod that
    reports nothing) is rolling: a restart is slower but never runs a GPU out of memory."""
    if setting == "auto":
        return "hot" if every_pod_has_room is True else "rolling"
    return setting


def every_pod_has_room(can_load_beside: list[float], stable_pods: int) -> bool | None:
    """From asr_model_can_load_beside of the stable pods: True when each of `stable_pods` reports
    1, False when one reports 0, None when fewer pods report than run (unknown)."""
    if any(value < 1 for value in can_load_beside):
        return False
    if stable_pods < 1 or len(can_load_beside) < stable_pods:
        return None
    return True


def stable_pod_revision(mode: str, stable: ModelRef, previous: str | None, stable_changed: bool) -> str | None:
    """The revision on the stable pod template. It moves only when the stable version changes
    under rolling; under hot it stays what it was, so switching modes alone restarts nothing."""
    if stable_changed and mode == "rolling":
        return model_revision(stable)
    return previous


def _hand_over(target: int, live: DeploymentState | None, other_ready: int, total: int) -> int:
    """A track going down keeps the pods the other track's ready pods cannot yet replace."""
    current = live.replicas if live is not None else 0
    if target >= current:
        return target
    return max(target, min(current, total - other_ready))


def desired_replicas(spec: RolloutSpec, status: Mapping[str, Any], stable: DeploymentState | None = None,
                     canary: DeploymentState | None = None) -> tuple[int, int]:
    """(stable, canary) pod counts for the phase and weights in `status`, given the live tracks."""
    stable_target, canary_target = replica_targets(spec, status)
    if spec.traffic.provider != "replicaRatio" and not dynamic_stable(spec):
        return stable_target, canary_target  # stable keeps full size: traffic moves by the route alone
    total = spec.server.replicas
    stable_ready = stable.current_ready if stable is not None else 0
    canary_ready = canary.current_ready if canary is not None else 0
    if dynamic_stable(spec) and canary_exists(status):
        if status.get("phase") == PROMOTING and stable is not None and canary is not None:
            # Traffic comes back to stable as its pods turn ready; the canary shrinks with its share;
            # stable grows only within the peak the steps needed (no doubling at the end).
            stable_target = min(total, max(stable.replicas, peak_pods(spec) - canary.replicas))
        canary_target = max(canary_target if status.get("phase") != PROMOTING else 0,
                            canary_pods_for(spec, routed_weight(spec, status, stable, canary)))
    return (_hand_over(stable_target, stable, canary_ready, total),
            _hand_over(canary_target, canary, stable_ready, total))


def handing_over(spec: RolloutSpec, status: Mapping[str, Any], stable: DeploymentState | None,
                 canary: DeploymentState | None) -> bool:
    """A track waits for the other's pods (or traffic waits for stable's): look again soon."""
    targets = replica_targets(spec, status)
    if canary_exists(status) and status.get("phase") == PROMOTING:
        return False  # the promotion polls by itself
    return (desired_replicas(spec, status, stable, canary) != targets
            or routed_weight(spec, status, stable, canary) != _written_weight(status))


def desired_children(spec: RolloutSpec, s: Mapping[str, Any], stable_live: DeploymentState | None = None,
                     canary_live: DeploymentState | None = None) -> tuple[Action, ...]:
    """Desired state of every child for this status. Order matters for safety: traffic first
    (a rollback takes weight away before the canary ConfigMap changes), then ConfigMaps."""
    stable = ModelRef.from_status(s.get("stableModel"))
    if stable is None:
        return ()
    canary = ModelRef.from_status(s.get("canaryModel")) or stable
    # Each track runs its own revision's pod template; the idle canary Deployment keeps stable's.
    stable_template = PodTemplate.from_status(s.get("stableTemplate")) or spec.template
    canary_template = PodTemplate.from_status(s.get("canaryTemplate")) or stable_template
    stable_replicas, canary_replicas = desired_replicas(spec, s, stable_live, canary_live)
    weight = routed_weight(spec, s, stable_live, canary_live)
    return (
        EnsureServices(replica_ratio=spec.traffic.provider == "replicaRatio"),
        SetWeight(weight),
        EnsureConfigMap("stable", stable, shadow_percent=shadow_percent(s)),
        EnsureConfigMap("canary", canary),
        EnsureDeployment("stable", stable_replicas, stable.version, stable_template,
                         model_revision=s.get("stablePodRevision")),
        EnsureDeployment("canary", canary_replicas, canary.version, canary_template),
        EnsureDisruptionBudgets(spec.server.max_unavailable),
    )
