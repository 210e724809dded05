"""Dynamic batching (inference_server/scheduler.py, pipeline.recognise_batch): the pure rules,
then the real tiny Paraformer through FunASR's AutoModel, then a real server process under
concurrent clients and hot swaps. No test asserts on wall-clock time."""

from __future__ import annotations

import asyncio
import math
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import soundfile as sf

from asr_sandbox import model_config
from inference_server import pipeline
from inference_server.config import ModelConfig
from inference_server.metrics import ServerMetrics
from inference_server.model_loader import LoadedModel, load_version
from inference_server.scheduler import BatchPolicy, InferenceScheduler, select_batch, should_wait_for_more
from inference_server.settings import parse_args

SR = 16000

# --- pure rules -------------------------------------------------------------------------------


def test_select_batch_takes_only_equal_keys_up_to_the_room_left() -> None:
    a, b = (1, ()), (2, ())
    with_lang = (1, (("language", "en"),))
    assert select_batch([a, b, a, with_lang, a, None, a], a, 3) == [0, 2, 4]
    assert select_batch([a, a], a, 0) == []
    assert select_batch([None, None], None, 4) == [], "a call never batches"
    assert select_batch([b, with_lang], a, 4) == [], "another version or other options never join"


def test_a_batch_waits_only_for_requests_on_their_way_and_never_past_the_wait() -> None:
    on = BatchPolicy(max_size=8, wait_s=0.005)
    assert should_wait_for_more(1, on, arriving=1, waited_s=0.0)
    assert not should_wait_for_more(1, on, arriving=0, waited_s=0.0), "a lone client must not wait"
    assert not should_wait_for_more(8, on, arriving=3, waited_s=0.0), "full"
    assert not should_wait_for_more(2, on, arriving=3, waited_s=0.005), "the wait ran out"
    off = BatchPolicy(max_size=8, wait_s=0.0)
    assert not off.enabled and off.limit == 1 and not should_wait_for_more(1, off, arriving=5, waited_s=0.0)
    assert not BatchPolicy(max_size=1, wait_s=0.005).enabled


def test_bucket_by_length_never_pads_an_input_past_the_ratio() -> None:
    lengths = [16000, 480000, 20000, 31000, 500000, 1000]
    groups = pipeline.bucket_by_length(lengths, 2.0)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    for group in groups:
        assert max(lengths[i] for i in group) <= 2.0 * min(lengths[i] for i in group)
    assert groups == [[5], [0, 2, 3], [1, 4]]
    assert pipeline.bucket_by_length([], 2.0) == []


def test_batch_flags_parse_and_zero_wait_turns_batching_off(tmp_path: Path) -> None:
    base = ["--model-config", str(tmp_path / "m.yaml")]
    s = parse_args(base)
    assert (s.batch_max_size, s.batch_wait_ms) == (8, 5.0)
    s = parse_args(base + ["--batch-wait-ms", "0", "--batch-max-size", "4"])
    assert not BatchPolicy(s.batch_max_size, s.batch_wait_ms / 1000).enabled
    for bad in (["--batch-max-size", "0"], ["--batch-wait-ms", "-1"]):
        with pytest.raises(SystemExit):
            parse_args(base + bad)


# --- the real tiny Paraformer ----------------------------------------------------------------


def _load(models_root: Path, version: str, vad: bool = False) -> LoadedModel:
    return load_version(ModelConfig("paraformer-tiny", version, f"paraformer-tiny/{version}",
                                    vad_path="fsmn-vad/v1" if vad else None), models_root)


@pytest.fixture(scope="module")
def v1(models_root: Path) -> Iterator[LoadedModel]:
    model = _load(models_root, "v1")
    yield model
    model.close()


@pytest.fixture(scope="module")
def clips(assets: Path) -> dict[str, np.ndarray]:
    def read(name: str) -> np.ndarray:
        data, rate = sf.read(str(assets / "audio" / name), dtype="float32")
        assert rate == SR
        return np.asarray(data)

    ten = read("ten_seconds.wav")
    return {"ten": ten, "short": read("short.wav"), "three": ten[: 3 * SR], "five_half": ten[SR: int(6.5 * SR)],
            "one": ten[2 * SR: 3 * SR], "tiny": ten[:80], "gap": read("speech_gap.wav")}


def test_padding_does_not_change_a_text_alone_or_in_a_batch_of_mixed_lengths(v1: LoadedModel, clips) -> None:
    pieces = [clips[k] for k in ("ten", "short", "three", "five_half", "one", "tiny", "gap")]
    alone = [pipeline.recognise(v1, p) for p in pieces]
    assert sum(1 for t in alone if t) >= 5, alone  # the check below compares real texts
    sizes: list[int] = []
    # One padded generate() over every input (bucketing off): padding is what is under test.
    together = pipeline.recognise_batch(v1, pieces, on_generate=sizes.append, max_pad_ratio=math.inf)
    assert together == alone
    assert sizes == [6], "the 5 ms input is not sent to the model; the six others in one call"
    # With bucketing (the default), the same texts from more, less padded calls.
    sizes.clear()
    assert pipeline.recognise_batch(v1, pieces, on_generate=sizes.append) == alone
    assert sum(sizes) == 6 and len(sizes) > 1


