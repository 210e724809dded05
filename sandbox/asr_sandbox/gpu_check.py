"""`make gpu-check`: the inference server on a CUDA device, measured (JSON lines on stdout).

On a machine with CUDA (`--device auto`, the default, picks it) it builds two production-sized
random-weight Paraformer versions (asr_sandbox.bench_server.realistic_config) and reports:

- `gpu_http_rtf_ratio`: p50 of the 10 s clip's HTTP round trip / p50 of a bare FunASR
  `generate()` on the same device in this process (the server's cost on top of the model), with
  both real-time factors;
- `gpu_hot_swap_failures`: failed requests of 8 concurrent clients over 20 hot swaps (target 0);
- `gpu_memory_after_50_swaps_ratio`: the server's torch-allocated device memory after 50 swaps /
  after the first (target within 2%: a swap leaks nothing on the device);
- `insufficient_memory_refused`: a second server, its memory capped (--memory-limit-bytes) to
  room for one version and half of another, refuses a hot reload with reason
  `insufficient_memory` while the old version keeps answering (1: as it should).

Without CUDA it prints one line saying it was skipped, and exits 0. `--device cpu` runs the same
checks on CPU (memory: the server's RSS), `--quick` on the tiny test models with fewer swaps:
that is how the non-CUDA parts of this script are exercised on machines without a GPU.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from asr_sandbox import ConfigMapDir, ServerProcess, model_config
from asr_sandbox.assets import build_all, build_version_dir, paraformer_cmvn, write_paraformer
from asr_sandbox.bench_server import emit, load_phase, realistic_config, rss_bytes, timed_post


def skipped_line(reason: str) -> str:
    return json.dumps({"bench": "gpu-check", "skipped": True, "reason": reason})


def metric_value(server: ServerProcess, name: str, **labels: str) -> float | None:
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(server.url + "/metrics", timeout=10).read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None


def server_memory(server: ServerProcess, device: str) -> float:
    """What the swaps must not grow: torch's allocation on the device (CUDA), else the RSS."""
    if device.startswith("cuda"):
        value = metric_value(server, "asr_gpu_memory_allocated_bytes", device=device)
        if value is None:
            raise RuntimeError(f"the server reports no asr_gpu_memory_allocated_bytes for {device}")
        return value
    assert server.proc is not None
    return float(rss_bytes(server.proc.pid))


def build_models(root: Path, assets: Path, quick: bool) -> Path:
    """Two versions, v1 and v2, under `root/paraformer-tiny/`: the tiny test models (quick) or
    production-sized random-weight ones (~200 MB each)."""
    if quick:
        return assets / "models"
    cmvn = paraformer_cmvn(assets / "models" / "fsmn-vad" / "v1")
    for seed, version in ((3, "v1"), (4, "v2")):
        build_version_dir(root / "paraformer-tiny" / version,
                          functools.partial(write_paraformer, seed=seed, cmvn=cmvn, cfg=realistic_config()))
    return root


async def rtf_ratio(server: ServerProcess, model_dir: Path, device: str, wav: bytes, samples: np.ndarray,
                    rounds: int) -> None:
    with contextlib.redirect_stdout(sys.stderr):  # funasr prints notices on import: stdout is JSON lines
        from funasr import AutoModel

    direct = AutoModel(model=str(model_dir), disable_update=True, disable_pbar=True, disable_log=True,
                       device=device, ncpu=2)
    times: dict[str, list[float]] = {"direct": [], "http": []}
    async with aiohttp.ClientSession() as session:
        for i in range(rounds + 3):  # 3 warm-up rounds, then alternate which side goes first
            for side in (("direct", "http") if i % 2 == 0 else ("http", "direct")):
                if side == "direct":
                    started = time.perf_counter()
                    direct.generate(input=samples)
                    seconds = time.perf_counter() - started
                else:
                    status, seconds, _ = await timed_post(session, server.url, wav)
                    if status != 200:
                        raise RuntimeError(f"HTTP {status} from the server; log:\n{server.log_tail()}")
                if i >= 3:
                    times[side].append(seconds)
                await asyncio.sleep(0.02)
    del direct
    d50, h50 = statistics.median(times["direct"]), statistics.median(times["http"])
    clip_s = len(samples) / 16000
    emit("gpu_http_rtf_ratio", h50 / d50, "<= 1.10", device=device, http_rtf=round(h50 / clip_s, 4),
         direct_rtf=round(d50 / clip_s, 4), http_p50_s=round(h50, 4), direct_p50_s=round(d50, 4), rounds=rounds)


async def swap_to(server: ServerProcess, cm: ConfigMapDir, version: str) -> None:
    cm.swap(model_config(version, vad=False))
    await asyncio.to_thread(server.wait_serving, version, 300)


