"""What each phase does on a tick: the first version, the canary's steps and readiness,
promotion, and finishing a rollback."""
from __future__ import annotations

from ..durations import seconds_between
from .analysis_gate import analysis_due, analysis_paused, gate_open, record_analysis, schedule_analysis
from .children_plan import desired_replicas, replica_targets
from .conditions import condition_of, set_condition
from .controls import PAUSE
from .shadow_stage import run_shadow_step
from .phases import CANARY_PHASES, FAILED_PHASE, MANUAL_PAUSE, PAUSED, PENDING, PROGRESSING, PROMOTING, ROLLING_BACK, ROLLED_BACK, SUCCEEDED, USER_PAUSE
from .tick import POLL_SECONDS, Tick


def first_version(tick: Tick) -> None:
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
    # The first version is the only unjudged revision: its pod template follows the spec.
    tick.s["stableTemplate"] = spec.template.to_status()
    stable_ready = tick.obs.stable is not None and tick.obs.stable.ready_for(spec.server.replicas)
    if stable_ready:
        tick.history(spec.model, "Promoted", "first version", spec.template)
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


def advance(tick: Tick) -> None:
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
        elif not tick.spec_is_canary():
            if tick.spec_is_stable():
                tick.rollback(f"spec changed back to the stable revision ({spec.model.version})", "Superseded",
                              failed=False)
            else:
                # Same pod template: the running canary pods hot-reload the new model. A new
                # template replaces them; their readiness (current template only) tells.
                reload = spec.template.same_as(tick.canary_template)
                tick.event("Superseded", f"spec changed mid-rollout: canary {canary.version} replaced by "
                                         f"{spec.model.version}")
                tick.start_canary(f"supersedes {canary.version}", reload=reload)
            return
        else:
            _canary(tick)
            return
    # Succeeded, RolledBack, Failed-with-stable: is there something new to roll out?
    if tick.spec_is_stable():
        if tick.phase != SUCCEEDED:
            tick.s["failedSpec"] = None
            tick.enter(SUCCEEDED, f"spec names the stable revision ({spec.model.version})")
        return
    if tick.blocked():
        return  # the failed revision waits for a spec change or the retry annotation
    tick.start_canary("the spec changed the revision (model or pod template)")


def _finish_rollback(tick: Tick) -> None:
    """RollingBack -> RolledBack once traffic and the canary ConfigMap are seen reverted."""
    stable = tick.stable_model
    obs = tick.obs
    if obs.traffic_weight == 0 and stable is not None and stable.same_as(obs.canary_config):
        tick.enter(ROLLED_BACK, str(tick.s.get("message", "")).replace("rolling back", "rolled back", 1))
        tick.event("RolledBack", tick.s["message"], warning=True)
    else:
        tick.wait(POLL_SECONDS)


def _promoting(tick: Tick) -> None:
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


def _canary(tick: Tick) -> None:
    spec = tick.spec
    _, canary_wanted = replica_targets(spec, tick.s)
    canary_state = tick.obs.canary
    ready = canary_wanted == 0 or (canary_state is not None and canary_state.ready_for(canary_wanted))
    if ready and tick.s.get("canaryReloading"):
        if canary_state is None or canary_state.replicas == 0:
            # No canary pod runs (replicaRatio at weight 0), so none can report a reload; pods
            # started later read the new ConfigMap from the start: their readiness says it then.
            tick.s["canaryReloading"] = None
        elif canary_wanted > 0:
            ready = _canary_reloaded(tick)
        # else: a pod kept until stable is back to full size reloads meanwhile; checked once wanted
    deadline = spec.strategy.progress_deadline_seconds
    if not ready:
        if not tick.s.get("canaryUnreadySince"):
            tick.stamp("canaryUnreadySince")
        waited = seconds_between(tick.s.get("canaryUnreadySince"), tick.now) or 0.0
        if waited >= deadline:
            have = canary_state.current_ready if canary_state is not None else 0
            tick.rollback(f"canary pods not ready after {deadline:g}s (progressDeadlineSeconds): "
                          f"{have}/{canary_wanted} ready", "ProgressDeadlineExceeded")
            return
        tick.wait(min(POLL_SECONDS, deadline - waited))
    else:
        tick.s["canaryUnreadySince"] = None

    if tick.obs.analysis is not None and analysis_due(spec, tick.s, tick.now):
        if record_analysis(tick, tick.obs.analysis):
            return  # rolled back: act on it now, in this same tick
    if analysis_paused(tick.s):
        schedule_analysis(tick)
        return  # an analysis pause holds weight 0 and waits for a person (promote or retry)
    if user_paused(tick):
        schedule_analysis(tick)  # still judged: a failing canary rolls back while paused
        return
    held = int(tick.s.get("canaryWeight") or 0) > 0 and not gate_open(tick)  # judged before it moves on
    if ready and tick.s.get("pendingWeight") is not None and not held:
        pending = int(tick.s["pendingWeight"])  # the pods for it are ready now: the weight follows
        tick.raise_weight(pending, f"canary weight {pending}%: its pods are ready")
    if ready:
        _run_steps(tick)
    schedule_analysis(tick)


