"""The rollout story, run against a started Sandbox: v1 serving, then every scenario in turn
under continuous real traffic, with a live timeline. Returns what happened; judging the run
and writing the report are in `asr_sandbox.report`.
"""
from __future__ import annotations

import datetime
import hashlib
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import requests

from asr_sandbox import scenarios as sc
from asr_sandbox.sandbox import Sandbox
from asr_sandbox.traffic import RequestRecord, TrafficGenerator

TRAFFIC_CLIPS = ("speech_gap", "ten_seconds")  # 5 s and longer (see demo_assets: `broken`)


@dataclass(frozen=True)
class Sample:
    """The rollout as a person watching `kubectl get asr -w` would see it, plus the gateway."""

    at: float
    phase: str
    step: int | None
    weight: int  # status.canaryWeight
    routed_weight: int  # what the gateway routes by now
    stable: str
    canary: str
    verdicts: str
    message: str
    stage: str = ""  # the current step's kind, e.g. "shadow"


@dataclass
class ScenarioRun:
    scenario: sc.Scenario
    started: float
    ended: float = 0.0
    settled: bool = False
    ok: bool = False
    detail: str = ""
    previous_stable: str = ""
    alert_sent_at: float | None = None
    stable_pids_before: dict[str, list[int]] = field(default_factory=dict)
    stable_pids_after: dict[str, list[int]] = field(default_factory=dict)
    canary_path_after: str | None = None
    stable_path_after: str | None = None
    user_answers_from_version: int = 0  # user requests the scenario's version answered
    failed_user_requests: int = 0  # user requests that failed in the scenario's window
    shadow_copies: int = 0  # copies the sandbox's Service proxy carried to the canary


@dataclass
class StoryRun:
    started: float
    runs: list[ScenarioRun] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    records: list[RequestRecord] = field(default_factory=list)
    weight_log: list[tuple[float, int]] = field(default_factory=list)
    restarts: dict[str, int] = field(default_factory=dict)
    first_ready_s: float = 0.0
    error: str = ""


def manifest_digest(models_root: Path, path: str) -> str | None:
    manifest = models_root / path / "MANIFEST.sha256"
    return hashlib.sha256(manifest.read_bytes()).hexdigest() if manifest.is_file() else None


def current_stage(status: dict[str, Any]) -> str:
    """"shadow" while the rollout runs a shadow stage (stable copies requests to the canary at
    weight 0: the operator's own rule, asr_operator.state_machine.shadow_stage.shadow_percent),
    else ""."""
    shadow = status.get("shadow") or {}
    running = status.get("phase") in ("Progressing", "Paused") and bool(status.get("canaryModel"))
    return "shadow" if shadow and running and int(status.get("canaryWeight") or 0) == 0 else ""


def verdict_text(status: dict[str, Any]) -> str:
    metrics = (status.get("analysis") or {}).get("metrics") or []
    parts = []
    for m in metrics:
        value, stable = m.get("value"), m.get("stableValue")
        shown = f"{value:.3g}" if isinstance(value, (int, float)) else "-"
        if isinstance(stable, (int, float)):  # a bound against stable: canary/stable
            shown += f"/{stable:.3g}"
        parts.append(f"{m.get('name')}={shown}:{str(m.get('phase', ''))[:4]}")
    return " ".join(parts)


