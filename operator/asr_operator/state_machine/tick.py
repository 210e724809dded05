"""One decide() run: a working copy of status, what to emit, and the transitions every
phase shares (start a canary, roll back, promote)."""
from __future__ import annotations

import copy
import datetime
from collections.abc import Mapping
from typing import Any

from ..durations import format_time
from ..spec import ModelRef, PodTemplate, RolloutSpec
from .children_plan import canary_pods_for
from .conditions import set_condition
from .decision import EmitEvent
from .observations import Observations
from .phases import FINISHED_PHASES, PROGRESSING, PROMOTING, ROLLING_BACK, SUCCEEDED


HISTORY_LIMIT = 20
POLL_SECONDS = 2.0  # re-check while waiting on pods or on Prometheus during promotion


def history_entry(model: ModelRef, outcome: str, reason: str, now: datetime.datetime,
                  template: PodTemplate | None = None, changes: list[str] | None = None) -> dict[str, Any]:
    """A `status.history` entry: the revision (model and pod template) as status holds it, what
    changed from the stable one, what became of it, why, when."""
    entry = {**model.to_status(), "outcome": outcome, "reason": reason, "at": format_time(now)}
    if template is not None:
        entry["template"] = template.to_status()
    if changes:
        entry["changes"] = list(changes)
    return entry


def same_revision(model: ModelRef | None, template: PodTemplate | None,
                  other_model: ModelRef | None, other_template: PodTemplate | None) -> bool:
    """Model and pod template both equal; a template nobody recorded (a history entry of an
    older operator) is taken as equal."""
    if model is None or not model.same_as(other_model):
        return False
    return template is None or other_template is None or template.same_as(other_template)


def revision_changes(spec_model: ModelRef, spec_template: PodTemplate, model: ModelRef | None,
                     template: PodTemplate | None) -> list[str]:
    """What a revision changes from another: `model v1 -> v2`, `image a -> b`, `resources`, ..."""
    changes = []
    if model is not None and not spec_model.same_as(model):
        changes.append(f"model {model.version} -> {spec_model.version}" if model.version != spec_model.version
                       else f"model {spec_model.version} (path, digest or options)")
    return changes + spec_template.changes_from(template)


def model_from_history(entry: Mapping[str, Any]) -> ModelRef:
    model = ModelRef.from_status(entry)
    if model is None:
        raise ValueError(f"status.history entry without a version: {dict(entry)}")
    return model


