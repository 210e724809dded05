"""Server settings: command line first, then environment, then defaults."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path

from inference_server.audio import AudioLimits
from inference_server.device import DEVICE_CHOICES, check_device_name


@dataclass(frozen=True)
class ServerSettings:
    model_config: Path
    models_root: Path
    host: str = "0.0.0.0"
    port: int = 8000
    max_queue: int = 16                 # waiting jobs before 503 + Retry-After
    request_timeout_s: float = 60.0
    drain_timeout_s: float = 30.0       # SIGTERM: how long running requests may still take
    watch_interval_s: float = 0.5
    load_nice: int = 10                 # CPU priority of version loads below serving (0: equal)
    admin_token: str | None = None      # POST /admin/reload is off unless a token is set
    batch_max_size: int = 8             # recognition inputs per generate() (dynamic batching)
    batch_wait_ms: float = 5.0          # how long a batch waits for arriving requests (0: batching off)
    limits: AudioLimits = field(default_factory=AudioLimits)
    log_level: str = "INFO"
    device: str = "auto"                # auto | cpu | cuda | cuda:N (inference_server.device)
    memory_limit_bytes: int | None = None  # caps the headroom a hot reload may use (memory.py)


def parse_args(argv: list[str] | None = None) -> ServerSettings:
    env = os.environ
    p = argparse.ArgumentParser(prog="asr-inference-server", description="FunASR inference server")
    p.add_argument("--model-config", type=Path, default=env.get("ASR_MODEL_CONFIG"), required="ASR_MODEL_CONFIG" not in env,
                   help="model config YAML (name, version, path, sha256, vad_path, options)")
    p.add_argument("--models-root", type=Path, default=env.get("ASR_MODELS_ROOT", "/models"),
                   help="directory every model path is relative to (default /models)")
    p.add_argument("--host", default=env.get("ASR_HOST", "0.0.0.0"))
    p.add_argument("--port", type=int, default=int(env.get("ASR_PORT", "8000")))
    p.add_argument("--max-queue", type=int, default=int(env.get("ASR_MAX_QUEUE", "16")))
    p.add_argument("--request-timeout", type=float, default=float(env.get("ASR_REQUEST_TIMEOUT_S", "60")))
    p.add_argument("--drain-timeout", type=float, default=float(env.get("ASR_DRAIN_TIMEOUT_S", "30")))
    p.add_argument("--watch-interval", type=float, default=float(env.get("ASR_WATCH_INTERVAL_S", "0.5")))
    p.add_argument("--load-nice", type=int, default=int(env.get("ASR_LOAD_NICE", "10")),
                   help="how far below the serving threads a version load runs (nice 0-19; default 10, "
                        "0: same priority, the fastest swaps under saturating traffic)")
    p.add_argument("--batch-max-size", type=int, default=int(env.get("ASR_BATCH_MAX_SIZE", "8")),
                   help="most recognition inputs decoded together in one generate() call (default 8; 1: no batching)")
    p.add_argument("--batch-wait-ms", type=float, default=float(env.get("ASR_BATCH_WAIT_MS", "5")),
                   help="how long a forming batch waits for requests still being uploaded (default 5 ms; "
                        "0 turns batching off: every input is decoded alone)")
    p.add_argument("--max-upload-bytes", type=int, default=int(env.get("ASR_MAX_UPLOAD_BYTES", str(25 * 1024 * 1024))))
    p.add_argument("--max-audio-seconds", type=float, default=float(env.get("ASR_MAX_AUDIO_SECONDS", "600")))
    p.add_argument("--log-level", default=env.get("ASR_LOG_LEVEL", "INFO"))
    p.add_argument("--device", default=env.get("ASR_DEVICE", "auto"),
                   help=f"{DEVICE_CHOICES} (default auto: CUDA when present, else CPU; the operator sets "
                        "cuda for a pod that requests a GPU). Wins over the model config's options.device; "
                        "cuda without CUDA is a load failure (reason device), never a CPU fallback")
    p.add_argument("--memory-limit-bytes", type=int,
                   default=int(env["ASR_MEMORY_LIMIT_BYTES"]) if env.get("ASR_MEMORY_LIMIT_BYTES") else None,
                   help="at most this much memory for the server (CPU: RSS; CUDA: torch's reservation), below "
                        "the cgroup limit / free device memory; a hot reload that would not fit is refused "
                        "with reason insufficient_memory")
    a = p.parse_args(argv)
    problem = check_device_name(a.device)
    if problem is not None:
        p.error(f"--device / ASR_DEVICE: {problem}")
    if a.memory_limit_bytes is not None and a.memory_limit_bytes < 1:
        p.error("--memory-limit-bytes / ASR_MEMORY_LIMIT_BYTES must be a positive number of bytes")
    if a.max_queue < 1:
        p.error("--max-queue must be at least 1")
    if a.batch_max_size < 1:
        p.error(f"--batch-max-size must be at least 1 (got {a.batch_max_size}); 1 decodes every input alone")
    if not 0 <= a.batch_wait_ms <= 1000:
        p.error(f"--batch-wait-ms must be between 0 and 1000 (got {a.batch_wait_ms}); 0 turns batching off")
    if not 0 <= a.load_nice <= 19:
        p.error(f"--load-nice must be between 0 and 19 (got {a.load_nice}); 0 runs loads at serving priority")
    return ServerSettings(
        model_config=a.model_config, models_root=a.models_root, host=a.host, port=a.port,
        max_queue=a.max_queue, request_timeout_s=a.request_timeout, drain_timeout_s=a.drain_timeout,
        watch_interval_s=a.watch_interval, load_nice=a.load_nice,
        batch_max_size=a.batch_max_size, batch_wait_ms=a.batch_wait_ms, admin_token=env.get("ASR_ADMIN_TOKEN") or None,
        limits=AudioLimits(max_bytes=a.max_upload_bytes, max_seconds=a.max_audio_seconds),
        log_level=a.log_level, device=a.device, memory_limit_bytes=a.memory_limit_bytes,
    )
