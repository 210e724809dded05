"""Pure parts of the server: config parsing, path checks, segment plans, formats, admission,
audio decoding, streaming VAD bookkeeping and the scheduler's queue/timeout semantics."""

from __future__ import annotations

import asyncio
import io
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from inference_server import formats
from inference_server.audio import AudioLimits, decode_audio, read_pcm16_wav, read_with_libsndfile
from inference_server.config import ConfigError, ModelConfig, parse_model_config, resolve_under
from inference_server.errors import APIError
from inference_server.metrics import ServerMetrics
from inference_server.model_loader import LoadedModel, warmup_clip
from inference_server.scheduler import InferenceScheduler, should_admit
from inference_server.segments import join_texts, split_long, whole_clip
from inference_server.settings import parse_args
from inference_server.streaming import VadEvents
from inference_server.threads import run_on_own_thread
from tests.support.audio_fuzz import mangled_wavs

GOOD = "name: m\nversion: v1\npath: m/v1\n"


def test_parse_model_config_fields_and_defaults() -> None:
    cfg = parse_model_config(GOOD + "sha256: " + "A" * 64 + "\nvad_path: vad/v1\noptions: {max_segment_ms: 5000, hotword: x}\n")
    assert (cfg.name, cfg.version, cfg.path, cfg.vad_path) == ("m", "v1", "m/v1", "vad/v1")
    assert cfg.sha256 == "a" * 64
    assert cfg.server_option("max_segment_ms") == 5000
    assert cfg.server_option("vad_max_end_silence_ms") == 500
    assert cfg.automodel_options() == {"hotword": "x"}


@pytest.mark.parametrize("text, message", [
    ("version: v1\npath: p\n", "'name' is required"),
    ("name: m\npath: p\n", "'version' is required"),
    ("name: m\nversion: v1\n", "'path' is required"),
    (GOOD + "sha256: abc\n", "64 hex"),
    (GOOD + "options: [1]\n", "'options' must be a mapping"),
    (GOOD + "options: {max_segment_ms: 10}\n", "max_segment_ms"),
    (GOOD + "colour: red\n", "unknown keys"),
    ("- a\n- b\n", "YAML mapping"),
    ("name: [unclosed\n", "not valid YAML"),
])
def test_invalid_model_config_says_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_model_config(text)


def test_paths_resolving_outside_the_models_root_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "models"
    (root / "m" / "v1").mkdir(parents=True)
    (tmp_path / "secret").mkdir()
    (root / "escape").symlink_to(tmp_path / "secret")
    assert resolve_under(root, "m/v1", "path") == (root / "m" / "v1").resolve()
    for bad in ("../secret", "m/../../secret", "/etc", "escape"):
        with pytest.raises(ConfigError, match="path"):
            resolve_under(root, bad, "path")
    cfg = ModelConfig(name="m", version="v1", path="m/v1", vad_path="../x")
    with pytest.raises(ConfigError, match="vad_path"):
        cfg.vad_dir(root)


def test_split_long_cuts_only_long_segments_into_bounded_pieces() -> None:
    assert split_long([(0, 1000), (2000, 2500)], 4000) == [(0, 1000), (2000, 2500)]
    pieces = split_long([(1000, 11000)], 4000)
    assert pieces[0][0] == 1000 and pieces[-1][1] == 11000
    assert all(e - s <= 4000 for s, e in pieces) and len(pieces) == 3
    assert all(a[1] == b[0] for a, b in zip(pieces, pieces[1:]))
    assert split_long([(5, 5)], 100) == []
    assert whole_clip(0, 1000) == [] and whole_clip(2500, 1000) == [(0, 833), (833, 1667), (1667, 2500)]


def test_join_texts_spaces_only_between_non_cjk() -> None:
    assert join_texts(["你好", "世界"]) == "你好世界"
    assert join_texts(["hello", "world", "", "<|zh|>"]) == "hello world"
    assert join_texts(["abc", "你好"]) == "abc 你好"


def test_srt_and_vtt_rendering() -> None:
    t = formats.Transcript(text="a b", duration_s=4000.5, segments=[
        formats.Segment(200, 3530, "a"), formats.Segment(3_600_000 + 61_001, 3_600_000 + 62_000, "b")])
    assert formats.as_srt(t) == ("1\n00:00:00,200 --> 00:00:03,530\na\n\n"
                                 "2\n01:01:01,001 --> 01:01:02,000\nb\n")
    assert formats.as_vtt(t).startswith("WEBVTT\n\n00:00:00.200 --> 00:00:03.530\na\n")
    verbose = formats.as_verbose_json(t, "m", "v9")
    assert verbose["segments"][1]["start"] == 3661.001 and verbose["model_version"] == "v9"


