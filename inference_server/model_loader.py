"""Load one model version: verify its files, build FunASR models, warm them up.

Everything here blocks (disk, torch); the reloader calls it in a thread beside the serving model.
"""

from __future__ import annotations

import gc
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from inference_server.audio import SAMPLE_RATE
from inference_server.config import ModelConfig
from inference_server.device import DeviceError, classify_load_failure, cuda_state, resolve_device, wanted_device
from inference_server.golden import GoldenSetError
from inference_server.golden_eval import GoldenResult, gate_at_load
from inference_server.manifest import IntegrityError, require_verified

log = logging.getLogger("inference_server.loader")


class LoadError(Exception):
    """A version could not be made ready; `stage` is the metric reason (integrity, load, warmup)."""

    def __init__(self, stage: str, message: str) -> None:
        super().__init__(message)
        self.stage = stage


def warmup_clip(seconds: float = 1.0) -> np.ndarray:
    """The bundled warm-up clip: a deterministic voiced-like signal (harmonics with an envelope),
    synthesised rather than shipped so the image needs no data file. It exercises the frontend,
    encoder, predictor and decoder of every version the same way."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    f0 = 140 + 30 * np.sin(2 * np.pi * 0.5 * t)
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    voiced = sum(np.sin(k * phase) / k for k in range(1, 8))
    envelope = 0.5 * (1 - np.cos(2 * np.pi * t / seconds))
    noise = np.random.default_rng(0).normal(0, 0.003, t.shape)
    return (0.2 * voiced * envelope + noise).astype(np.float32)


@dataclass
class LoadedModel:
    """One verified, warmed model version. FunASR's `generate` mutates the model object, so
    serving calls go through the scheduler's single worker thread, never two at a time."""

    config: ModelConfig
    digest: str
    asr: Any
    vad: Any | None
    load_seconds: float
    loaded_at: float
    # Requests and streams holding this version; touched only on the event loop thread.
    leases: int = 0
    golden: GoldenResult | None = None  # the last golden-set evaluation (None: ships no set)
    device: str = "cpu"                 # the torch device it runs on
    memory_bytes: int = 0               # what its load took (memory.LoadMeter)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def version(self) -> str:
        return self.config.version

    def acquire(self) -> None:
        self.leases += 1

    def release(self) -> None:
        self.leases = max(self.leases - 1, 0)

    def close(self) -> None:
        """Drop the models and free their memory (GPU cache too, where CUDA exists)."""
        self.asr = None
        self.vad = None
        gc.collect()
        release_accelerator_memory()


def import_runtime() -> None:
    """Import torch + FunASR once, then move their ~400k long-lived objects out of the garbage
    collector's reach (gc.freeze). Without this every full collection, including the one that
    releases a replaced version, walks them all while holding the GIL: 0.3-0.5 s in which no
    request makes progress. Model objects are created later, so they stay collectable."""
    import funasr  # noqa: F401
    import torch  # noqa: F401

    gc.collect()
    gc.freeze()


def release_accelerator_memory() -> None:
    try:
        import torch
    except ImportError:
        return
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def select_device(config: ModelConfig, server_device: str = "auto") -> str:
    """The torch device `config` loads on (device.wanted_device says which setting wins).
    Raises LoadError("device") where CUDA is asked for and absent: never a CPU fallback."""
    wanted, source = wanted_device(server_device, config.options.get("device"))
    available, count = cuda_state()
    try:
        return resolve_device(wanted, available, count, source)
    except DeviceError as exc:
        raise LoadError("device", str(exc)) from None


def build_automodel(model_dir: Path, config: ModelConfig, threads: int, device: str = "cpu", **extra: Any) -> Any:
    """A FunASR AutoModel whose generate() runs with `threads` torch threads (see set_threads)."""
    from funasr import AutoModel

    if not (model_dir / "config.yaml").is_file():
        # FunASR sends a missing local path to the model hub and fails with a misleading error.
        raise LoadError("load", f"{model_dir} holds no config.yaml; not a FunASR model directory")
    return AutoModel(
        model=str(model_dir),
        disable_update=True,
        disable_pbar=True,
        disable_log=True,
        device=device,
        ncpu=threads,
        **extra,
    )