def user_paused(tick: Tick) -> bool:
    """A person's pause (the `asr.rollout.dev/pause` annotation, `asr-rollout pause`): the canary
    keeps its weight and no step runs until the annotation is removed. True while it holds."""
    paused_by_user = (condition_of(tick.s, "Paused") or {}).get("reason") == USER_PAUSE and tick.phase == PAUSED
    if tick.obs.annotations.get(PAUSE, "").lower() == "true":
        if not paused_by_user:
            tick.enter(PAUSED, f"paused by user at step {tick.s.get('currentStep') or 0}, canary weight "
                               f"{int(tick.s.get('canaryWeight') or 0)}%; resume to continue (asr-rollout resume)")
            set_condition(tick.s, "Paused", True, USER_PAUSE, tick.s["message"], tick.now)
            tick.event("Paused", tick.s["message"])
        return True
    if paused_by_user:
        tick.enter(PROGRESSING, f"resumed by user: canary {tick.s.get('canaryVersion')} continues")
        set_condition(tick.s, "Paused", False, "Resumed", "pause annotation removed", tick.now)
        tick.event("Resumed", tick.s["message"])
    return False


def _canary_reloaded(tick: Tick) -> bool:
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


def _run_steps(tick: Tick) -> None:
    steps = tick.spec.strategy.steps
    for _ in range(len(steps) + 1):
        index = int(tick.s.get("currentStep") or 0)
        if index >= len(steps):
            if gate_open(tick):
                tick.begin_promotion()
            return
        step = steps[index]
        weight = int(tick.s.get("canaryWeight") or 0)
        if step.is_shadow:
            if not run_shadow_step(tick, index, step, gate_open(tick)):
                return
            tick.s["currentStep"] = index + 1
            tick.stamp("stepStartedAt")
            continue
        if step.set_weight is not None:
            if weight != step.set_weight:
                if weight > 0 and not gate_open(tick):
                    return  # every weight is judged: held until an analysis taken at it passes
                if not tick.raise_weight(step.set_weight, f"step {index}: canary weight {step.set_weight}%"):
                    return  # the canary is scaled for it first; the weight follows once its pods are ready
            tick.s["currentStep"] = index + 1
            tick.stamp("stepStartedAt")
            tick.enter(PROGRESSING, f"canary {tick.s.get('canaryVersion')} at {step.set_weight}%")
            continue
        if step.is_manual_pause:
            if tick.phase != PAUSED:
                if weight > 0 and not gate_open(tick):
                    return  # a person looks at a judged canary: its weight passes an analysis first
                tick.enter(PAUSED, f"step {index}: paused until promoted (asr-rollout promote)")
                set_condition(tick.s, "Paused", True, MANUAL_PAUSE, tick.s["message"], tick.now)
                tick.event("Paused", tick.s["message"])
            return
        waited = seconds_between(tick.s.get("stepStartedAt"), tick.now) or 0.0
        remaining = (step.pause_seconds or 0.0) - waited
        if remaining > 0:
            tick.wait(remaining)
            return
        if not gate_open(tick):
            return  # the next analysis tick is scheduled; inconclusive ones count toward a pause
        tick.s["currentStep"] = index + 1
        tick.stamp("stepStartedAt")
