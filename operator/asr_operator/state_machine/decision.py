"""What decide() returns: the next status, every child's desired state, events and
annotations to remove, and when to look again."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..spec import ModelRef, PodTemplate


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
    shadow_percent: int | None = None  # stable in a shadow stage: copy this % of requests to the canary


@dataclass(frozen=True)
class EnsureDeployment:
    track: str
    replicas: int
    version: str
    template: PodTemplate = field(hash=False)  # compared, not hashed (its mappings are dicts)
    model_revision: str | None = None  # stable under stableUpdate rolling: the pod template's model revision


@dataclass(frozen=True)
class EnsureDisruptionBudgets:
    """A PodDisruptionBudget per track (not part of the revision: it changes no pod)."""
    max_unavailable: int | str


@dataclass(frozen=True)
class EmitEvent:
    type: str  # Normal | Warning
    reason: str
    message: str


Action = EnsureServices | SetWeight | EnsureConfigMap | EnsureDeployment | EnsureDisruptionBudgets


@dataclass(frozen=True)
class Decision:
    status: dict[str, Any]
    actions: tuple[Action, ...]  # in this order: services, weight, ConfigMaps, Deployments, budgets
    events: tuple[EmitEvent, ...] = ()
    remove_before: tuple[str, ...] = ()  # manual annotations: removed before status is written
    remove_after: tuple[str, ...] = ()  # the alert annotation: removed after (fingerprint dedupes)
    requeue_after: float | None = None  # seconds; 0 = observe and decide again right away