def test_admission_rule() -> None:
    assert should_admit(0, 1) and not should_admit(1, 1) and should_admit(15, 16)


def _wav(samples: np.ndarray, rate: int, subtype: str = "PCM_16") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, rate, format="WAV", subtype=subtype)
    return buf.getvalue()


def test_decode_audio_resamples_downmixes_and_refuses_bad_input() -> None:
    limits = AudioLimits(max_bytes=200_000, max_seconds=2.0)
    stereo = np.stack([np.linspace(-0.5, 0.5, 8000)] * 2, axis=1).astype(np.float32)
    out = decode_audio(_wav(stereo, 8000), limits)
    assert out.dtype == np.float32 and abs(len(out) - 16000) <= 2  # 1 s at 16 kHz
    cases = [
        (b"", 400, "empty"),
        (b"RIFF\x00\x00\x00\x00WAVEjunk", 400, "not audio"),
        (_wav(np.zeros(100, np.float32), 4000), 400, "sample rate 4000"),
        (_wav(np.zeros(800, np.float32), 16000), 400, "minimum is 100 ms"),
        (_wav(np.zeros(16000 * 3, np.float32), 16000), 413, "limit is 2 s"),
        (b"\x00" * 200_001, 413, "limit is 200000"),
        (_wav(np.array([0.1, np.nan] * 1600, np.float32), 16000, "FLOAT"), 400, "NaN"),
    ]
    for data, status, text in cases:
        with pytest.raises(APIError) as err:
            decode_audio(data, limits)
        assert err.value.status == status and text in err.value.message, (text, err.value.message)


@pytest.mark.parametrize("channels,subtype", [(1, "PCM_16"), (2, "PCM_16"), (1, "PCM_24"), (1, "FLOAT")])
def test_decoded_samples_equal_libsndfiles_float_read(channels: int, subtype: str) -> None:
    """16-bit PCM takes the int16 + one-scaling fast path; every format must give the samples
    libsndfile's own float32 read gives (downmixed the same way)."""
    rng = np.random.default_rng(channels)
    data = _wav(rng.uniform(-1, 1, (16000, channels)).astype(np.float32), 16000, subtype)
    reference, _ = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    out = decode_audio(data, AudioLimits())
    assert out.dtype == np.float32 and out.ndim == 1
    assert np.array_equal(out, reference.mean(axis=1, dtype=np.float32))


def _outcome(reader, data: bytes) -> tuple[str, object]:
    try:
        result = reader(data, AudioLimits(), "file")
    except APIError as exc:
        return "error", (exc.status, exc.code)
    if result is None:
        return "aside", None
    samples, rate = result
    return "ok", (rate, samples.dtype.str, samples.shape, samples.tobytes())