def _metrics() -> ServerMetrics:
    return ServerMetrics({"namespace": "n", "rollout": "r", "track": "stable", "pod": "p"})


def _batch_sizes(metrics: ServerMetrics) -> tuple[float, float]:
    count = metrics.registry.get_sample_value("asr_batch_size_count", metrics.pod) or 0.0
    total = metrics.registry.get_sample_value("asr_batch_size_sum", metrics.pod) or 0.0
    return count, total


async def _held(scheduler: InferenceScheduler, model: LoadedModel) -> tuple[threading.Event, asyncio.Task[Any]]:
    """Occupy the worker with a call until the returned event is set, so that what is submitted
    meanwhile waits in the queue together (deterministic batches, no timing)."""
    gate = threading.Event()
    blocker = asyncio.create_task(scheduler.run(model, lambda: gate.wait(60)))
    while scheduler.running == 0:
        await asyncio.sleep(0.005)
    return gate, blocker


async def _submitted(scheduler: InferenceScheduler, jobs: list[Any]) -> list[asyncio.Task[Any]]:
    tasks = [asyncio.create_task(job) for job in jobs]
    while scheduler.pending < len(tasks) + 1:
        await asyncio.sleep(0.005)
    return tasks


async def test_queued_requests_are_decoded_together_each_with_its_own_result(v1: LoadedModel, clips) -> None:
    metrics = _metrics()
    scheduler = InferenceScheduler(metrics, max_queue=16, timeout_s=120, batch=BatchPolicy(8, 0.005))
    try:
        names = ["ten", "short", "three", "five_half", "one", "ten", "gap"]
        expected = [pipeline.transcribe(v1, clips[n]) for n in names]
        gate, blocker = await _held(scheduler, v1)
        tasks = await _submitted(scheduler, [scheduler.transcribe(v1, clips[n]) for n in names])
        gate.set()
        got = await asyncio.gather(*tasks)
        await blocker
        for name, want, have in zip(names, expected, got):
            assert have.text == want.text, name
            assert [(s.start_ms, s.end_ms) for s in have.segments] == [(s.start_ms, s.end_ms) for s in want.segments]
        count, total = _batch_sizes(metrics)
        assert total == len(names) and count < len(names), "queued inputs must share generate() calls"
        assert metrics.registry.get_sample_value("asr_queue_wait_seconds_count", metrics.pod) == len(names) + 1
        assert v1.leases == 0 and scheduler.pending == 0
    finally:
        scheduler.close()


async def test_batching_off_decodes_every_input_alone(v1: LoadedModel, clips) -> None:
    metrics = _metrics()
    scheduler = InferenceScheduler(metrics, max_queue=16, timeout_s=120, batch=BatchPolicy(8, 0.0))
    try:
        gate, blocker = await _held(scheduler, v1)
        tasks = await _submitted(scheduler, [scheduler.transcribe(v1, clips["three"]) for _ in range(4)])
        gate.set()
        await asyncio.gather(*tasks, blocker)
        assert _batch_sizes(metrics) == (4, 4)
    finally:
        scheduler.close()


async def test_a_failing_input_fails_only_its_own_request(v1: LoadedModel, clips) -> None:
    """NaN samples make FunASR's fbank raise ("mel energy is nan"): the batch fails, each input
    runs again alone, the good ones are answered."""
    metrics = _metrics()
    scheduler = InferenceScheduler(metrics, max_queue=16, timeout_s=120)
    try:
        bad = np.full(3 * SR, np.nan, dtype=np.float32)
        want = pipeline.transcribe(v1, clips["three"]).text
        gate, blocker = await _held(scheduler, v1)
        tasks = await _submitted(scheduler, [scheduler.transcribe(v1, a) for a in (clips["three"], bad, clips["three"])])
        gate.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        await blocker
        assert [r.text for r in (results[0], results[2])] == [want, want]  # type: ignore[union-attr]
        assert isinstance(results[1], RuntimeError) and "nan" in str(results[1])
        assert v1.leases == 0 and scheduler.pending == 0
    finally:
        scheduler.close()


async def test_a_batch_runs_wholly_on_one_version(models_root: Path, v1: LoadedModel, clips) -> None:
    """Requests admitted to two versions (a hot swap) queue interleaved; v1 and v2 have different
    random weights, so a v2 input decoded in a v1 batch would come back with v1's text."""
    v2 = _load(models_root, "v2")
    metrics = _metrics()
    scheduler = InferenceScheduler(metrics, max_queue=16, timeout_s=120)
    try:
        clip = clips["five_half"]
        want = {"v1": pipeline.transcribe(v1, clip).text, "v2": pipeline.transcribe(v2, clip).text}
        assert want["v1"] != want["v2"]
        order = [v1, v2, v1, v2, v2, v1]
        gate, blocker = await _held(scheduler, v1)
        tasks = await _submitted(scheduler, [scheduler.transcribe(m, clip) for m in order])
        gate.set()
        got = await asyncio.gather(*tasks)
        await blocker
        assert [t.text for t in got] == [want[m.version] for m in order]
        assert _batch_sizes(metrics) == (2, 6), "one batch per version"
        assert v1.leases == 0 and v2.leases == 0
    finally:
        scheduler.close()
        v2.close()