async def hot_swaps(server: ServerProcess, cm: ConfigMapDir, device: str, wav: bytes,
                    loaded_swaps: int, total_swaps: int) -> None:
    """`loaded_swaps` swaps under 8 clients (every request must answer 200), then the rest
    without traffic; device memory after the first swap and after the last."""
    versions = ["v2" if i % 2 == 0 else "v1" for i in range(total_swaps)]
    await swap_to(server, cm, versions[0])
    await asyncio.sleep(1.0)  # the replaced version is released once its last request ends
    first = server_memory(server, device)

    async def swaps_under_load() -> None:
        for version in versions[1:loaded_swaps + 1]:
            await swap_to(server, cm, version)
            await asyncio.sleep(0.2)

    _, failures, total = await load_phase(server, wav, None, swaps_under_load())
    emit("gpu_hot_swap_failures", failures, "== 0", device=device, swaps=loaded_swaps, clients=8, requests=total)
    for version in versions[loaded_swaps + 1:]:
        await swap_to(server, cm, version)
    await asyncio.sleep(2.0)
    after = server_memory(server, device)
    ratio = after / first
    emit(f"gpu_memory_after_{total_swaps}_swaps_ratio", ratio, "within 0.98..1.02", device=device,
         within_target=abs(ratio - 1) <= 0.02, after_first_bytes=int(first), after_last_bytes=int(after),
         measure="torch.cuda.memory_allocated" if device.startswith("cuda") else "RSS")


async def refusal(tmp: Path, models_root: Path, device: str, wav: bytes, used: int, need: int) -> None:
    """A server capped so that v2 cannot fit beside v1: the hot reload to v2 must be refused
    (insufficient_memory) and v1 keep answering. CUDA: what one version holds plus half of what
    the next needs (torch's reservation is the same in two identical processes). CPU: half the
    RSS, since two identical fresh processes differ by tens of MB of RSS, more than a tiny
    model needs, so a cap of "one and a half models" would be noise there."""
    cap, cap_rule = (used + need // 2, "used + need/2") if device.startswith("cuda") else (used // 2, "RSS / 2")
    cm = ConfigMapDir(tmp / "capped-configmap")
    cm.swap(model_config("v1", vad=False))
    server = ServerProcess(cm.path, models_root, tmp / "capped-server.log",
                           extra_args=["--device", device, "--watch-interval", "0.1"],
                           env={"ASR_MEMORY_LIMIT_BYTES": str(cap)}).start(timeout_s=600)
    try:
        cm.swap(model_config("v2", vad=False))
        deadline = time.monotonic() + 120
        body: dict[str, Any] = {}
        while time.monotonic() < deadline:
            _, body = server.get_json("/v1/models")
            if body.get("last_reload") and body["last_reload"]["version"] == "v2":
                break
            await asyncio.sleep(0.1)
        last = body.get("last_reload") or {}
        async with aiohttp.ClientSession() as session:
            status, _, served_by = await timed_post(session, server.url, wav)
        refused = last.get("reason") == "insufficient_memory" and status == 200 and served_by == "v1"
        emit("insufficient_memory_refused", 1 if refused else 0, "== 1", device=device, cap_bytes=cap, cap_rule=cap_rule,
             reason=last.get("reason"), message=last.get("message"), served_after_by=served_by,
             memory=body.get("memory"))
    finally:
        server.stop()


async def main_async(assets: Path, device: str, quick: bool) -> int:
    import soundfile as sf

    build_all(assets)
    wav = (assets / "audio" / "ten_seconds.wav").read_bytes()
    samples, _ = sf.read(str(assets / "audio" / "ten_seconds.wav"), dtype="float32")
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp_name:
        tmp = Path(tmp_name)
        models_root = build_models(tmp / "models", assets, quick)
        cm = ConfigMapDir(tmp / "configmap")
        cm.swap(model_config("v1", vad=False))
        server = ServerProcess(cm.path, models_root, tmp / "server.log",
                               extra_args=["--device", device, "--watch-interval", "0.1"]).start(timeout_s=600)
        try:
            _, body = server.get_json("/v1/models")
            if body["serving"]["device"].split(":")[0] != device.split(":")[0]:
                raise RuntimeError(f"asked for {device}, the server runs on {body['serving']['device']}")
            torch_device = body["serving"]["device"]
            # what one version holds and what the next needs, before any swap: the capped server's budget
            used, need = int(body["memory"]["used_bytes"]), int(body["memory"]["need_bytes"])
            await rtf_ratio(server, models_root / "paraformer-tiny" / "v1", torch_device, wav, samples,
                            rounds=10 if quick else 30)
            await hot_swaps(server, cm, torch_device, wav, loaded_swaps=4 if quick else 20,
                            total_swaps=8 if quick else 50)
        finally:
            server.stop()
        await refusal(tmp, models_root, torch_device, wav, used, need)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="CUDA checks of the inference server (JSON lines on stdout)")
    parser.add_argument("--assets", type=Path, default=Path(".assets"))
    parser.add_argument("--device", default="auto", help="auto (CUDA, else skip), cuda, cuda:N or cpu")
    parser.add_argument("--quick", action="store_true", help="tiny models and fewer swaps (a smoke run)")
    args = parser.parse_args(argv)
    device = args.device
    if device in ("auto", "cuda") or device.startswith("cuda:"):
        import torch

        if not torch.cuda.is_available():
            print(skipped_line("skipped: no CUDA device on this machine (torch.cuda.is_available() is False); "
                               "run with --device cpu --quick to exercise the checks on CPU"), flush=True)
            return 0
        device = "cuda" if device == "auto" else device
    os.environ.setdefault("ASR_LOG_LEVEL", "WARNING")
    return asyncio.run(main_async(args.assets, device, args.quick))


if __name__ == "__main__":
    sys.exit(main())
