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
# The requests canary analysis reads (asr_requests_total, asr_request_duration_seconds). Anything
# else (model listing, golden detail, admin, probes, scrapes, unknown paths) would pad the request
# count and dilute the error rate, so it is counted apart (asr_control_requests_total); WebSocket
# streams have their own metrics (one 10-minute stream is not one 600 s "request").
INFERENCE_ENDPOINTS = ("/v1/audio/transcriptions", "/v1/audio/transcriptions/batch", "/v1/vad")
STREAM_RESULTS = ("done", "closed", "error")


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
        # Written by the worker thread (prometheus_client is thread-safe); no model label: a
        # batch is formed before anything else about it matters, and these are capacity signals.
        self.batch_size = Histogram("asr_batch_size", "Recognition inputs decoded in one generate() call",
                                    p, registry=r, buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32))
        self.queue_wait = Histogram("asr_queue_wait_seconds", "Seconds a job waited in the queue before "
                                    "its batch started", p, registry=r,
                                    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10))
        self.inflight = Gauge("asr_inflight_requests", "HTTP requests being handled", p, registry=r)
        self.model_info = Gauge("asr_model_info", "1 for the serving model version",
                                p + ["model", "version", "sha256"], registry=r)
        self.model_state = Gauge("asr_model_state", "1 for the current state of a model version",
                                 p + ["model", "version", "state"], registry=r)
        self.load_seconds = Gauge("asr_model_load_seconds", "Seconds to verify, load and warm a version",
                                  p + ["model", "version"], registry=r)
        self.reloads = Counter("asr_model_reloads", "Model reloads by tried version, result and reason",
                               p + ["version", "result", "reason"], registry=r)
        self.control_requests = Counter("asr_control_requests", "Requests to non-inference endpoints "
                                        "(models, golden, admin, probes, metrics, unknown paths)",
                                        p + ["endpoint", "code"], registry=r)
        self.stream_sessions = Counter("asr_stream_sessions", "WebSocket stream sessions by how they ended "
                                       "(done: flushed after the client's end; closed: the client left; "
                                       "error: the server ended it with an error)",
                                       p + ["model", "version", "result"], registry=r)
        self.stream_segment_duration = Histogram(
            "asr_stream_segment_duration_seconds", "Seconds to recognise one speech segment of a stream",
            p + ["model", "version"], registry=r,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30))
        self.stream_errors = Counter("asr_stream_errors", "Errors that ended a stream, by HTTP-like status",
                                     p + ["model", "version", "code"], registry=r)
        self.gpu_memory = Gauge("asr_gpu_memory_allocated_bytes", "torch.cuda.memory_allocated per device",
                                p + ["device"], registry=r)
        self.gpu_memory_used = Gauge("asr_gpu_memory_used_bytes", "Device memory in use (total - free, "
                                     "torch.cuda.mem_get_info; every process on the device)",
                                     p + ["device"], registry=r)
        self.gpu_memory_total = Gauge("asr_gpu_memory_total_bytes", "Device memory in all", p + ["device"], registry=r)
        self.memory_headroom = Gauge("asr_memory_headroom_bytes", "Memory free for loading another version "
                                     "beside the serving one (+Inf: no limit known)", p + ["device"], registry=r)
        self.model_memory = Gauge("asr_model_memory_bytes", "What a version needs to load (measured at its "
                                  "load, else estimated from its files)", p + ["model", "version"], registry=r)
        self.can_load_beside = Gauge("asr_model_can_load_beside", "1 when a version of the serving one's size "
                                     "fits beside it (a hot reload will not be refused for memory)", p, registry=r)
        self._model_memory_keys: set[tuple[str, str]] = set()
        self._serving_info: tuple[str, str, str] | None = None
        self._state_keys: set[tuple[str, str]] = set()  # (model, version) with asr_model_state series
        self.queue_depth.labels(**self.pod).set(0)
        self.inflight.labels(**self.pod).set(0)

    def observe_request(self, endpoint: str, code: int, model: str, version: str, seconds: float) -> None:
        """One finished HTTP request: inference endpoints feed the request metrics analysis
        reads, every other path only the control counter."""
        if endpoint not in INFERENCE_ENDPOINTS:
            self.control_requests.labels(**self.pod, endpoint=endpoint, code=str(code)).inc()
            return
        self.requests.labels(**self.pod, endpoint=endpoint, code=str(code), model=model, version=version).inc()
        self.duration.labels(**self.pod, endpoint=endpoint, model=model, version=version).observe(seconds)

    def observe_batch(self, size: int) -> None:
        self.batch_size.labels(**self.pod).observe(size)

    def observe_queue_wait(self, seconds: float) -> None:
        self.queue_wait.labels(**self.pod).observe(seconds)

    def observe_stream(self, model: str, version: str, result: str, error_code: int | None = None) -> None:
        self.stream_sessions.labels(**self.pod, model=model, version=version, result=result).inc()
        if error_code is not None:
            self.stream_errors.labels(**self.pod, model=model, version=version, code=str(error_code)).inc()

    def observe_stream_segment(self, model: str, version: str, seconds: float) -> None:
        self.stream_segment_duration.labels(**self.pod, model=model, version=version).observe(seconds)

    def observe_audio(self, model: str, version: str, audio_s: float, processing_s: float) -> None:
        if audio_s <= 0:
            return
        self.audio_seconds.labels(**self.pod, model=model, version=version).inc(audio_s)
        self.rtf.labels(**self.pod, model=model, version=version).observe(processing_s / audio_s)

    def set_state(self, model: str, version: str, state: str) -> None:
        self._state_keys.add((model, version))
        for s in STATES:
            self.model_state.labels(**self.pod, model=model, version=version, state=s).set(1 if s == state else 0)

    def forget_state(self, model: str, version: str) -> None:
        """Remove a version's state (and load-time) series: it is no longer loading or serving."""
        self._state_keys.discard((model, version))
        for s in STATES:
            try:
                self.model_state.remove(*self.pod.values(), model, version, s)
            except KeyError:
                pass
        try:
            self.load_seconds.remove(*self.pod.values(), model, version)
        except KeyError:
            pass

    def retain_states(self, versions: set[str]) -> None:
        """Forget the state series of every version not in `versions`."""
        for model, version in sorted(self._state_keys):
            if version not in versions:
                self.forget_state(model, version)

    def set_serving(self, model: str, version: str, sha256: str) -> None:
        if self._serving_info is not None:
            try:
                self.model_info.remove(*self.pod.values(), *self._serving_info)
            except KeyError:
                pass
        self._serving_info = (model, version, sha256)
        self.model_info.labels(**self.pod, model=model, version=version, sha256=sha256).set(1)

    def reload_result(self, version: str | None, result: str, reason: str) -> None:
        """`version` is the version that was tried ("none" when the config could not be read)."""
        self.reloads.labels(**self.pod, version=version or "none", result=result, reason=reason).inc()

    def update_gpu_memory(self) -> None:
        """Only where CUDA exists; on CPU machines the series is simply absent."""
        try:
            import torch
        except ImportError:
            return
        if not torch.cuda.is_available():
            return
        for index in range(torch.cuda.device_count()):
            device = f"cuda:{index}"
            self.gpu_memory.labels(**self.pod, device=device).set(torch.cuda.memory_allocated(index))
            free, total = torch.cuda.mem_get_info(index)
            self.gpu_memory_used.labels(**self.pod, device=device).set(total - free)
            self.gpu_memory_total.labels(**self.pod, device=device).set(total)

    def set_memory(self, device: str, headroom_bytes: int | None, can_load_beside: bool,
                   model_bytes: dict[tuple[str, str], int]) -> None:
        """Publish the memory view (ModelSlot.memory_status): headroom, per-version need."""
        self.memory_headroom.clear()  # one series: the device the next version would load on
        self.memory_headroom.labels(**self.pod, device=device).set(
            float("inf") if headroom_bytes is None else headroom_bytes)
        self.can_load_beside.labels(**self.pod).set(1 if can_load_beside else 0)
        for key in self._model_memory_keys - set(model_bytes):
            try:
                self.model_memory.remove(*self.pod.values(), *key)
            except KeyError:
                pass
        for (model, version), value in model_bytes.items():
            self.model_memory.labels(**self.pod, model=model, version=version).set(value)
        self._model_memory_keys = set(model_bytes)