async def test_vad_pieces_of_a_long_clip_join_batches_with_other_requests(models_root: Path, clips) -> None:
    model = _load(models_root, "v1", vad=True)
    metrics = _metrics()
    scheduler = InferenceScheduler(metrics, max_queue=16, timeout_s=120)
    try:
        names = ["gap", "ten", "gap"]
        expected = [pipeline.transcribe(model, clips[n]) for n in names]
        assert len(expected[0].segments) >= 2, "the clip must split into several VAD pieces"
        gate, blocker = await _held(scheduler, model)
        tasks = await _submitted(scheduler, [scheduler.transcribe(model, clips[n]) for n in names])
        gate.set()
        got = await asyncio.gather(*tasks)
        await blocker
        for want, have in zip(expected, got):
            assert have.text == want.text
            assert [(s.start_ms, s.end_ms, s.text) for s in have.segments] == \
                   [(s.start_ms, s.end_ms, s.text) for s in want.segments]
        count, total = _batch_sizes(metrics)
        assert total == sum(len(t.segments) for t in expected) and count < total
    finally:
        scheduler.close()
        model.close()


# --- a real server process ------------------------------------------------------------------


def _scrape(url: str) -> dict[str, float]:
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples
            if s.name.startswith(("asr_batch_size", "asr_queue_wait_seconds")) and not s.labels.get("le")}


async def test_server_batches_concurrent_clients_through_swaps_without_a_failure(
        tmp_path: Path, models_root: Path, server_starter, audio) -> None:
    """8 clients, 4 hot swaps, batching on (the default): every request 200, its text the one its
    version gives the clip alone, and requests shared generate() calls."""
    server, cm = server_starter(tmp_path, models_root, model_config("v1", vad=False),
                                extra_args=["--watch-interval", "0.1"])
    clip = audio("ten_seconds.wav")
    results: list[tuple[int, str | None, str | None]] = []
    stop = asyncio.Event()

    async def post(session: aiohttp.ClientSession) -> tuple[int, str | None, str | None]:
        form = aiohttp.FormData(default_to_multipart=True)
        form.add_field("file", clip, filename="clip.wav", content_type="audio/wav")
        form.add_field("model", "paraformer-tiny")
        async with session.post(server.url + "/v1/audio/transcriptions", data=form) as r:
            body = await r.json()
            return r.status, r.headers.get("X-Model-Version"), body.get("text")

    async def client(session: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            results.append(await post(session))

    try:
        async with aiohttp.ClientSession() as session:
            alone = {"v1": (await post(session))[2]}
            clients = [asyncio.create_task(client(session)) for _ in range(8)]
            for i in range(4):
                version = "v2" if i % 2 == 0 else "v1"
                cm.swap(model_config(version, vad=False))
                await asyncio.to_thread(server.wait_serving, version)
                await asyncio.sleep(0.5)
            stop.set()
            await asyncio.gather(*clients)
            alone["v2"] = None
            cm.swap(model_config("v2", vad=False))
            await asyncio.to_thread(server.wait_serving, "v2")
            alone["v2"] = (await post(session))[2]
        assert Counter(s for s, _, _ in results) == Counter({200: len(results)})
        assert {v for _, v, _ in results} == {"v1", "v2"}
        assert all(text == alone[version] for _, version, text in results), "a transcript depended on its batch"
        m = _scrape(server.url)
        assert m["asr_batch_size_sum"] > m["asr_batch_size_count"], m
        assert m["asr_queue_wait_seconds_count"] >= len(results)
    finally:
        server.stop()


def test_the_server_sets_a_passive_openmp_wait_before_torch_loads_unless_told_otherwise() -> None:
    import subprocess
    import sys

    from inference_server.__main__ import quiet_openmp_waits

    env: dict[str, str] = {}
    quiet_openmp_waits(env)
    assert env == {"OMP_WAIT_POLICY": "PASSIVE"}
    chosen = {"OMP_WAIT_POLICY": "ACTIVE"}
    quiet_openmp_waits(chosen)
    assert chosen == {"OMP_WAIT_POLICY": "ACTIVE"}
    # libgomp reads the policy once, when torch loads it: the entry module must not import torch.
    out = subprocess.run([sys.executable, "-c", "import sys, inference_server.__main__; "
                          "print('torch' in sys.modules or 'funasr' in sys.modules)"],
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr[-2000:]
