"""The HTTP API of a real server process: real FSMN-VAD, a tiny random-weight Paraformer loaded
through FunASR's AutoModel, espeak-ng clips with known speech spans."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import openai
import pytest
import soundfile as sf
from prometheus_client.parser import text_string_to_metric_families

from asr_sandbox import ConfigMapDir, ServerProcess
from tests.support.audio_fuzz import mangled_wavs
from tests.support.forms import form

# FSMN-VAD pads 200 ms of look-back before speech and up to ~300 ms after it (look-ahead plus the
# end-silence frames), and espeak-ng's own onsets are soft: segments land within 400 ms of truth.
VAD_TOLERANCE_MS = 400
POD = {"namespace": "speech", "rollout": "meeting-zh", "track": "canary", "pod": "meeting-zh-canary-0"}


@pytest.fixture(scope="module")
def server(api_server: tuple[ServerProcess, ConfigMapDir]) -> ServerProcess:
    return api_server[0]




async def post(server: ServerProcess, path: str, data: Any, **kw: Any) -> tuple[int, Any, dict[str, str]]:
    async with aiohttp.ClientSession() as s:
        async with s.post(server.url + path, data=data, **kw) as r:
            body = await r.read()
            try:
                parsed: Any = json.loads(body)
            except ValueError:
                parsed = body.decode()
            return r.status, parsed, dict(r.headers)


def assert_spans_match(found: list[tuple[int, int]], truth: list[list[int]]) -> None:
    assert len(found) == len(truth), (found, truth)
    for (start, end), (t_start, t_end) in zip(found, truth):
        assert abs(start - t_start) <= VAD_TOLERANCE_MS, (start, t_start)
        assert abs(end - t_end) <= VAD_TOLERANCE_MS, (end, t_end)


@pytest.mark.parametrize("clip", ["speech_gap", "short", "ten_seconds", "long_40s", "silence", "speech_gap_8k"])
async def test_vad_segments_match_the_espeak_truth(server: ServerProcess, audio, truth, clip: str) -> None:
    status, body, headers = await post(server, "/v1/vad", form(audio(f"{clip}.wav")))
    assert status == 200, body
    assert headers["X-Model-Version"] == "v1"
    assert body["duration_ms"] == pytest.approx(truth[clip]["duration_ms"], abs=2)
    assert_spans_match([(s["start_ms"], s["end_ms"]) for s in body["segments"]], truth[clip]["speech_ms"])


async def test_transcription_formats(server: ServerProcess, audio, truth) -> None:
    clip = audio("speech_gap.wav")
    status, body, headers = await post(server, "/v1/audio/transcriptions", form(clip, model="paraformer-tiny"))
    assert status == 200 and isinstance(body["text"], str) and body["text"]
    assert headers["X-Model-Version"] == body["model_version"] == "v1"
    assert len(headers["X-Model-Sha256"]) == 64

    status, verbose, _ = await post(server, "/v1/audio/transcriptions",
                                    form(clip, model="paraformer-tiny", response_format="verbose_json", language="zh"))
    assert status == 200 and verbose["model_version"] == "v1" and verbose["language"] == "zh"
    assert verbose["duration"] == pytest.approx(truth["speech_gap"]["duration_ms"] / 1000, abs=0.01)
    assert verbose["text"] == body["text"]  # same model, same audio: deterministic
    assert_spans_match([(round(s["start"] * 1000), round(s["end"] * 1000)) for s in verbose["segments"]],
                       truth["speech_gap"]["speech_ms"])

    status, text, headers = await post(server, "/v1/audio/transcriptions", form(clip, model="paraformer-tiny", response_format="text"))
    assert status == 200 and text == body["text"] + "\n" and headers["Content-Type"].startswith("text/plain")

    status, srt, _ = await post(server, "/v1/audio/transcriptions", form(clip, model="paraformer-tiny", response_format="srt"))
    assert status == 200 and srt.startswith("1\n00:00:00,") and "\n\n2\n00:00:0" in srt
    status, vtt, _ = await post(server, "/v1/audio/transcriptions", form(clip, model="paraformer-tiny", response_format="vtt"))
    assert status == 200 and vtt.startswith("WEBVTT\n\n00:00:00.")
    assert vtt.count(" --> ") == srt.count(" --> ") == len(truth["speech_gap"]["speech_ms"])


async def test_long_audio_is_split_by_vad_with_timestamps_restored(server: ServerProcess, audio, truth) -> None:
    """The server's config sets max_segment_ms 4000: every piece is at most 4 s, pieces tile the
    VAD segments, and each lies at its place in the 40 s clip (not at 0)."""
    status, body, _ = await post(server, "/v1/audio/transcriptions",
                                 form(audio("long_40s.wav"), model="paraformer-tiny", response_format="verbose_json"))
    assert status == 200
    segments = [(round(s["start"] * 1000), round(s["end"] * 1000)) for s in body["segments"]]
    spans = truth["long_40s"]["speech_ms"]
    assert len(segments) >= len(spans)
    assert all(0 < e - s <= 4000 for s, e in segments)
    assert segments == sorted(segments) and segments[-1][1] > 30000
    for t_start, t_end in spans:  # every true speech span is covered by pieces around it
        covering = [seg for seg in segments if seg[0] < t_end and seg[1] > t_start]
        assert covering and covering[0][0] <= t_start + VAD_TOLERANCE_MS and covering[-1][1] >= t_end - VAD_TOLERANCE_MS
    assert all(s["text"] for s in body["segments"])


def test_official_openai_client_works_unchanged(server: ServerProcess, assets: Path, truth) -> None:
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    path = assets / "audio" / "speech_gap.wav"
    with path.open("rb") as f:
        result = client.audio.transcriptions.create(model="paraformer-tiny", file=f)
    assert isinstance(result.text, str) and result.text
    with path.open("rb") as f:
        verbose = client.audio.transcriptions.create(model="paraformer-tiny", file=f,
                                                     response_format="verbose_json")
    assert verbose.text == result.text and verbose.duration == pytest.approx(7.84, abs=0.01)
    assert len(verbose.segments or []) == len(truth["speech_gap"]["speech_ms"])
    with path.open("rb") as f:
        text = client.audio.transcriptions.create(model="paraformer-tiny", file=f, response_format="text")
    assert text.strip() == result.text
    with path.open("rb") as f:
        srt = client.audio.transcriptions.create(model="paraformer-tiny", file=f, response_format="srt")
    assert "-->" in srt
    with pytest.raises(openai.BadRequestError) as err:
        client.audio.transcriptions.create(model="paraformer-tiny", file=("x.wav", b"not audio at all"))
    assert "not audio" in err.value.message
    models = client.models.list()
    assert [m.id for m in models.data] == ["paraformer-tiny", "whisper-1"]


async def test_models_health_and_ready(server: ServerProcess) -> None:
    status, body = server.get_json("/v1/models")
    assert status == 200 and body["serving"]["version"] == "v1" and body["versions"] == {"v1": "READY"}
    assert body["serving"]["load_seconds"] > 0 and len(body["serving"]["sha256"]) == 64
    assert server.get_json("/healthz") == (200, {"status": "ok"})
    status, ready = server.get_json("/readyz")
    assert status == 200 and ready["ready"] is True


def _samples(metrics_text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


async def test_metrics_names_and_rollout_labels(server: ServerProcess, audio) -> None:
    status, _, _ = await post(server, "/v1/audio/transcriptions", form(audio("short.wav"), model="paraformer-tiny"))
    assert status == 200
    async with aiohttp.ClientSession() as s:
        async with s.get(server.url + "/metrics") as r:
            text = await r.text()
    samples = _samples(text)
    for name in ("asr_requests_total", "asr_request_duration_seconds_bucket", "asr_audio_seconds_total",
                 "asr_real_time_factor_bucket", "asr_queue_depth", "asr_inflight_requests", "asr_model_info",
                 "asr_model_state", "asr_model_load_seconds", "asr_model_reloads_total"):
        assert name in samples, name
        for labels, _ in samples[name]:
            assert {k: labels.get(k) for k in POD} == POD, (name, labels)
    ok = [v for labels, v in samples["asr_requests_total"]
          if labels["endpoint"] == "/v1/audio/transcriptions" and labels["code"] == "200" and labels["version"] == "v1"]
    assert ok and ok[0] >= 1
    info = [labels for labels, v in samples["asr_model_info"] if v == 1]
    assert len(info) == 1 and info[0]["version"] == "v1" and len(info[0]["sha256"]) == 64
    assert [(l["state"], v) for l, v in samples["asr_model_state"] if v == 1] == [("READY", 1.0)]
    audio_s = [v for labels, v in samples["asr_audio_seconds_total"] if labels["version"] == "v1"]
    assert audio_s and audio_s[0] > 1.0
    # no CUDA here: the GPU series is absent rather than zero
    assert "asr_gpu_memory_allocated_bytes" not in samples


async def test_batch_endpoint_serves_each_file_and_reports_bad_ones(server: ServerProcess, audio, truth) -> None:
    f = aiohttp.FormData()
    f.add_field("file", audio("short.wav"), filename="a.wav")
    f.add_field("file", b"garbage", filename="b.wav")
    f.add_field("file", audio("speech_gap.wav"), filename="c.wav")
    status, body, headers = await post(server, "/v1/audio/transcriptions/batch", f)
    assert status == 200 and headers["X-Model-Version"] == body["model_version"] == "v1"
    a, b, c = body["data"]
    assert a["file"] == "a.wav" and a["text"] and len(a["segments"]) == 1
    assert b["file"] == "b.wav" and "not audio" in b["error"]["message"]
    assert len(c["segments"]) == len(truth["speech_gap"]["speech_ms"])


async def test_websocket_streaming_events_and_segment_transcripts(server: ServerProcess, assets: Path, truth) -> None:
    samples, rate = sf.read(str(assets / "audio" / "speech_gap.wav"), dtype="int16")
    assert rate == 16000
    events: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as s:
        async with s.ws_connect(server.url.replace("http", "ws") + "/v1/audio/stream") as ws:
            ready = await ws.receive_json()
            assert ready["type"] == "ready" and ready["version"] == "v1"
            step = 1600  # 100 ms frames, as a microphone would send them
            for i in range(0, len(samples), step):
                await ws.send_bytes(samples[i:i + step].tobytes())
            await ws.send_json({"type": "end"})
            async for msg in ws:
                event = json.loads(msg.data)
                events.append(event)
                if event["type"] in ("done", "error"):
                    break
    kinds = [e["type"] for e in events]
    assert kinds[-1] == "done", events
    starts = [e["start_ms"] for e in events if e["type"] == "speech_start"]
    ends = [e["end_ms"] for e in events if e["type"] == "speech_end"]
    transcripts = [e for e in events if e["type"] == "transcript"]
    assert_spans_match(list(zip(starts, ends)), truth["speech_gap"]["speech_ms"])
    assert [(t["start_ms"], t["end_ms"]) for t in transcripts] == list(zip(starts, ends))
    assert all(t["text"] and t["version"] == "v1" for t in transcripts)
    # results come out while audio streams in: segment 1's transcript precedes segment 2's start
    second_start = [i for i, k in enumerate(kinds) if k == "speech_start"][1]
    assert kinds.index("speech_end") < kinds.index("transcript") < second_start


async def test_a_finished_stream_is_one_done_session_with_per_segment_latency(server: ServerProcess, assets: Path,
                                                                            truth) -> None:
    """Streams are measured per session and per segment, never as one long HTTP request."""
    def stream_samples(text: str) -> tuple[float, float]:
        samples = _samples(text)
        done = sum(v for l, v in samples.get("asr_stream_sessions_total", [])
                   if l["result"] == "done" and l["version"] == "v1")
        segments = sum(v for l, v in samples.get("asr_stream_segment_duration_seconds_count", [])
                       if l["version"] == "v1")
        return done, segments

    async with aiohttp.ClientSession() as s:
        async with s.get(server.url + "/metrics") as r:
            before = stream_samples(await r.text())
        samples, _ = sf.read(str(assets / "audio" / "speech_gap.wav"), dtype="int16")
        async with s.ws_connect(server.url.replace("http", "ws") + "/v1/audio/stream") as ws:
            assert (await ws.receive_json())["type"] == "ready"
            await ws.send_bytes(samples.tobytes())
            await ws.send_json({"type": "end"})
            async for msg in ws:
                if json.loads(msg.data)["type"] in ("done", "error"):
                    assert json.loads(msg.data)["type"] == "done", msg.data
                    break
        for _ in range(100):  # the session is counted once the handler returns, just after "done"
            async with s.get(server.url + "/metrics") as r:
                text = await r.text()
            after = stream_samples(text)
            if after[0] > before[0]:
                break
            await asyncio.sleep(0.05)
    assert after[0] - before[0] == 1
    assert after[1] - before[1] == len(truth["speech_gap"]["speech_ms"])
    assert not [l for l, _ in _samples(text)["asr_requests_total"] if l["endpoint"] == "/v1/audio/stream"]


async def test_admin_reload_requires_the_token(server: ServerProcess) -> None:
    status, body, _ = await post(server, "/admin/reload", b"")
    assert status == 401 and body["error"]["type"] == "authentication_error"
    status, body, _ = await post(server, "/admin/reload", b"", headers={"Authorization": "Bearer wrong"})
    assert status == 401
    status, body, _ = await post(server, "/admin/reload", b"", headers={"Authorization": "Bearer s3cret"})
    assert status == 200 and body["result"] == "unchanged"


def _wav(samples: np.ndarray, rate: int, subtype: str = "PCM_16") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, rate, format="WAV", subtype=subtype)
    return buf.getvalue()


async def test_fuzz_malformed_uploads_get_4xx_in_openai_shape_then_good_requests_succeed(
        server: ServerProcess, audio) -> None:
    rng = np.random.default_rng(42)
    good = audio("short.wav")
    cases: list[tuple[str, Any, dict[str, Any]]] = [
        ("empty file", form(b"", model="paraformer-tiny"), {}),
        ("random bytes", form(rng.bytes(5000), model="paraformer-tiny"), {}),
        ("header only", form(good[:44], model="paraformer-tiny"), {}),
        ("truncated header", form(good[:20], model="paraformer-tiny"), {}),
        ("missing file", form(None, model="paraformer-tiny"), {}),
        ("missing model", form(good), {}),
        ("bad response_format", form(good, model="paraformer-tiny", response_format="xml"), {}),
        ("json body", json.dumps({"file": "x"}), {"headers": {"Content-Type": "application/json"}}),
        ("text body", "hello", {"headers": {"Content-Type": "text/plain"}}),
        ("broken multipart", b"--xyz\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nabc",
         {"headers": {"Content-Type": "multipart/form-data; boundary=other"}}),
        ("4 kHz audio", form(_wav(np.zeros(4000, np.float32), 4000), model="paraformer-tiny"), {}),
        ("too long (50 s > 45 s)", form(_wav(np.zeros(16000 * 50, np.float32), 16000), model="paraformer-tiny"), {}),
        ("too large (5 MB > 4 MB)", form(rng.bytes(5 * 1024 * 1024), model="paraformer-tiny"), {}),
        ("NaN samples", form(_wav(np.full(16000, np.nan, np.float32), 16000, "FLOAT"), model="paraformer-tiny"), {}),
    ]
    # plus random mutations of a real WAV: flipped bytes in the header and cut at random points
    for i, data in enumerate(mangled_wavs(good, rng, 12)):
        cases.append((f"mutated wav {i}", form(data, model="paraformer-tiny"), {}))

    for name, data, kw in cases:
        status, body, _ = await post(server, "/v1/audio/transcriptions", data, **kw)
        if status == 200:  # a header flip can leave a still-valid WAV: that is allowed
            assert name.startswith("mutated"), (name, body)
            continue
        assert 400 <= status < 500, (name, status, body)
        assert set(body["error"]) == {"message", "type", "param", "code"} and body["error"]["message"], (name, body)
    statuses = {name: (await post(server, "/v1/audio/transcriptions", data, **kw))[0]
                for name, data, kw in cases[:14]}
    assert statuses["too large (5 MB > 4 MB)"] == 413 and statuses["too long (50 s > 45 s)"] == 413
    assert statuses["json body"] == 415 and statuses["missing file"] == 400

    # the server goes on serving
    results = await asyncio.gather(*[post(server, "/v1/audio/transcriptions", form(good, model="paraformer-tiny"))
                                     for _ in range(4)])
    assert all(status == 200 and body["text"] for status, body, _ in results)
    status, _ = server.get_json("/readyz")
    assert status == 200
    async with aiohttp.ClientSession() as s:
        async with s.get(server.url + "/metrics") as r:
            samples = _samples(await r.text())
    assert not [l for l, v in samples["asr_requests_total"] if l["code"].startswith("5")]
