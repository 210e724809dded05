"""Fake inference pods: the stand-in for what cannot run here (GPU pods scheduled by a real
kubelet on real nodes). This is a mock, and the tests that use it say so.

One aiohttp server on 127.0.0.1 plays, for every rollout it is told to watch:
- the kubelet and the node: it reads the rollout's Deployments from the API and reports their
  pods ready, or withholds readiness for a version whose pods never become ready (the
  progress-deadline case). Against the emulator (no Deployment controller, no pods) it sets the
  Deployments' `status` (`readyReplicas` etc.) through `/status`; against a real API server
  (`kubelet=True`) it does what a kubelet does: writes each pod's `status` (Running, Ready), and
  the real ReplicaSet and Deployment controllers count them;
- the inference server's `/metrics` (metric names and labels from docs/contracts.md) for each
  pod `R-<track>-<i>` of those Deployments: request counts, error ratio, latency and
  real-time-factor histograms with values the test chooses per model version, and
  `asr_model_info` = 1 for the version the track's ConfigMap names. A promotion that rewrites
  the stable ConfigMap is therefore seen as the stable pods hot-reloading it, with no pod change.

The data is synthetic; the path it takes is real: Prometheus scrapes it over HTTP and the
operator queries Prometheus.
"""
from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp
import aiohttp.web
import yaml
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from asr_sandbox.loop_thread import LoopThread

POD_LABELS = ["namespace", "rollout", "track", "pod"]
TRACKS = ("stable", "canary")


@dataclass(frozen=True)
class VersionBehaviour:
    """How pods serving one model version behave."""
    requests_per_second: float = 20.0  # per track (spread over its pods)
    error_ratio: float = 0.0  # share of requests answered 503
    latency_seconds: float = 0.1
    real_time_factor: float = 0.1
    ready: bool = True  # False: the pods never pass their readiness probe
    ready_delay_seconds: float = 0.0  # a new pod turns ready this long after it appeared (a slow model load)


@dataclass
class WatchedRollout:
    namespace: str
    name: str
    default: VersionBehaviour
    versions: dict[str, VersionBehaviour] = field(default_factory=dict)
    # track -> (model, version, sha256) the track's ConfigMap names now
    serving: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    replicas: dict[str, int] = field(default_factory=dict)
    carry: dict[str, float] = field(default_factory=dict)  # fractional requests not yet counted

    def behaviour(self, version: str) -> VersionBehaviour:
        return self.versions.get(version, self.default)


