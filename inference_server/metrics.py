"""Prometheus metrics (docs/contracts.md). Every series carries the pod's rollout labels
(`namespace`, `rollout`, `track`, `pod`, from the environment the operator sets) so one PromQL
selector picks a rollout's canary or stable pods."""

from __future__ import annotations

import os
from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

POD_LABELS = ("namespace", "rollout", "track", "pod")
_ENV = {"namespace": "ASR_NAMESPACE", "rollout": "ASR_ROLLOUT", "track": "ASR_TRACK", "pod": "POD_NAME"}
STATES = ("LOADING", "READY", "FAILED")


def pod_labels_from_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    env = os.environ if env is None else env
    labels = {label: env.get(var, "") for label, var in _ENV.items()}
    if not labels["pod"]:
        labels["pod"] = env.get("HOSTNAME", "")
    return labels


class ServerMetrics:
    def __init__(self, pod_labels: dict[str, str], registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.pod = {k: pod_labels.get(k, "") for k in POD_LABELS}  # fixed order: .remove() is positional
        p = list(POD_LABELS)
        r = self.registry
        self.requests = Counter("asr_requests", "Requests by endpoint, status code and model version",
                                p + ["endpoint", "code", "model", "version"], registry=r)
        self.duration = Histogram("asr_request_duration_seconds", "Request duration",
                                  p + ["endpoint", "model", "version"], registry=r,
                                  buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60))
        self.audio_seconds = Counter("asr_audio_seconds", "Seconds of audio processed",
                                     p + ["model", "version"], registry=r)
        self.rtf = Histogram("asr_real_time_factor", "Processing seconds per audio second",
                             p + ["model", "version"], registry=r,
                             buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5))
        self.queue_depth = Gauge("asr_queue_depth", "Inference jobs waiting for a worker", p, registry=r)
        self.inflight = Gauge("asr_inflight_requests", "HTTP requests being handled", p, registry=r)
        self.model_info = Gauge("asr_model_info", "1 for the serving model version",
                                p + ["model", "version", "sha256"], registry=r)
        self.model_state = Gauge("asr_model_state", "1 for the current state of a model version",
                                 p + ["model", "version", "state"], registry=r)
        self.load_seconds = Gauge("asr_model_load_seconds", "Seconds to verify, load and warm a version",
                                  p + ["model", "version"], registry=r)
        self.reloads = Counter("asr_model_reloads", "Model reloads by result and reason",
                               p + ["result", "reason"], registry=r)
        self.gpu_memory = Gauge("asr_gpu_memory_allocated_bytes", "torch.cuda.memory_allocated per device",
                                p + ["device"], registry=r)
        self._serving_info: tuple[str, str, str] | None = None
        self.queue_depth.labels(**self.pod).set(0)
        self.inflight.labels(**self.pod).set(0)

    def observe_request(self, endpoint: str, code: int, model: str, version: str, seconds: float) -> None:
        self.requests.labels(**self.pod, endpoint=endpoint, code=str(code), model=model, version=version).inc()
        self.duration.labels(**self.pod, endpoint=endpoint, model=model, version=version).observe(seconds)

    def observe_audio(self, model: str, version: str, audio_s: float, processing_s: float) -> None:
        if audio_s <= 0:
            return
        self.audio_seconds.labels(**self.pod, model=model, version=version).inc(audio_s)
        self.rtf.labels(**self.pod, model=model, version=version).observe(processing_s / audio_s)

    def set_state(self, model: str, version: str, state: str) -> None:
        for s in STATES:
            self.model_state.labels(**self.pod, model=model, version=version, state=s).set(1 if s == state else 0)

    def forget_state(self, model: str, version: str) -> None:
        for s in STATES:
            try:
                self.model_state.remove(*self.pod.values(), model, version, s)
            except KeyError:
                pass

    def set_serving(self, model: str, version: str, sha256: str) -> None:
        if self._serving_info is not None:
            try:
                self.model_info.remove(*self.pod.values(), *self._serving_info)
            except KeyError:
                pass
        self._serving_info = (model, version, sha256)
        self.model_info.labels(**self.pod, model=model, version=version, sha256=sha256).set(1)

    def reload_result(self, result: str, reason: str) -> None:
        self.reloads.labels(**self.pod, result=result, reason=reason).inc()

    def update_gpu_memory(self) -> None:
        """Only where CUDA exists; on CPU machines the series is simply absent."""
        try:
            import torch
        except ImportError:
            return
        if not torch.cuda.is_available():
            return
        for index in range(torch.cuda.device_count()):
            self.gpu_memory.labels(**self.pod, device=f"cuda:{index}").set(torch.cuda.memory_allocated(index))