class Timeline:
    """Polls the rollout twice a second: records samples, keeps one status line updated in place
    (on a terminal) and prints a line for every change of phase, step, weight or verdict."""

    def __init__(self, sandbox: Sandbox, out: TextIO, started: float,
                 records: Callable[[], list[RequestRecord]], interactive: bool | None = None) -> None:
        self.sandbox = sandbox
        self.records = records
        self.out = out
        self.started = started
        self.interactive = out.isatty() if interactive is None else interactive
        self.samples: list[Sample] = []
        self.label = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="timeline", daemon=True)
        self._last_key: tuple[Any, ...] | None = None
        self._lock = threading.Lock()

    def start(self) -> "Timeline":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        if self.interactive:
            self.out.write("\r\033[K")
            self.out.flush()

    def say(self, text: str) -> None:
        with self._lock:
            prefix = "\r\033[K" if self.interactive else ""
            self.out.write(f"{prefix}{self.clock()}  {text}\n")
            self.out.flush()

    def clock(self) -> str:
        return f"[{time.time() - self.started:6.1f}s]"

    def status(self) -> dict[str, Any]:
        body = self.sandbox.api.get("ASRModelRollout", sc.NAMESPACE, sc.ROLLOUT) or {}
        return dict(body.get("status") or {})

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sample()
            except requests.RequestException:
                pass
            self._stop.wait(0.5)

    def sample(self) -> Sample:
        status = self.status()
        s = Sample(at=time.time(), phase=str(status.get("phase") or "-"), step=status.get("currentStep"),
                   weight=int(status.get("canaryWeight") or 0), routed_weight=self.sandbox.gateway.weight,
                   stable=str(status.get("stableVersion") or "-"), canary=str(status.get("canaryVersion") or "-"),
                   verdicts=verdict_text(status), message=str(status.get("message") or ""),
                   stage=current_stage(status))
        self.samples.append(s)
        key = (s.phase, s.step, s.weight, s.stable, s.canary, s.stage, (status.get("analysis") or {}).get("lastRun"))
        if key != self._last_key:
            self._last_key = key
            stage = " [shadow stage]" if s.stage else ""
            self.say(f"{s.phase:<11} stable={s.stable:<10} canary={s.canary:<10} step={s.step if s.step is not None else '-'}"
                     f" weight={s.weight:>3}%{stage}  {s.verdicts}")
        if self.interactive:
            with self._lock:
                records = list(self.records())
                failed = sum(1 for r in records if r.failed)
                line = (f"{self.clock()}  {self.label}: {s.phase}, routed to canary {s.routed_weight}%, "
                        f"requests {len(records)} ({failed} failed)")
                self.out.write("\r\033[K" + line[:150])
                self.out.flush()
        return s


def _wait(what: str, probe: Callable[[], bool], timeout_s: float, sandbox: Sandbox, poll_s: float = 0.25) -> None:
    deadline = time.monotonic() + timeout_s
    while not probe():
        sandbox.operator.check_alive()
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}; "
                               f"logs: {sandbox.workdir}")
        time.sleep(poll_s)


def _stable_pids(sandbox: Sandbox) -> dict[str, list[int]]:
    return {name: pids for name, pids in sandbox.agent.pod_pids().items() if f"{sc.ROLLOUT}-stable-" in name}


def _configmap_path(sandbox: Sandbox, track: str) -> str | None:
    import yaml

    cm = sandbox.api.get("ConfigMap", sc.NAMESPACE, f"{sc.ROLLOUT}-{track}-model")
    if cm is None:
        return None
    return str((yaml.safe_load((cm.get("data") or {}).get("model.yaml") or "") or {}).get("path"))


