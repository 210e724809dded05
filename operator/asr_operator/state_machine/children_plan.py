"""The desired state of every child (Services, traffic weight, ConfigMaps, Deployments)
for a status, and the pod counts of each track."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..spec import ModelRef, PodTemplate, RolloutSpec
from ..traffic.replica_ratio import split_replicas
from .decision import Action, EnsureConfigMap, EnsureDeployment, EnsureServices, SetWeight
from .phases import CANARY_PHASES, PROMOTING


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
        EnsureConfigMap("stable", stable),
        EnsureConfigMap("canary", canary),
        EnsureDeployment("stable", stable_replicas, stable.version, stable_template),
        EnsureDeployment("canary", canary_replicas, canary.version, canary_template),
    )
