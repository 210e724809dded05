"""The rollout state machine as a pure function: spec + status + observations -> decision.

`decide()` does no I/O and reads no clock. All state lives in `status`, and every action is an
absolute desired state ("canary weight 10", "canary ConfigMap -> v1"), re-issued on every tick.
So a killed operator resumes by calling decide() on the persisted status: nothing is applied
twice, and a rollback decided before the crash is still carried out.

Phases: Pending (first version starting) -> Succeeded; a new spec.model -> Progressing
(steps run, analysis judges) <-> Paused -> Promoting (stable ConfigMap points at the canary's
model, wait for stable pods to serve it) -> Succeeded; or -> RollingBack -> RolledBack.
Failed: the first version never became ready.

The modules, from the inside out:
- `phases`: the phase names; `conditions`: status.conditions;
- `observations` (decide()'s inputs) and `decision` (its output);
- `tick`: one run's working status and the shared transitions (start a canary, roll back, promote);
- `analysis_gate`: when analysis is due, how its outcome counts, the data gate before a step;
- `controls`: the annotations (promote, abort, retry, rollback-to, alert);
- `phase_handlers`: what each phase does on a tick; `children_plan`: every child's desired state;
- `machine`: decide() and wants().
"""
from .analysis_gate import analysis_due, seconds_until_analysis
from .children_plan import canary_pods_for, desired_replicas, replica_targets
from .conditions import condition_of, set_condition
from .controls import ABORT, ALERT, ANNOTATION_PREFIX, MANUAL_ANNOTATIONS, PAUSE, PROMOTE, RETRY, ROLLBACK_TO
from .decision import (
    Action, Decision, EmitEvent, EnsureConfigMap, EnsureDeployment, EnsureDisruptionBudgets, EnsureServices, SetWeight,
)
from .machine import decide, wants
from .observations import AnalysisRun, DeploymentState, Needs, Observations
from .phases import (
    CANARY_PHASES, FAILED_PHASE, PAUSED, PENDING, PROGRESSING, PROMOTING, ROLLED_BACK, ROLLING_BACK, SUCCEEDED,
)
from .tick import HISTORY_LIMIT, POLL_SECONDS

__all__ = [
    "ABORT", "ALERT", "ANNOTATION_PREFIX", "CANARY_PHASES", "FAILED_PHASE", "HISTORY_LIMIT", "MANUAL_ANNOTATIONS",
    "PAUSE", "PAUSED", "PENDING", "POLL_SECONDS", "PROGRESSING", "PROMOTE", "PROMOTING", "RETRY", "ROLLBACK_TO",
    "ROLLED_BACK", "ROLLING_BACK", "SUCCEEDED",
    "Action", "AnalysisRun", "Decision", "DeploymentState", "EmitEvent", "EnsureConfigMap", "EnsureDeployment",
    "EnsureDisruptionBudgets", "EnsureServices", "Needs", "Observations", "SetWeight",
    "analysis_due", "canary_pods_for", "condition_of", "decide", "desired_replicas", "replica_targets", "seconds_until_analysis", "set_condition",
    "wants",
]
