"""The demo story as data: which model version each scenario rolls out, which guard must catch
it, and how to tell from the rollout's status that it ended as expected. Pure: no I/O.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

NAMESPACE = "asr-demo"
ROLLOUT = "asr-demo"
MODEL_NAME = "paraformer-tiny"
VAD_PATH = "fsmn-vad/v1"
# One torch thread per pod: several pods (and Prometheus, the operator) share two CPU cores.
MODEL_OPTIONS = {"ncpu": 1}

PROMOTED = "Promoted"
ROLLED_BACK = "RolledBack"
REVERTED = "Reverted"  # an alert after a promotion put the previous version back on stable


@dataclass(frozen=True)
class DemoSettings:
    """Small settings that keep the whole story at about five minutes."""

    interval: str = "5s"
    failure_limit: int = 2
    inconclusive_limit: int = 8
    min_requests: int = 3
    window: str = "10s"
    progress_deadline_s: int = 60  # a pod starts in ~10 s idle, 30 s+ on a busy 2-core machine
    max_error_rate: float = 0.05
    max_p99_latency_s: float = 2.5  # good versions answer in ~0.1 s idle; slack for a busy machine
    # Real-time factor: at most half real time (absolute), and at most twice stable's over the
    # same window (relative: the canary and stable pods share the same busy CPUs, so a good
    # version stays near 1x whatever the load, while `sluggish` runs about 4x).
    max_real_time_factor: float = 0.5
    max_real_time_factor_ratio: float = 2.0
    replicas: int = 1
    steps: tuple[dict[str, Any], ...] = (
        {"setWeight": 25}, {"pause": {"duration": "5s"}},
        {"setWeight": 50}, {"pause": {"duration": "5s"}},
        {"setWeight": 100},
    )
    # The shadow stage (scenarios with `shadow=True`): at weight 0 the stable pods copy this share
    # of their requests to the canary for this long, then the steps above follow. The stage's
    # clock starts when it is entered, before the first copy has reached Prometheus (a scrape,
    # then one analysis window), so the duration leaves room for two full windows of copies.
    shadow_percent: int = 50
    shadow_duration: str = "25s"
    max_shadow_error_rate: float = 0.05
    max_shadow_p99_latency_s: float = 2.5
    max_shadow_real_time_factor: float = 0.5
    max_shadow_cer: float = 0.1  # canary's transcripts vs stable's on the same audio


def strategy_steps(settings: DemoSettings, shadow: bool) -> list[dict[str, Any]]:
    stage = [{"shadow": {"percent": settings.shadow_percent, "duration": settings.shadow_duration}}] if shadow else []
    return stage + [dict(step) for step in settings.steps]


def analysis_metrics(settings: DemoSettings, shadow: bool) -> list[dict[str, Any]]:
    """The user-traffic metrics, plus the shadow stage's own when the steps have one (the
    operator refuses shadow metrics without a shadow step, and a shadow step without them)."""
    metrics: list[dict[str, Any]] = [
        {"name": "error-rate", "max": settings.max_error_rate},
        {"name": "p99-latency-seconds", "max": settings.max_p99_latency_s},
        {"name": "real-time-factor", "max": settings.max_real_time_factor,
         "maxRatio": settings.max_real_time_factor_ratio},
    ]
    if shadow:
        metrics += [
            {"name": "shadow-error-rate", "max": settings.max_shadow_error_rate},
            {"name": "shadow-p99-latency-seconds", "max": settings.max_shadow_p99_latency_s},
            {"name": "shadow-real-time-factor", "max": settings.max_shadow_real_time_factor},
            {"name": "shadow-cer", "max": settings.max_shadow_cer},
        ]
    return metrics


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    version: str  # spec.model.version
    directory: str  # the version directory under models/paraformer-tiny/
    expect: str  # PROMOTED | ROLLED_BACK | REVERTED
    guard: str  # what must catch it (shown in the summary)
    reason: str = ""  # status condition reason the guard leaves (rolled-back scenarios)
    metric: str = ""  # the analysis metric that must have failed, if any
    or_metrics: tuple[str, ...] = ()  # metrics that may have caught it instead of `metric`
    vad: bool = True
    bad: bool = False  # its requests may fail (counted, reported, allowed)
    alert: bool = False  # after promotion, an Alertmanager alert fires
    relative: bool = False  # `metric` must have failed on a bound against stable, not an absolute one
    shadow: bool = False  # the rollout starts with a shadow stage (DemoSettings.shadow_*)

    @property
    def path(self) -> str:
        return f"{MODEL_NAME}/{self.directory}"


FIRST = Scenario("v1", "v1 serving", "v1", "v1", PROMOTED, "first version")

STORY: tuple[Scenario, ...] = (
    Scenario("good", "v2: a good version", "v2", "v2", PROMOTED, "analysis passes, hot reload"),
    Scenario("corrupt", "v3-corrupt: files fail verification", "v3-corrupt", "corrupt", ROLLED_BACK,
             "progress deadline", reason="ProgressDeadlineExceeded", bad=True),
    # No VAD for this one: its decoding bug fires on requests of 5 s and more, and the VAD would
    # cut the demo clips into shorter pieces (see asr_sandbox.demo_assets).
    Scenario("errors", "v3-broken: errors on requests", "v3-broken", "broken", ROLLED_BACK, "error rate",
             reason="AnalysisFailed", metric="error-rate", vad=False, bad=True),
    # 14x stable's processing time: whichever of its p99 (absolute) and its real-time factor
    # (against stable) fails first rolls it back.
    Scenario("slow", "v3-slow: slow answers", "v3-slow", "slow", ROLLED_BACK, "p99 latency or real-time factor",
             reason="AnalysisFailed", metric="p99-latency-seconds", or_metrics=("real-time-factor",), bad=True),
    # Within every absolute bound (p99 well under its max, real-time factor under 0.5), but about
    # 4x slower than stable: only the relative bound sees it.
    Scenario("sluggish", "v3-sluggish: 4x slower than stable, within absolute bounds", "v3-sluggish", "sluggish",
             ROLLED_BACK, "real-time factor vs stable (maxRatio)", reason="AnalysisFailed",
             metric="real-time-factor", bad=True, relative=True),
    Scenario("alert", "v3: promoted, then an alert fires", "v3", "v2-same", REVERTED, "alert after promotion",
             reason="Reverted", alert=True),
)

# The shadow stage (issue 14): each version is first judged on copies of stable's live requests
# at weight 0. The two bad ones are rolled back there, so no user request ever reaches them
# (bad=False: any failed user request in their window fails the demo); the good one passes the
# stage and goes on to its weights. Against v1 serving: `v2-same` holds v1's very files (a
# re-export under a new name: its transcripts agree with stable's), `drift` other weights.
SHADOW_STORY: tuple[Scenario, ...] = (
    Scenario("shadow-errors", "v1.1-broken: errors, judged in a shadow stage", "v1.1-broken", "broken",
             ROLLED_BACK, "shadow error rate (no user traffic)", reason="AnalysisFailed",
             metric="shadow-error-rate", vad=False, shadow=True),
    Scenario("shadow-drift", "v1.1-drift: fast 200s, other transcripts, judged in a shadow stage", "v1.1-drift",
             "drift", ROLLED_BACK, "shadow CER vs stable (no user traffic)", reason="AnalysisFailed",
             metric="shadow-cer", shadow=True),
    Scenario("shadow-good", "v1.1: a good version through the shadow stage", "v1.1", "v2-same", PROMOTED,
             "shadow stage passes, then the weights", shadow=True),
)

# v1 serving, then the shadow stage's scenarios (their good version keeps v1's transcripts, so
# they must run while v1's weights serve), then the rest of the story.
FULL_STORY: tuple[Scenario, ...] = SHADOW_STORY + STORY

SHORT_STORY: tuple[Scenario, ...] = (STORY[0], STORY[2])  # the end-to-end test and the benchmark


def model_spec(scenario: Scenario, digest: str | None) -> dict[str, Any]:
    """`spec.model` for a scenario. Absent fields are None, so that as a JSON merge patch it also
    removes what the previous version had (e.g. `vadPath`)."""
    return {"name": MODEL_NAME, "version": scenario.version, "path": scenario.path, "sha256": digest,
            "vadPath": VAD_PATH if scenario.vad else None, "options": dict(MODEL_OPTIONS)}


def without_nulls(value: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in value.items() if v is not None}


def rollout_manifest(first: Scenario, digest: str | None, prometheus_url: str,
                     settings: DemoSettings) -> dict[str, Any]:
    return {
        "apiVersion": "asr.rollout.dev/v1alpha1",
        "kind": "ASRModelRollout",
        "metadata": {"name": ROLLOUT, "namespace": NAMESPACE},
        "spec": {
            "model": without_nulls(model_spec(first, digest)),
            # The sandbox's node agent maps this volume to the local models directory.
            "modelVolume": {"hostPath": {"path": "/models", "type": "Directory"}},
            "server": {"image": "asr-inference-server:sandbox", "replicas": settings.replicas},
            "traffic": {"gatewayAPI": {"httpRoute": ROLLOUT}},
            "strategy": {"steps": strategy_steps(settings, first.shadow),
                         "progressDeadlineSeconds": settings.progress_deadline_s},
            "analysis": {
                "prometheus": {"address": prometheus_url},
                "interval": settings.interval,
                "failureLimit": settings.failure_limit,
                "inconclusiveLimit": settings.inconclusive_limit,
                "minRequests": settings.min_requests,
                "window": settings.window,
                "metrics": analysis_metrics(settings, first.shadow),
            },
            "rollback": {"onAlert": True, "postPromotionWindow": "10m"},
        },
    }


def http_route_manifest() -> dict[str, Any]:
    """The route the gateway serves; the operator writes only its backendRef weights."""
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": ROLLOUT, "namespace": NAMESPACE},
        "spec": {
            "parentRefs": [{"name": "sandbox-gateway"}],
            "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                       "backendRefs": [{"name": f"{ROLLOUT}-stable", "port": 8000, "weight": 100}]}],
        },
    }


def alert_payload(version: str, fingerprint: str, starts_at: str) -> dict[str, Any]:
    """An Alertmanager webhook payload (version 4) naming the demo rollout."""
    labels = {"alertname": "ASRHighErrorRate", "severity": "critical", "namespace": NAMESPACE,
              "rollout": ROLLOUT, "version": version}
    return {
        "version": "4", "status": "firing", "receiver": "asr-rollout", "groupKey": "{}:{alertname=\"ASRHighErrorRate\"}",
        "groupLabels": {"alertname": "ASRHighErrorRate"}, "commonLabels": labels, "commonAnnotations": {},
        "externalURL": "http://alertmanager.local",
        "alerts": [{"status": "firing", "labels": labels,
                    "annotations": {"summary": f"error rate of {version} over 5% after its promotion"},
                    "startsAt": starts_at, "endsAt": "0001-01-01T00:00:00Z", "fingerprint": fingerprint,
                    "generatorURL": "http://prometheus.local/graph"}],
    }


# --- judging a scenario's end from the rollout's status ---------------------------------------

def is_settled(scenario: Scenario, status: Mapping[str, Any], before_history: int) -> bool:
    """Whether the rollout reached a resting phase for this scenario (not necessarily the
    expected one): a new history entry and a phase that is not going anywhere by itself."""
    phase = status.get("phase")
    grew = len(status.get("history") or []) > before_history
    if scenario.alert:
        return grew and phase in ("RolledBack", "Succeeded", "Failed") and (status.get("lastAlert") is not None)
    return grew and phase in ("Succeeded", "RolledBack", "Failed")


def judge(scenario: Scenario, status: Mapping[str, Any], previous_stable: str) -> tuple[bool, str]:
    """(as expected?, what happened) for a settled scenario."""
    phase = str(status.get("phase"))
    stable = str(status.get("stableVersion"))
    last = (status.get("history") or [{}])[-1]
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    if scenario.expect == PROMOTED:
        ok = phase == "Succeeded" and stable == scenario.version and last.get("outcome") == "Promoted"
        return ok, f"{phase}; stable {stable}"
    if scenario.expect == REVERTED:
        healthy = conditions.get("Healthy") or {}
        ok = stable == previous_stable and healthy.get("reason") == scenario.reason
        return ok, f"{phase}; stable reverted to {stable} ({healthy.get('reason')})"
    progressing = conditions.get("Progressing") or {}
    verdicts = {m.get("name"): m for m in (status.get("analysis") or {}).get("metrics") or []}
    metrics = {name: m.get("phase") for name, m in verdicts.items()}
    ok = (phase == "RolledBack" and stable == previous_stable and progressing.get("reason") == scenario.reason
          and last.get("outcome") == "RolledBack" and last.get("version") == scenario.version)
    failed = [name for name in (scenario.metric, *scenario.or_metrics) if name and metrics.get(name) == "Failed"]
    if scenario.metric:
        ok = ok and bool(failed)
    caught = " and ".join(failed) or scenario.metric or progressing.get("reason")
    if scenario.relative:
        # caught by the bound against stable, while every absolute bound held
        message = str((verdicts.get(scenario.metric) or {}).get("message", ""))
        others_held = all(phase != "Failed" for name, phase in metrics.items() if name != scenario.metric)
        ok = ok and metrics.get(scenario.metric) == "Failed" and others_held
        ok = ok and ("maxRatio" in message or "maxIncrease" in message)
        caught = f"{scenario.metric} ({message})"
    return ok, f"{phase} by {caught}; stable {stable}"
