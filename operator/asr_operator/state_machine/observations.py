"""What decide() is told about the world this tick, and what it asks to be measured."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ..analysis.verdict import Measurement
from ..spec import ModelRef


@dataclass(frozen=True)
class DeploymentState:
    replicas: int  # spec.replicas the live object asks for
    ready: int  # status.readyReplicas: pods of every template, old ones included
    up_to_date: bool = True  # the Deployment controller has seen the latest spec (observedGeneration)
    updated: int | None = None  # status.updatedReplicas: pods of the current template (None: all are)
    total: int | None = None  # status.replicas: pods of every template

    @property
    def current_ready(self) -> int:
        """Ready pods of the current template, at the least: during a rolling update readyReplicas
        also counts old-template pods, so every old pod is assumed ready."""
        if self.updated is None:
            return self.ready
        old = max(0, (self.total if self.total is not None else self.updated) - self.updated)
        return max(0, min(self.updated, self.ready - old))

    def ready_for(self, wanted: int) -> bool:
        return self.up_to_date and self.replicas >= wanted and self.current_ready >= wanted


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
    stable_has_room: bool | None = None  # every stable pod can load beside (wants().stable_room); None: unknown


@dataclass(frozen=True)
class Needs:
    """What decide() will want measured this tick; the I/O layer gathers only that."""

    analysis: bool = False
    served_versions: bool = False
    rollback_check: bool = False  # the live weight and canary ConfigMap, to confirm a rollback
    canary_versions: bool = False  # canary pods per version, after a superseding hot reload
    stable_room: bool = False  # asr_model_can_load_beside of the stable pods (stableUpdate auto)