class Tick:
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
        if phase in FINISHED_PHASES:
            # No step is running: `kubectl get` must not show the last one as current.
            self.s["currentStep"] = None

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

    @property
    def stable_template(self) -> PodTemplate | None:
        return PodTemplate.from_status(self.s.get("stableTemplate"))

    @property
    def canary_template(self) -> PodTemplate | None:
        return PodTemplate.from_status(self.s.get("canaryTemplate"))

    def spec_is_stable(self) -> bool:
        return same_revision(self.spec.model, self.spec.template, self.stable_model, self.stable_template)

    def spec_is_canary(self) -> bool:
        return same_revision(self.spec.model, self.spec.template, self.canary_model, self.canary_template)

    def adopt_templates(self) -> None:
        """A status written before pod templates were recorded: the spec's template is taken as
        what stable (and a running canary) run, so an operator upgrade starts no canary by itself."""
        if self.s.get("stableModel") and not self.s.get("stableTemplate"):
            self.s["stableTemplate"] = self.spec.template.to_status()
        if self.s.get("canaryModel") and not self.s.get("canaryTemplate"):
            self.s["canaryTemplate"] = self.spec.template.to_status()

    def history(self, model: ModelRef, outcome: str, reason: str, template: PodTemplate | None = None,
                changes: list[str] | None = None) -> None:
        entries = list(self.s.get("history") or [])
        entries.append(history_entry(model, outcome, reason, self.now, template, changes))
        self.s["history"] = entries[-HISTORY_LIMIT:]

    def raise_weight(self, weight: int, message: str) -> bool:
        """Send `weight` percent to the canary once its ready pods carry it. Until then the
        canary is sized for it (status.pendingWeight) and the written weight stays. True when
        the weight was written now."""
        needed = canary_pods_for(self.spec, weight)
        canary = self.obs.canary
        current = int(self.s.get("canaryWeight") or 0)
        unready = canary is None or not canary.ready_for(needed) or bool(self.s.get("canaryReloading"))
        if weight > current and needed > 0 and unready:
            if self.s.get("pendingWeight") != weight:
                self.s["pendingWeight"] = weight
                self.event("ScalingCanary", f"canary scaled to {needed} pod(s) for {weight}%; the weight follows "
                                            "once they are ready")
            self.wait(POLL_SECONDS)
            return False
        self.s["pendingWeight"] = None
        self.s["canaryWeight"] = weight
        self.stamp("weightSetAt")
        self.event("SetWeight", message)
        return True

    def step_weight(self) -> int:
        """The weight the steps done so far set: what a paused canary gets back on resume."""
        done = self.spec.strategy.steps[:int(self.s.get("currentStep") or 0)]
        weights = [step.set_weight for step in done if step.set_weight is not None]
        return weights[-1] if weights else 0

    def blocked(self) -> bool:
        """The spec names a version that failed, and neither spec nor a retry changed that."""
        return bool(self.s.get("failedSpec")) and self.s.get("failedSpec") == self.spec.fingerprint

    # transitions
    def start_canary(self, reason: str, reload: bool = False) -> None:
        """The spec's revision (model + pod template) goes to the canary track. `reload`:
        running canary pods hot-reload the new model (a superseded canary with an unchanged
        template); no traffic goes to them until they report serving it."""
        model, template = self.spec.model, self.spec.template
        changes = revision_changes(model, template, self.stable_model, self.stable_template)
        self.s.update(canaryModel=model.to_status(), canaryVersion=model.version, canaryWeight=0,
                      canaryTemplate=template.to_status(), canaryChanges=changes,
                      currentStep=0, counters={"failed": 0, "inconclusive": 0, "errors": 0},
                      analysis={}, failedSpec=None, canaryReloading=reload or None, shadow=None,
                      pendingWeight=None)
        # New canary pods are not ready yet: the progress deadline counts from now.
        for key in ("stepStartedAt", "rolloutStartedAt", "weightSetAt", "canaryUnreadySince"):
            self.stamp(key)
        what = "; ".join(changes) or "no change from stable"
        self.enter(PROGRESSING, f"canary {model.version} starting ({what}): {reason}")
        set_condition(self.s, "Progressing", True, "CanaryStarted", self.s["message"], self.now)
        set_condition(self.s, "Paused", False, "Running", "", self.now)
        # What an earlier canary's rollback or alert said is not about this one.
        set_condition(self.s, "Healthy", None, "NotJudgedYet", f"canary {model.version} has no analysis yet", self.now)
        if self.s.get("conditions") and any(c.get("type") == "Alert" for c in self.s["conditions"]):
            set_condition(self.s, "Alert", False, "NoAlert", f"no alert since canary {model.version} started", self.now)
        self.event("CanaryStarted", f"canary {model.version} (stable {self.s.get('stableVersion')}; {what}): {reason}")
        self.wait(0)

    def rollback(self, reason: str, condition_reason: str, failed: bool = True) -> None:
        """Traffic back to stable first, canary ConfigMap reverted, canary scaled to zero.
        `failed=False`: the canary was withdrawn (spec changed back), not judged bad."""
        canary = self.canary_model
        if self.phase == PROMOTING and self.s.get("previousStableModel"):
            # A promotion already pointed the stable ConfigMap (and template) at the canary: back.
            self.s["stableModel"] = self.s["previousStableModel"]
            self.s["stableVersion"] = self.s["stableModel"].get("version")
            if self.s.get("previousStableTemplate"):
                self.s["stableTemplate"] = self.s["previousStableTemplate"]
        if canary is not None and failed:
            self.history(canary, "RolledBack", reason, self.canary_template, self.s.get("canaryChanges"))
            self.s["failedVersion"] = canary.version
        self.s["failedSpec"] = self.spec.fingerprint if failed else None
        self.s.update(canaryWeight=0, canaryModel=None, canaryVersion=None, canaryUnreadySince=None,
                      previousStableModel=None, canaryTemplate=None, previousStableTemplate=None,
                      canaryChanges=None, shadow=None, pendingWeight=None)
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
        self.s["previousStableTemplate"] = self.s.get("stableTemplate")
        self.s["pendingWeight"] = None
        self.s["stableModel"] = canary.to_status()
        self.s["stableVersion"] = canary.version
        self.s["shadow"] = None  # a promote annotation may skip a running shadow stage
        template = self.canary_template
        replaced = template is not None and not template.same_as(self.stable_template)
        if template is not None:
            self.s["stableTemplate"] = template.to_status()
        self.stamp("stepStartedAt")
        how = ("stable pods replaced with the new pod template (rolling update)" if replaced
               else "stable ConfigMap updated")
        self.enter(PROMOTING, f"promoting {canary.version}: {how}, waiting for stable pods to serve it")
        set_condition(self.s, "Progressing", True, "Promoting", self.s["message"], self.now)
        self.event("Promoting", self.s["message"])
        self.wait(0)

    def finish_promotion(self, how: str) -> None:
        canary = self.canary_model
        assert canary is not None
        self.history(canary, "Promoted", how, self.canary_template, self.s.get("canaryChanges"))
        self.s.update(canaryWeight=0, canaryModel=None, canaryVersion=None, previousStableModel=None,
                      canaryTemplate=None, previousStableTemplate=None, canaryChanges=None,
                      failedSpec=None, failedVersion=None, pendingWeight=None)
        self.stamp("promotedAt")
        self.enter(SUCCEEDED, f"{canary.version} promoted: {how}")
        set_condition(self.s, "Progressing", False, "Promoted", self.s["message"], self.now)
        set_condition(self.s, "Healthy", True, "Promoted", self.s["message"], self.now)
        self.event("Promoted", self.s["message"])
