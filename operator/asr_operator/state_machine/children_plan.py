"""The desired state of every child (Services, traffic weight, ConfigMaps, Deployments)
for a status, and the pod counts of each track."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..spec import ModelRef, PodTemplate, RolloutSpec
from ..traffic.replica_ratio import split_replicas
from .decision import Action, EnsureConfigMap, EnsureDeployment, EnsureServices, SetWeight
from .phases import CANARY_PHASES, PROMOTING
from .shadow_stage import shadow_percent


def desired_replicas(spec: RolloutSpec, status: Mapping[str, Any]) -> tuple[int, int]:
    """(stable, canary) pod counts for the phase and weight in `status`."""
    total = spec.server.replicas
    canary_on = status.get("phase") in (*CANARY_PHASES, PROMOTING) and status.get("canaryModel")
    if not canary_on:
        return total, 0
    weight = int(status.get("canaryWeight") or 0)
    if spec.traffic.provider == "replicaRatio":
        if shadow_percent(status) is not None:
            # One canary pod to take the copies; the combined Service selects only stable
            # pods at weight 0 (children.combined_service), so no user request reaches it.
            return total, 1
        split = split_replicas(total, weight)
        if status.get("phase") == PROMOTING:
            # The stable pods take all traffic back once they serve the new version: full size.
            return total, split.canary
        return split.stable, split.canary
    return total, total


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


def desired_children(spec: RolloutSpec, s: Mapping[str, Any]) -> tuple[Action, ...]:
    """Desired state of every child for this status. Order matters for safety: traffic first
    (a rollback takes weight away before the canary ConfigMap changes), then ConfigMaps."""
    stable = ModelRef.from_status(s.get("stableModel"))
    if stable is None:
        return ()
    canary = ModelRef.from_status(s.get("canaryModel")) or stable
    # Each track runs its own revision's pod template; the idle canary Deployment keeps stable's.
    stable_template = PodTemplate.from_status(s.get("stableTemplate")) or spec.template
    canary_template = PodTemplate.from_status(s.get("canaryTemplate")) or stable_template
    stable_replicas, canary_replicas = desired_replicas(spec, s)
    weight = int(s.get("canaryWeight") or 0) if s.get("phase") in (*CANARY_PHASES, PROMOTING) else 0
    return (
        EnsureServices(replica_ratio=spec.traffic.provider == "replicaRatio"),
        SetWeight(weight),
        EnsureConfigMap("stable", stable, shadow_percent=shadow_percent(s)),
        EnsureConfigMap("canary", canary),
        EnsureDeployment("stable", stable_replicas, stable.version, stable_template,
                         model_revision=s.get("stablePodRevision")),
        EnsureDeployment("canary", canary_replicas, canary.version, canary_template),
    )