def test_pcm16_wav_fast_path_reads_what_libsndfile_reads_or_steps_aside() -> None:
    """The `wave` fast path must give libsndfile's samples, or the same refusal, for every
    16-bit PCM WAV it accepts: whole files, files cut anywhere (mid-header, mid-sample) and
    streaming-style headers; anything else (24-bit, float, 3+ channels) it leaves alone."""
    rng = np.random.default_rng(7)
    taken = 0
    for channels, rate, n in [(1, 16000, 16000), (2, 16000, 4000), (1, 8000, 2000), (2, 44100, 9000)]:
        data = _wav(rng.uniform(-1, 1, (n, channels)).astype(np.float32), rate)
        cuts = [len(data), 44, 45, 46, 47, 1000, 1001, len(data) - 1, len(data) // 2 + 1, *rng.integers(1, len(data), 8)]
        for cut in cuts:
            piece = data[: int(cut)]
            fast = _outcome(read_pcm16_wav, piece)
            if fast[0] == "aside":
                continue
            taken += 1
            assert fast == _outcome(read_with_libsndfile, piece), (channels, rate, cut, fast[0])
    assert taken >= 40  # the fast path did take the common files
    huge_size = bytearray(_wav(rng.uniform(-1, 1, 4000).astype(np.float32), 16000))
    huge_size[40:44] = b"\xff\xff\xff\xff"  # data chunk size unknown, as streaming writers leave it
    assert _outcome(read_pcm16_wav, bytes(huge_size)) == _outcome(read_with_libsndfile, bytes(huge_size))
    for other in (_wav(np.zeros((1600, 1)), 16000, "PCM_24"), _wav(np.zeros((1600, 1)), 16000, "FLOAT"),
                  _wav(np.zeros((1600, 3)), 16000)):
        assert _outcome(read_pcm16_wav, other)[0] == "aside"


def test_decode_audio_answers_mangled_wav_headers_with_audio_or_a_4xx() -> None:
    """Flipped header bytes and cuts anywhere: the fast path's parser raises several exception
    types on such input (a RuntimeError among them); each must end as samples or an APIError."""
    rng = np.random.default_rng(3)
    good = _wav(rng.uniform(-1, 1, 8000).astype(np.float32), 16000)
    decoded = refused = 0
    for data in mangled_wavs(good, rng, 3000, max_cut=200):
        try:
            out = decode_audio(data, AudioLimits(max_bytes=1 << 20, max_seconds=30))
        except APIError as exc:
            assert 400 <= exc.status < 500 and exc.message
            refused += 1
        else:
            assert out.dtype == np.float32 and out.ndim == 1
            decoded += 1
    assert refused and decoded  # both outcomes occur: the mutations do reach the parsers


@pytest.mark.skipif(sys.platform != "linux", reason="per-thread nice values are Linux's")
async def test_loads_run_reniced_on_their_own_thread_and_leave_the_caller_alone() -> None:
    def priority() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    mine = priority()
    assert await run_on_own_thread("t", priority, nice=10) == min(mine + 10, 19)
    assert await run_on_own_thread("t", priority) == mine
    assert priority() == mine


def test_load_nice_setting_is_range_checked() -> None:
    assert parse_args(["--model-config", "m.yaml"]).load_nice == 10
    assert parse_args(["--model-config", "m.yaml", "--load-nice", "0"]).load_nice == 0
    with pytest.raises(SystemExit):
        parse_args(["--model-config", "m.yaml", "--load-nice", "25"])


def test_vad_events_pair_starts_and_ends_across_chunks() -> None:
    ev = VadEvents()
    assert ev.feed([[300, -1]]) == [{"type": "speech_start", "start_ms": 300}]
    assert ev.feed([]) == [] and ev.finished == []
    assert ev.feed([[-1, 2000], [2500, 3100]]) == [
        {"type": "speech_end", "end_ms": 2000}, {"type": "speech_start", "start_ms": 2500},
        {"type": "speech_end", "end_ms": 3100}]
    assert ev.finished == [(300, 2000), (2500, 3100)] and ev.open_start is None


def test_warmup_clip_is_deterministic_and_audible() -> None:
    a, b = warmup_clip(), warmup_clip()
    assert np.array_equal(a, b) and len(a) == 16000 and 0.05 < float(np.abs(a).max()) <= 1.0


def _fake_loaded() -> LoadedModel:
    """A LoadedModel without FunASR models: the scheduler only uses its leases."""
    return LoadedModel(config=ModelConfig("m", "v1", "m/v1"), digest="0" * 64, asr=None, vad=None,
                       load_seconds=0.0, loaded_at=0.0)


async def test_scheduler_queue_full_answers_503_with_retry_after_and_timeouts_keep_the_lease() -> None:
    metrics = ServerMetrics({"namespace": "n", "rollout": "r", "track": "stable", "pod": "p"})
    scheduler = InferenceScheduler(metrics, max_queue=1, timeout_s=60)
    model = _fake_loaded()
    gate = threading.Event()

    def blocking() -> str:
        assert gate.wait(30)
        return "done"

    running = asyncio.create_task(scheduler.run(model, blocking))
    while scheduler.running == 0:
        await asyncio.sleep(0.01)
    waiting = asyncio.create_task(scheduler.run(model, lambda: "second"))
    while scheduler.waiting == 0:
        await asyncio.sleep(0.01)
    with pytest.raises(APIError) as err:
        await scheduler.run(model, lambda: "third")
    assert err.value.status == 503 and err.value.headers["Retry-After"] == "1"
    assert metrics.registry.get_sample_value("asr_queue_depth", metrics.pod) == 1
    gate.set()
    assert await running == "done" and await waiting == "second"
    assert model.leases == 0 and scheduler.waiting == 0 and scheduler.running == 0

    # A request that gives up (timeout) does not release the model while its job still runs.
    release = threading.Event()
    with pytest.raises(APIError) as err:
        await scheduler.run(model, lambda: release.wait(30), timeout_s=0.05)
    assert err.value.status == 504
    assert model.leases == 1
    release.set()
    for _ in range(500):
        if model.leases == 0:
            break
        await asyncio.sleep(0.01)
    assert model.leases == 0
    scheduler.close()
