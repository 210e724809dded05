"""`make bench-server`: measure the inference server side by side with the things it wraps.

Prints one JSON object per line: {"bench": NAME, "value": NUMBER, "target": TEXT}, plus a few
extra lines with the raw numbers behind each ratio. Runs a real server process on 127.0.0.1
(tiny Paraformer from `make assets`, then a production-sized one built in a temp dir), a direct
FunASR AutoModel in this process, and real concurrent HTTP clients.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import functools
import gc
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from asr_sandbox import ConfigMapDir, ServerProcess, model_config
from asr_sandbox.assets import PARAFORMER_CONFIG, build_all, build_version_dir, paraformer_cmvn, write_paraformer

CLIENTS = 8


def emit(name: str, value: float, target: str, **extra: Any) -> None:
    print(json.dumps({"bench": name, "value": round(value, 4), "target": target, **extra}), flush=True)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


_ENCODED: dict[bytes, tuple[bytes, str]] = {}


async def encoded_form(data: bytes) -> tuple[bytes, str]:
    """The multipart body for `data` (as aiohttp's FormData encodes it) and its Content-Type,
    encoded once per clip: the benchmark measures the server, and a load generator sends a
    prepared body as wrk or hey do (encoding 320 KB anew costs this client ~0.15 ms a request).

    The `model` field is "custom": the name funasr-server gives a model loaded with
    --model-path, and a non-empty name is all ours asks for, so both servers get the same body."""
    if data not in _ENCODED:  # a bytes object caches its hash: the lookup does not rehash 320 KB
        f = aiohttp.FormData(default_to_multipart=True)
        f.add_field("file", data, filename="clip.wav", content_type="audio/wav")
        f.add_field("model", "custom")
        payload = f()
        _ENCODED[data] = (await payload.as_bytes(), payload.content_type)
    return _ENCODED[data]


def bench_config(version: str) -> dict[str, Any]:
    """Our server's model config in the benchmark: no VAD (the peer loads none), and "custom",
    the name funasr-server gives a --model-path model, as an alias: one request body for both."""
    return model_config(version, vad=False, options={"aliases": ["custom"]})


async def timed_post(session: aiohttp.ClientSession, url: str, data: bytes) -> tuple[int, float, str | None]:
    body, content_type = await encoded_form(data)
    started = time.perf_counter()
    try:
        async with session.post(url + "/v1/audio/transcriptions", data=body,
                                headers={"Content-Type": content_type}) as r:
            await r.read()
            return r.status, time.perf_counter() - started, r.headers.get("X-Model-Version")
    except aiohttp.ClientError:
        return 0, time.perf_counter() - started, None


class CurlClient:
    """libcurl (pycurl) on one keep-alive connection: the request latency a lean client sees.

    The overhead ratio is the server's, so its HTTP side is timed with the client that adds the
    least of its own: curl, as wrk or hey would be. aiohttp's client spends ~0.9 ms of Python on
    each request of this size (building it, parsing the answer), which on a ~35 ms generate()
    is 2-3% of the ratio that no server change can remove; it is measured beside (aiohttp_*)."""

    def __init__(self, url: str, body: bytes, content_type: str) -> None:
        import pycurl

        self._pycurl = pycurl
        self.handle = pycurl.Curl()
        self.handle.setopt(pycurl.URL, url + "/v1/audio/transcriptions")
        self.handle.setopt(pycurl.TCP_NODELAY, 1)
        # "Expect:" off: curl would wait for a 100-continue before sending a body this size.
        self.handle.setopt(pycurl.HTTPHEADER, [f"Content-Type: {content_type}", "Expect:"])
        self.handle.setopt(pycurl.POSTFIELDS, body)
        self.handle.setopt(pycurl.WRITEFUNCTION, lambda chunk: None)  # the answer is not needed

    def post(self) -> tuple[int, float]:
        """POST the body once: (status, seconds)."""
        started = time.perf_counter()
        self.handle.perform()
        return int(self.handle.getinfo(self._pycurl.RESPONSE_CODE)), time.perf_counter() - started

    def close(self) -> None:
        self.handle.close()


async def overhead(start_server: Callable[[int], ServerProcess], servers: int, model_dir: Path, wav: bytes,
                   samples: np.ndarray, rounds: int, name: str = "server_overhead_ratio",
                   target: str = "<= 1.10") -> None:
    """p50 of the 10 s clip's HTTP round trip / p50 of FunASR's generate on it, in this process.

    Measured in time-adjacent rounds (one direct call, one request through curl, one through
    aiohttp's client) so that all sides see the same machine: on a shared VM the speed of a
    core drifts by 20-30% within seconds, and blocks of calls half a second apart measured
    that drift more than the server. A 30 ms gap separates every call: after a call torch's
    OpenMP threads spin for a while, and a call right after the other process's would share the
    CPU with that spinning. The rounds are spread over `servers` fresh server processes
    (`start_server(i)` starts one): one process's generate() can be 5% faster or slower than
    another's for reasons of placement and memory layout alone, which one process's number
    would report as the server's."""
    from funasr import AutoModel

    direct = AutoModel(model=str(model_dir), disable_update=True, disable_pbar=True, disable_log=True,
                       device="cpu", ncpu=2)  # the server's default ncpu too
    gc.collect()
    gc.freeze()  # as the server does after its imports: no full-collection pauses on either side
    times: dict[str, list[float]] = {"direct": [], "curl": [], "aiohttp": []}
    per_server: list[float] = []
    handler: list[float] = []
    pipeline: list[float] = []
    for index in range(servers):
        server = start_server(index)
        try:
            mine = await measure_rounds(direct, server, wav, samples, max(rounds // servers, 1))
            # The server's own view (all its requests): time in the handler, time in the pipeline.
            m = scrape(server)
            handler.append(m["asr_request_duration_seconds_sum"] / m["asr_request_duration_seconds_count"])
            pipeline.append(m["asr_real_time_factor_sum"] * 10.0 / m["asr_real_time_factor_count"])
        finally:
            server.stop()
        per_server.append(statistics.median(mine["curl"]) / statistics.median(mine["direct"]))
        for side, values in mine.items():
            times[side] += values
    del direct
    d50, h50, a50 = (statistics.median(times[side]) for side in ("direct", "curl", "aiohttp"))
    # overhead_ms: what the server adds in absolute terms; on a tiny model the ratio is mostly
    # these fixed milliseconds (HTTP, multipart, decoding), on a real one mostly compute.
    emit(name, h50 / d50, target, http_p50_s=round(h50, 4), direct_p50_s=round(d50, 4),
         overhead_ms=round((h50 - d50) * 1000, 2), per_server_ratios=[round(r, 4) for r in per_server],
         rounds=len(times["curl"]), servers=servers, clip_s=10.0, client="curl (pycurl), keep-alive",
         aiohttp_client_ratio=round(a50 / d50, 4), aiohttp_client_p50_s=round(a50, 4),
         server_handler_mean_s=round(statistics.mean(handler), 4),
         server_pipeline_mean_s=round(statistics.mean(pipeline), 4))


async def measure_rounds(direct: Any, server: ServerProcess, wav: bytes, samples: np.ndarray, rounds: int,
                         gap_s: float = 0.03) -> dict[str, list[float]]:
    """`rounds` of one direct generate() call and one request each through curl and aiohttp,
    `gap_s` apart, the order rotating so that no side always follows another's spinning
    OpenMP threads."""
    times: dict[str, list[float]] = {"direct": [], "curl": [], "aiohttp": []}
    sides = list(times)
    body, content_type = await encoded_form(wav)
    curl = CurlClient(server.url, body, content_type)
    try:
        async with aiohttp.ClientSession() as session:

            async def call(side: str) -> float:
                if side == "direct":
                    t = time.perf_counter()
                    direct.generate(input=samples)
                    return time.perf_counter() - t
                if side == "curl":
                    status, seconds = curl.post()
                else:
                    status, seconds, _ = await timed_post(session, server.url, wav)
                assert status == 200, (side, status)
                return seconds

            for _ in range(3):  # warm every path
                for side in sides:
                    await call(side)
            for i in range(rounds):
                first = i % len(sides)
                for side in sides[first:] + sides[:first]:
                    await asyncio.sleep(gap_s)
                    times[side].append(await call(side))
    finally:
        curl.close()
    return times


def realistic_config() -> dict[str, Any]:
    """The tiny Paraformer's recipe at a production-like width and depth (512-wide SANM encoder,
    12 blocks; 4 decoder blocks): random weights still, but generate on the 10 s clip takes a few
    hundred ms on 2 cores, as a real Paraformer's does, instead of ~30 ms."""
    cfg = copy.deepcopy(PARAFORMER_CONFIG)
    width = 512
    cfg["encoder_conf"].update(output_size=width, attention_heads=4, linear_units=4 * width, num_blocks=12)
    cfg["decoder_conf"].update(attention_heads=4, linear_units=4 * width, num_blocks=4, att_layer_num=4)
    cfg["predictor_conf"].update(idim=width)
    return cfg


def build_realistic(tmp: Path, models_root: Path) -> tuple[Path, Path]:
    """The production-sized model (~200 MB) built into `tmp`: (models root, version directory)."""
    root = tmp / "realistic-models"
    cmvn = paraformer_cmvn(models_root / "fsmn-vad" / "v1")
    model_dir = build_version_dir(root / "paraformer-tiny" / "realistic",
                                  functools.partial(write_paraformer, seed=3, cmvn=cmvn, cfg=realistic_config()))
    return root, model_dir


async def realistic_overhead(tmp: Path, models_root: Path, wav: bytes, samples: np.ndarray, runs: int) -> None:
    """server_overhead_ratio again, on the production-sized model built into `tmp` (~200 MB)."""
    root, model_dir = build_realistic(tmp, models_root)
    cm = ConfigMapDir(tmp / "realistic-configmap")
    cm.swap(bench_config("realistic"))
    try:
        await overhead(lambda i: ServerProcess(cm.path, root, tmp / f"realistic-server{i}.log").start(), 2,
                       model_dir, wav, samples, runs, name="server_overhead_ratio_realistic_model")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def scrape(server: ServerProcess) -> dict[str, float]:
    """Sums of the server's transcription metrics, over all label sets."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(server.url + "/metrics", timeout=10).read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("endpoint", "/v1/audio/transcriptions") == "/v1/audio/transcriptions":
                out[sample.name] = out.get(sample.name, 0.0) + sample.value
    return out


async def load_phase(server: ServerProcess, wav: bytes, duration_s: float | None,
                     swap: Any = None) -> tuple[list[float], int, int]:
    """CLIENTS concurrent clients; for `duration_s`, or while the async `swap` coroutine runs."""
    latencies: list[float] = []
    failures = 0
    total = 0
    stop = asyncio.Event()

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal failures, total
        while not stop.is_set():
            status, seconds, _ = await timed_post(session, server.url, wav)
            total += 1
            if status != 200:
                failures += 1
            latencies.append(seconds)

    async with aiohttp.ClientSession() as session:
        tasks = [asyncio.create_task(client(session)) for _ in range(CLIENTS)]
        if swap is not None:
            await swap
        else:
            assert duration_s is not None
            await asyncio.sleep(duration_s)
        stop.set()
        await asyncio.gather(*tasks)
    return latencies, failures, total


async def swaps(server: ServerProcess, cm: ConfigMapDir, count: int, times: list[float], start_index: int = 0) -> None:
    for i in range(start_index, start_index + count):
        version = "v2" if i % 2 == 0 else "v1"
        started = time.perf_counter()
        cm.swap(bench_config(version))
        await asyncio.to_thread(server.wait_serving, version)
        times.append(time.perf_counter() - started)
        await asyncio.sleep(0.3)


async def peer_lines(tmp: Path, models_root: Path, wav: bytes, rounds: int) -> None:
    """peer_* lines (bench_peer.py): the realistic model, then the tiny one (`_tiny`)."""
    from asr_sandbox import bench_peer

    root, model_dir = build_realistic(tmp, models_root)
    try:
        for suffix, root_dir, version, c1, per_client in (("", root, "realistic", 8, 3),
                                                         ("_tiny", models_root, "v1", 20, 8)):
            cm = ConfigMapDir(tmp / f"peer-configmap{suffix}")
            cm.swap(bench_config(version))

            def start_ours(name: str, args: list[str], cm: ConfigMapDir = cm, root_dir: Path = root_dir) -> ServerProcess:
                return ServerProcess(cm.path, root_dir, tmp / f"{name}.log", extra_args=args).start()

            await bench_peer.compare(suffix=suffix, model_dir=root_dir / "paraformer-tiny" / version,
                                     start_ours=start_ours, tmp=tmp, wav=wav, rounds=rounds, c1_requests=c1,
                                     c8_per_client=per_client, emit=emit, encoded_form=encoded_form)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def profile_lines(tmp: Path, models_root: Path, samples: np.ndarray) -> None:
    """profile_* lines (bench_profile.py) on the realistic model: where a request's time goes."""
    from asr_sandbox import bench_profile

    root, model_dir = build_realistic(tmp, models_root)
    try:
        bench_profile.profile(model_dir, samples, emit)
    finally:
        shutil.rmtree(root, ignore_errors=True)


async def main_async(assets: Path, runs: int, only: str = "all", peer_rounds: int = 6) -> int:
    build_all(assets)
    if only == "profile":
        import soundfile as sf

        samples, _ = sf.read(str(assets / "audio" / "ten_seconds.wav"), dtype="float32")
        with tempfile.TemporaryDirectory(prefix="bench-profile-") as tmp_name:
            profile_lines(Path(tmp_name), assets / "models", samples)
        return 0
    if only == "peer":
        wav = (assets / "audio" / "ten_seconds.wav").read_bytes()
        with tempfile.TemporaryDirectory(prefix="bench-peer-") as tmp_name:
            await peer_lines(Path(tmp_name), assets / "models", wav, peer_rounds)
        return 0
    models_root = assets / "models"
    wav = (assets / "audio" / "ten_seconds.wav").read_bytes()
    import soundfile as sf

    samples, _ = sf.read(str(assets / "audio" / "ten_seconds.wav"), dtype="float32")
    short = (assets / "audio" / "short.wav").read_bytes()

    with tempfile.TemporaryDirectory(prefix="bench-server-") as tmp_name:
        tmp = Path(tmp_name)
        cm = ConfigMapDir(tmp / "configmap")
        # ASR only: the direct baseline is one generate() on the clip; the server does the same work.
        cm.swap(bench_config("v1"))
        restart_s: list[float] = []

        def fresh_server(index: int) -> ServerProcess:
            """A new server process, timed from start to ready (the restart a swap is compared with)."""
            t = time.perf_counter()
            started = ServerProcess(cm.path, models_root, tmp / f"fresh{index}.log").start()
            restart_s.append(time.perf_counter() - t)
            return started

        await overhead(fresh_server, 5, models_root / "paraformer-tiny" / "v1", wav, samples, runs)

        # The default watch interval (0.5 s): swap times include the wait for the next poll.
        server = ServerProcess(cm.path, models_root, tmp / "server.log")
        server.start()
        try:
            assert server.proc is not None
            steady, steady_fail, steady_total = await load_phase(server, short, duration_s=15.0)
            rss_first = rss_bytes(server.proc.pid)

            swap_s: list[float] = []
            during, failed, total = await load_phase(server, short, None, swaps(server, cm, 20, swap_s))
            restart = min(restart_s)
            emit("swap_vs_restart_ratio", statistics.median(swap_s) / restart, "<= 0.2",
                 swap_median_s=round(statistics.median(swap_s), 4), swap_max_s=round(max(swap_s), 4),
                 restart_s=round(restart, 3))
            emit("failed_requests_during_swaps", failed, "0", requests=total, swaps=20, clients=CLIENTS)
            emit("p99_during_swaps_ratio", percentile(during, 99) / percentile(steady, 99), "<= 2.0",
                 p99_during_s=round(percentile(during, 99), 4), p99_steady_s=round(percentile(steady, 99), 4),
                 steady_requests=steady_total, steady_failed=steady_fail)

            more: list[float] = []
            await swaps(server, cm, 30, more, start_index=20)
            # let the last replaced version be released, as a pod would between promotions
            await asyncio.sleep(1.0)
            rss_after = rss_bytes(server.proc.pid)
            emit("rss_after_50_swaps_ratio", rss_after / rss_first, "<= 1.05",
                 rss_first_mib=round(rss_first / 2**20, 1), rss_after_50_mib=round(rss_after / 2**20, 1))
        finally:
            server.stop()
        await realistic_overhead(tmp, models_root, wav, samples, max(runs // 3, 10))
        await peer_lines(tmp, models_root, wav, peer_rounds)
        profile_lines(tmp, models_root, samples)
    gpu_unload(models_root)
    return 0


def gpu_unload(models_root: Path) -> None:
    """Where CUDA exists: load a version onto the GPU, release it as a swap does, and compare
    torch's allocated memory with the baseline before the load."""
    import torch

    if not torch.cuda.is_available():
        print("gpu_memory_unload_residue_ratio: skipped, no CUDA device on this machine", file=sys.stderr)
        return
    from inference_server.config import ModelConfig
    from inference_server.model_loader import load_version

    config = ModelConfig("paraformer-tiny", "v1", "paraformer-tiny/v1", vad_path="fsmn-vad/v1",
                         options={"device": "cuda"})
    torch.cuda.synchronize()
    baseline = torch.cuda.memory_allocated()
    model = load_version(config, models_root)
    torch.cuda.synchronize()
    loaded = torch.cuda.memory_allocated()
    model.close()
    del model
    torch.cuda.synchronize()
    after = torch.cuda.memory_allocated()
    emit("gpu_memory_unload_residue_ratio", (after - baseline) / max(loaded - baseline, 1), "<= 0.02",
         baseline_bytes=baseline, loaded_bytes=loaded, after_unload_bytes=after)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Inference server benchmark (JSON lines on stdout)")
    parser.add_argument("--assets", type=Path, default=Path(".assets"))
    parser.add_argument("--runs", type=int, default=150, help="direct/HTTP rounds for the overhead ratio")
    parser.add_argument("--only", choices=("all", "peer", "profile"), default="all",
                        help="peer: only the side-by-side lines against FunASR's own server (peer_*, "
                             "batching_c1_p50_ratio); profile: only where generate()'s time goes (profile_*)")
    parser.add_argument("--peer-rounds", type=int, default=6, help="alternating rounds of the peer comparison")
    args = parser.parse_args(argv)
    os.environ.setdefault("ASR_LOG_LEVEL", "WARNING")
    import logging

    logging.basicConfig(level=logging.WARNING)
    return asyncio.run(main_async(args.assets, args.runs, args.only, args.peer_rounds))


if __name__ == "__main__":
    sys.exit(main())