def _utc(at: float) -> str:
    return datetime.datetime.fromtimestamp(at, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def run_story(sandbox: Sandbox, story: Sequence[sc.Scenario], settings: sc.DemoSettings, audio_dir: Path,
              rate: float, out: TextIO = sys.stdout, scenario_timeout_s: float = 150.0,
              traffic_out: list[TrafficGenerator] | None = None) -> StoryRun:
    started = time.time()
    run = StoryRun(started=started)
    traffic = TrafficGenerator(sandbox.gateway.url, [audio_dir / f"{clip}.wav" for clip in TRAFFIC_CLIPS],
                               rate=rate)
    if traffic_out is not None:
        traffic_out.append(traffic)
    timeline = Timeline(sandbox, out, started, records=lambda: traffic.records)
    models_root = sandbox.models_root
    try:
        timeline.say(f"sandbox up: API {sandbox.emulator.url}, Prometheus {sandbox.prometheus.url}, "
                     f"gateway {sandbox.gateway.url}; logs in {sandbox.workdir}")
        sandbox.api.create(sc.http_route_manifest())
        first = sc.FIRST
        sandbox.api.create(sc.rollout_manifest(first, manifest_digest(models_root, first.path),
                                               sandbox.prometheus.url, settings))
        timeline.label = first.title
        timeline.start()
        _wait("v1 to serve (phase Succeeded)", lambda: timeline.status().get("phase") == "Succeeded", 120, sandbox)
        run.first_ready_s = time.time() - started
        traffic.start()
        timeline.say(f"traffic: {rate:g} requests/s of real audio through the gateway")
        time.sleep(3.0)
        for scenario in story:
            run.runs.append(_run_scenario(sandbox, timeline, scenario, settings, scenario_timeout_s,
                                          lambda: traffic.records))
            time.sleep(2.0)  # traffic settles on stable before the next version
    except (TimeoutError, RuntimeError) as error:
        run.error = str(error)
        timeline.say(f"story stopped: {error}")
    finally:
        traffic.stop()
        timeline.stop()
        run.samples = timeline.samples
        run.records = sorted(traffic.records, key=lambda r: r.started)
        run.weight_log = [(c.at, c.weight) for c in sandbox.gateway.weight_log]
        run.restarts = dict(sandbox.agent.restarts)
    return run


def _run_scenario(sandbox: Sandbox, timeline: Timeline, scenario: sc.Scenario, settings: sc.DemoSettings,
                  timeout_s: float, records: Callable[[], list[RequestRecord]] = list) -> ScenarioRun:
    status = timeline.status()
    run = ScenarioRun(scenario=scenario, started=time.time(), previous_stable=str(status.get("stableVersion")),
                      stable_pids_before=_stable_pids(sandbox))
    timeline.label = scenario.title
    timeline.say(f"=== {scenario.title}: spec.model.version -> {scenario.version} (expect: {scenario.expect}, "
                 f"guard: {scenario.guard})")
    history = len(status.get("history") or [])
    model = sc.model_spec(scenario, manifest_digest(sandbox.models_root, scenario.path))
    copies_before = sandbox.service_proxy.forwarded.get("canary", 0)
    # The steps and metrics go with the version: a shadow stage first or not (scenario.shadow).
    sandbox.api.patch("ASRModelRollout", sc.NAMESPACE, sc.ROLLOUT, {"spec": {
        "model": model, "strategy": {"steps": sc.strategy_steps(settings, scenario.shadow)},
        "analysis": {"metrics": sc.analysis_metrics(settings, scenario.shadow)}}})
    to_settle = sc.Scenario(**{**scenario.__dict__, "alert": False}) if scenario.alert else scenario
    _wait(f"{scenario.title} to settle", lambda: sc.is_settled(to_settle, timeline.status(), history),
          timeout_s, sandbox)
    if scenario.alert:
        status = timeline.status()
        promoted = status.get("phase") == "Succeeded" and status.get("stableVersion") == scenario.version
        if not promoted:
            run.ended, run.settled = time.time(), True
            run.detail = f"{status.get('phase')}: {scenario.version} was not promoted, so no alert was sent"
            return run
        time.sleep(3.0)  # a little traffic on the promoted version first
        run.previous_stable = str(_previous_promoted(status, scenario.version))
        history = len(status.get("history") or [])
        run.alert_sent_at = time.time()
        _post_alert(sandbox, scenario.version, run.alert_sent_at)
        timeline.say(f"Alertmanager -> operator webhook: ASRHighErrorRate firing for {scenario.version}")
        _wait("the alert to revert stable", lambda: sc.is_settled(scenario, timeline.status(), history),
              30, sandbox)
    run.ended, run.settled = time.time(), True
    # Traffic reverted first, then the ConfigMap: give the pods a moment to have reloaded.
    time.sleep(1.0)
    final = timeline.status()
    run.ok, run.detail = sc.judge(scenario, final, run.previous_stable)
    window = [r for r in list(records()) if run.started <= r.started <= run.ended]
    run.user_answers_from_version = sum(1 for r in window if r.version == scenario.version)
    run.failed_user_requests = sum(1 for r in window if r.failed)
    run.shadow_copies = sandbox.service_proxy.forwarded.get("canary", 0) - copies_before
    if scenario.shadow:
        run.detail += (f"; {run.shadow_copies} copies to the canary, {run.user_answers_from_version} user answers "
                       f"from it, {run.failed_user_requests} failed user requests")
        if scenario.expect == sc.ROLLED_BACK and (run.user_answers_from_version or run.failed_user_requests):
            run.ok = False
        if run.shadow_copies == 0:
            run.ok = False
    run.stable_pids_after = _stable_pids(sandbox)
    run.canary_path_after = _configmap_path(sandbox, "canary")
    run.stable_path_after = _configmap_path(sandbox, "stable")
    if scenario.expect != sc.PROMOTED and run.canary_path_after != run.stable_path_after:
        run.ok = False
        run.detail += f"; canary ConfigMap still points at {run.canary_path_after}"
    timeline.say(f"--- {scenario.title}: {'as expected' if run.ok else 'NOT as expected'}: {run.detail}")
    return run


def _previous_promoted(status: dict[str, Any], current: str) -> str | None:
    promoted = [h.get("version") for h in status.get("history") or [] if h.get("outcome") == "Promoted"]
    earlier = [v for v in promoted if v != current]
    return earlier[-1] if earlier else None


def _post_alert(sandbox: Sandbox, version: str, at: float) -> None:
    payload = sc.alert_payload(version, fingerprint=hashlib.sha1(version.encode()).hexdigest()[:16],
                               starts_at=_utc(at))
    response = requests.post(sandbox.operator.webhook_url + "/alerts", json=payload, timeout=10,
                             headers={"Authorization": f"Bearer {sandbox.operator.token}"})
    if response.status_code != 200:
        raise RuntimeError(f"the operator's webhook answered {response.status_code}: {response.text[:300]}")