def set_threads(automodel: Any, threads: int) -> None:
    """Make `automodel.generate()` run with `threads` torch threads from now on.

    FunASR 1.4.16 sets the calling thread's torch thread count to the `ncpu` the model was
    built with at the start of every generate() (AutoModel._reset_runtime_configs, from the
    kwargs snapshot in _base_kwargs_map), whatever the caller set. A model built with one thread
    for its load is switched to its serving count here. tests/server/test_server_threads.py
    fails if serving stops using `ncpu` threads."""
    automodel.kwargs["ncpu"] = threads
    snapshot = getattr(automodel, "_base_kwargs_map", {}).get("kwargs")
    if isinstance(snapshot, dict):
        snapshot["ncpu"] = threads


def load_version(config: ModelConfig, models_root: Path, load_threads: int | None = None,
                 server_device: str = "auto") -> LoadedModel:
    """Verify, load and warm `config`'s version. Raises LoadError naming the failed stage.

    `load_threads` (default: the version's `ncpu`) is the torch thread count of the load itself:
    construction, warm-up and golden set. A server loading beside the serving version passes 1,
    so the load neither takes the serving worker's CPU nor starts a second OpenMP team (two
    teams outnumbering the CPUs make both sleep at every barrier). The returned model serves
    with `ncpu` threads. Run this on a thread that exits afterwards (inference_server.threads).
    `server_device` is the server's --device / ASR_DEVICE (see select_device)."""
    from inference_server.memory import LoadMeter

    started = time.perf_counter()
    device = select_device(config, server_device)
    try:
        model_dir = config.model_dir(models_root)
        vad_dir = config.vad_dir(models_root)
    except ValueError as exc:
        raise LoadError("invalid_config", str(exc)) from None
    if not model_dir.is_dir():
        raise LoadError("load", f"model directory {config.path!r} does not exist under the models root")
    try:
        digest = require_verified(model_dir, config.sha256)
        if vad_dir is not None:
            if not vad_dir.is_dir():
                raise LoadError("load", f"VAD directory {config.vad_path!r} does not exist under the models root")
            require_verified(vad_dir)
    except IntegrityError as exc:
        raise LoadError("integrity", str(exc)) from None

    serving_threads = int(config.server_option("ncpu"))
    threads = serving_threads if load_threads is None else load_threads
    meter = LoadMeter(device).__enter__()
    try:
        asr = build_automodel(model_dir, config, threads, device, **config.automodel_options())
        vad = build_automodel(vad_dir, config, threads, device) if vad_dir is not None else None
    except LoadError:
        raise
    except Exception as exc:
        release_accelerator_memory()
        raise LoadError(classify_load_failure(exc) or "load",
                        f"FunASR could not load {config.path} on {device}: {type(exc).__name__}: {exc}") from None

    loaded = LoadedModel(config=config, digest=digest, asr=asr, vad=vad, load_seconds=0.0,
                         loaded_at=time.time(), device=device)
    try:
        warm_up(loaded)
    except Exception as exc:
        loaded.close()
        raise LoadError(classify_load_failure(exc) or "warmup",
                        f"warm-up of {config.version} on {device} failed: {type(exc).__name__}: {exc}") from None
    loaded.memory_bytes = meter.used()
    try:  # the quality gate: a golden CER over options.golden_cer_max keeps the version unready
        loaded.golden = gate_at_load(loaded, model_dir)
    except GoldenSetError as exc:
        loaded.close()
        raise LoadError("golden", str(exc)) from None
    except Exception as exc:
        loaded.close()
        raise LoadError("golden", f"golden set of {config.version} could not be evaluated: "
                                  f"{type(exc).__name__}: {exc}") from None
    for automodel in (asr, vad):
        if automodel is not None:
            set_threads(automodel, serving_threads)
    loaded.load_seconds = time.perf_counter() - started
    return loaded


def warm_up(model: LoadedModel) -> None:
    clip = warmup_clip()
    result = model.asr.generate(input=clip)
    if not isinstance(result, list):
        raise RuntimeError(f"generate returned {type(result).__name__}, expected a list")
    if model.vad is not None:
        model.vad.generate(input=clip, max_end_silence_time=int(model.config.server_option("vad_max_end_silence_ms")))