class FakePods:
    TICK_SECONDS = 0.25

    def __init__(self, api_url: str, token: str | None = None, kubelet: bool = False) -> None:
        self.api_url = api_url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.kubelet = kubelet
        self.registry = CollectorRegistry()
        r, p = self.registry, POD_LABELS
        self.requests = Counter("asr_requests", "Requests", p + ["endpoint", "code", "model", "version"], registry=r)
        self.duration = Histogram("asr_request_duration_seconds", "Request duration",
                                  p + ["endpoint", "model", "version"], registry=r,
                                  buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60))
        self.audio = Counter("asr_audio_seconds", "Audio seconds", p + ["model", "version"], registry=r)
        self.rtf = Histogram("asr_real_time_factor", "Processing s per audio s", p + ["model", "version"],
                             registry=r, buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5))
        self.model_info = Gauge("asr_model_info", "1 for the serving version",
                                p + ["model", "version", "sha256"], registry=r)
        self.model_state = Gauge("asr_model_state", "1 for the current state",
                                 p + ["model", "version", "state"], registry=r)
        self._rollouts: dict[tuple[str, str], WatchedRollout] = {}
        self._series: dict[str, set[tuple[Any, tuple[str, ...]]]] = {}  # pod -> (metric, labels)
        self._info: dict[str, tuple[str, ...]] = {}  # pod -> model_info label values
        # When each pod appeared: real pods by uid; the emulator's (no pods) as one start time per
        # replica of a Deployment, newest last (a scale-down removes the newest, unready ones first).
        self._pod_seen: dict[str, float] = {}
        self._replica_starts: dict[tuple[str, str], list[float]] = {}
        self._lock = threading.Lock()
        self._background = LoopThread("fake-pods")
        self.loop = self._background.loop
        self._runner: aiohttp.web.AppRunner | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self.port = 0
        self.errors: list[str] = []  # what went wrong talking to the emulator (for diagnostics)

    # --- the test's controls -------------------------------------------------------------------

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def watch(self, namespace: str, rollout: str, default: VersionBehaviour | None = None,
              versions: dict[str, VersionBehaviour] | None = None) -> None:
        with self._lock:
            self._rollouts[namespace, rollout] = WatchedRollout(
                namespace, rollout, default or VersionBehaviour(), dict(versions or {}))

    def forget(self, namespace: str) -> None:
        """Stop playing the pods of every rollout in `namespace` (their series go away)."""
        with self._lock:
            for key in [k for k in self._rollouts if k[0] == namespace]:
                watched = self._rollouts.pop(key)
                for track in TRACKS:
                    self._set_pods(watched, track, 0)

    def set_behaviour(self, namespace: str, rollout: str, version: str | None = None, **changes: Any) -> None:
        """Change how one version (or, with version=None, every unnamed version) behaves."""
        with self._lock:
            watched = self._rollouts[namespace, rollout]
            if version is None:
                watched.default = replace(watched.default, **changes)
            else:
                watched.versions[version] = replace(watched.behaviour(version), **changes)

    def serving(self, namespace: str, rollout: str) -> dict[str, str]:
        """track -> version its pods report in asr_model_info now."""
        with self._lock:
            watched = self._rollouts[namespace, rollout]
            return {track: info[1] for track, info in watched.serving.items()
                    if watched.replicas.get(track, 0) > 0}

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> "FakePods":
        self._background.start(self._start())
        return self

    async def _start(self) -> None:
        app = aiohttp.web.Application()
        app.router.add_get("/metrics", self._metrics)
        self._runner = aiohttp.web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = aiohttp.web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5), headers=self.headers,
                                              connector=aiohttp.TCPConnector(ssl=False))
        self._ticker = asyncio.ensure_future(self._tick_forever())

    def stop(self) -> None:
        async def _stop() -> None:
            if self._ticker is not None:
                self._ticker.cancel()
                await asyncio.gather(self._ticker, return_exceptions=True)
            if self._session is not None:
                await self._session.close()
            if self._runner is not None:
                await self._runner.cleanup()
        self._background.stop(_stop())

    def __enter__(self) -> "FakePods":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _metrics(self, request: aiohttp.web.Request) -> aiohttp.web.Response:
        with self._lock:
            body = generate_latest(self.registry)
        return aiohttp.web.Response(body=body, content_type="text/plain", charset="utf-8")

    # --- the kubelet's and the pods' work ------------------------------------------------------

    async def _tick_forever(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(self.TICK_SECONDS)
            now = time.monotonic()
            with self._lock:
                watched = list(self._rollouts.values())
            for rollout in watched:
                try:
                    await self._tick(rollout, now - last)
                except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, KeyError) as e:
                    self.errors.append(f"{rollout.namespace}/{rollout.name}: {e!r}")
                    del self.errors[:-50]
            last = now

    async def _get(self, path: str) -> dict[str, Any] | None:
        assert self._session is not None
        async with self._session.get(self.api_url + path) as response:
            if response.status == 404:
                return None
            response.raise_for_status()
            return await response.json()

    async def _tick(self, rollout: WatchedRollout, elapsed: float) -> None:
        ns, name = rollout.namespace, rollout.name
        for track in TRACKS:
            cm = await self._get(f"/api/v1/namespaces/{ns}/configmaps/{name}-{track}-model")
            deployment = await self._get(f"/apis/apps/v1/namespaces/{ns}/deployments/{name}-{track}")
            config = yaml.safe_load(((cm or {}).get("data") or {}).get("model.yaml") or "null") or {}
            version = str(config.get("version") or "")
            behaviour = rollout.behaviour(version)
            replicas = int(((deployment or {}).get("spec") or {}).get("replicas") or 0) if deployment else 0
            if deployment is not None and self.kubelet:
                await self._report_pods(ns, name, track, behaviour.ready and bool(version),
                                        behaviour.ready_delay_seconds)
            elif deployment is not None:
                await self._report_readiness(deployment, replicas, behaviour.ready and bool(version),
                                             behaviour.ready_delay_seconds)
            with self._lock:
                if version:
                    rollout.serving[track] = (str(config.get("name") or ""), version, str(config.get("sha256") or ""))
                else:
                    rollout.serving.pop(track, None)
                running = replicas if version and behaviour.ready else 0
                self._set_pods(rollout, track, running)
                if running:
                    self._serve_traffic(rollout, track, running, behaviour, elapsed)

    async def _report_readiness(self, deployment: dict[str, Any], replicas: int, ready: bool,
                                delay: float = 0.0) -> None:
        meta = deployment["metadata"]
        starts = self._replica_starts.setdefault((meta["namespace"], meta["name"]), [])
        now = time.monotonic()
        del starts[replicas:]
        starts.extend([now] * (replicas - len(starts)))
        count = sum(1 for started in starts if now - started >= delay) if ready else 0
        desired = {
            "observedGeneration": meta.get("generation", 1),
            "replicas": replicas,
            "updatedReplicas": replicas,
            "readyReplicas": count,
            "availableReplicas": count,
        }
        current = deployment.get("status") or {}
        if all(current.get(k) == v for k, v in desired.items()):
            return
        assert self._session is not None
        path = f"/apis/apps/v1/namespaces/{meta['namespace']}/deployments/{meta['name']}/status"
        async with self._session.patch(self.api_url + path, json={"status": desired},
                                       headers={"Content-Type": "application/merge-patch+json"}) as response:
            response.raise_for_status()

    async def _report_pods(self, namespace: str, rollout: str, track: str, ready: bool, delay: float = 0.0) -> None:
        """The kubelet's part on a real API: every pod of the track Running, Ready or not (a new
        pod only `delay` seconds after it was first seen)."""
        assert self._session is not None
        selector = f"asr.rollout.dev/rollout={rollout},asr.rollout.dev/track={track}"
        pods = await self._get(f"/api/v1/namespaces/{namespace}/pods?labelSelector={selector}") or {}
        now = time.monotonic()
        for pod in pods.get("items") or []:
            if pod["metadata"].get("deletionTimestamp"):
                continue
            seen = self._pod_seen.setdefault(pod["metadata"]["uid"], now)
            await report_pod_status(self._session, self.api_url, pod, ready and now - seen >= delay)

    def _set_pods(self, rollout: WatchedRollout, track: str, count: int) -> None:
        """Pods `R-track-0..count-1` exist and report the track's version; others are gone."""
        previous = rollout.replicas.get(track, 0)
        for index in range(count, previous):
            self._forget_pod(f"{rollout.name}-{track}-{index}")
        rollout.replicas[track] = count
        model, version, sha256 = rollout.serving.get(track, ("", "", ""))
        for index in range(count):
            pod = f"{rollout.name}-{track}-{index}"
            labels = (rollout.namespace, rollout.name, track, pod)
            info = labels + (model, version, sha256)
            if self._info.get(pod) != info:  # hot reload: the old version's series go away
                if pod in self._info:
                    self.model_info.remove(*self._info[pod])
                    old_model, old_version = self._info[pod][4:6]
                    self.model_state.remove(*labels, old_model, old_version, "READY")
                self.model_info.labels(*info).set(1)
                self.model_state.labels(*labels, model, version, "READY").set(1)
                self._info[pod] = info

    def _forget_pod(self, pod: str) -> None:
        if pod in self._info:
            info = self._info.pop(pod)
            self.model_info.remove(*info)
            self.model_state.remove(*info[:4], info[4], info[5], "READY")
        for metric, labels in self._series.pop(pod, set()):
            try:
                metric.remove(*labels)
            except KeyError:
                pass

    def _serve_traffic(self, rollout: WatchedRollout, track: str, pods: int,
                       behaviour: VersionBehaviour, elapsed: float) -> None:
        model, version, _ = rollout.serving[track]
        total = rollout.carry.get(track, 0.0) + behaviour.requests_per_second * elapsed
        count = int(total)
        rollout.carry[track] = total - count
        errors_due = behaviour.error_ratio * count
        for i in range(count):
            pod = f"{rollout.name}-{track}-{i % pods}"
            base = (rollout.namespace, rollout.name, track, pod)
            # spread errors evenly over the tick's requests: exact ratio over any window
            failed = int((i + 1) * behaviour.error_ratio) > int(i * behaviour.error_ratio) if errors_due else False
            code = "503" if failed else "200"
            self._record(pod, self.requests, base + ("/v1/audio/transcriptions", code, model, version)).inc()
            self._record(pod, self.duration, base + ("/v1/audio/transcriptions", model, version)) \
                .observe(behaviour.latency_seconds)
            self._record(pod, self.audio, base + (model, version)).inc(5.0)
            self._record(pod, self.rtf, base + (model, version)).observe(behaviour.real_time_factor)

    def _record(self, pod: str, metric: Any, labels: tuple[str, ...]) -> Any:
        self._series.setdefault(pod, set()).add((metric, labels))
        return metric.labels(*labels)


async def report_pod_status(session: aiohttp.ClientSession, api_url: str, pod: dict[str, Any], ready: bool) -> None:
    """Write what a kubelet would for a started pod: phase Running and the Ready condition
    (skipped when the pod already says so)."""
    status = pod.get("status") or {}
    wanted = "True" if ready else "False"
    current = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
    if status.get("phase") == "Running" and current.get("Ready") == wanted:
        return
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    conditions = [{"type": kind, "status": "True" if kind in ("PodScheduled", "Initialized") else wanted,
                   "lastTransitionTime": now} for kind in ("PodScheduled", "Initialized", "ContainersReady", "Ready")]
    # No podIP: these pods serve nothing, so the operator's config push has nowhere to go (it skips them).
    body = {"status": {"phase": "Running", "conditions": conditions, "startTime": now}}
    meta = pod["metadata"]
    path = f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status"
    async with session.patch(api_url + path, json=body,
                             headers={"Content-Type": "application/strategic-merge-patch+json"}) as response:
        if response.status != 404:  # a pod deleted meanwhile is no error
            response.raise_for_status()
