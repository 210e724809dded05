"""Every upload format OpenAI accepts: clips encoded here, in the test, with PyAV (the decoder
library itself, FFmpeg bundled in its wheels) from an espeak-ng clip with known speech spans; no
binary test files in git."""

from __future__ import annotations

import io
from pathlib import Path

import av
import numpy as np
import openai
import pytest
import soundfile as sf

from asr_sandbox import ConfigMapDir, ServerProcess
from inference_server.audio import AudioLimits, decode_audio
from inference_server.decode import ACCEPTED, container_of
from inference_server.errors import APIError
from tests.server.test_server_api import post
from tests.support.forms import form

# extension -> (PyAV muxer, encoder); .oga/.mpga are .ogg/.mp3 files under OpenAI's other names
ENCODINGS = {
    "flac": ("flac", "flac"), "m4a": ("ipod", "aac"), "mp3": ("mp3", "mp3"), "mp4": ("mp4", "aac"),
    "mpeg": ("mpeg", "mp3"), "mpga": ("mp3", "mp3"), "oga": ("ogg", "libopus"), "ogg": ("ogg", "libopus"),
    "webm": ("webm", "libopus"),
}
# Formats libsndfile cannot open: before PyAV these were refused as "not audio".
NEEDS_FFMPEG = ("m4a", "mp4", "mpeg", "webm")


def encode(samples: np.ndarray, ext: str, rate: int = 16000) -> bytes:
    muxer, codec = ENCODINGS[ext]
    buf = io.BytesIO()
    with av.open(buf, mode="w", format=muxer) as out:
        stream = out.add_stream(codec, rate=rate, layout="mono")
        assert isinstance(stream, av.AudioStream)
        frame = av.AudioFrame.from_ndarray(samples[None, :], format="s16", layout="mono")
        frame.rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    return buf.getvalue()


@pytest.fixture(scope="module")
def speech(assets: Path) -> np.ndarray:
    samples, rate = sf.read(str(assets / "audio" / "speech_gap.wav"), dtype="int16")
    assert rate == 16000
    return samples


@pytest.fixture(scope="module")
def encoded(speech: np.ndarray) -> dict[str, bytes]:
    return {ext: encode(speech, ext) for ext in ENCODINGS}


def envelope(samples: np.ndarray) -> np.ndarray:
    """RMS per 20 ms: what survives any codec, unlike the samples themselves."""
    n = len(samples) // 320
    return np.sqrt((samples[: n * 320].reshape(n, 320) ** 2).mean(axis=1))


def best_lag(a: np.ndarray, b: np.ndarray, max_lag: int = 10) -> tuple[int, float]:
    """(lag in 20 ms frames, correlation) of the best envelope match within +-200 ms: AAC and
    MPEG audio encoders add a delay before the audio."""
    best = (0, -1.0)
    for lag in range(-max_lag, max_lag + 1):
        x, y = (a[lag:], b) if lag >= 0 else (a, b[-lag:])
        n = min(len(x), len(y))
        corr = float(np.corrcoef(x[:n], y[:n])[0, 1])
        if corr > best[1]:
            best = (lag, corr)
    return best


def test_accepted_list_is_openais() -> None:
    assert ACCEPTED == ("flac", "m4a", "mp3", "mp4", "mpeg", "mpga", "oga", "ogg", "wav", "webm")
    assert set(ENCODINGS) | {"wav"} == set(ACCEPTED)


@pytest.mark.parametrize("ext", sorted(ENCODINGS))
def test_each_format_decodes_to_the_clip(ext: str, encoded: dict[str, bytes], speech: np.ndarray) -> None:
    data = encoded[ext]
    assert container_of(data[:16]) is not None
    if ext in NEEDS_FFMPEG:
        with pytest.raises(Exception):
            sf.SoundFile(io.BytesIO(data))
    out = decode_audio(data, AudioLimits())
    assert out.dtype == np.float32 and out.ndim == 1
    assert abs(len(out) - len(speech)) < 16000 * 0.2  # codec padding only
    assert best_lag(envelope(out), envelope(speech.astype(np.float32) / 32768))[1] > 0.95


def test_refusals_list_exactly_what_is_accepted(speech: np.ndarray) -> None:
    listed = "send one of: flac, m4a, mp3, mp4, mpeg, mpga, oga, ogg, wav, webm"
    playlist = b"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\nfile:///etc/hostname\n#EXT-X-ENDLIST\n"
    adts_aac = b"\xff\xf1" + bytes(200)  # raw AAC: not a format OpenAI takes
    for junk in (b"not audio at all", playlist, adts_aac, encode(speech, "webm")[:40]):
        with pytest.raises(APIError) as err:
            decode_audio(junk, AudioLimits())
        assert err.value.status == 400 and listed in err.value.message, err.value.message
    with pytest.raises(APIError) as err:  # the duration limit holds while decoding
        decode_audio(encode(np.tile(speech, 3), "m4a"), AudioLimits(max_seconds=10))
    assert err.value.status == 413


@pytest.fixture(scope="module")
def server(api_server: tuple[ServerProcess, ConfigMapDir]) -> ServerProcess:
    return api_server[0]


async def vad_spans(server: ServerProcess, data: bytes, filename: str) -> list[tuple[int, int]]:
    status, body, _ = await post(server, "/v1/vad", form(data, filename=filename))
    assert status == 200, body
    return [(s["start_ms"], s["end_ms"]) for s in body["segments"]]


@pytest.mark.parametrize("ext", ["m4a", "mp3", "webm", "ogg", "mpeg"])
async def test_server_finds_the_speech_spans_in_each_format(server: ServerProcess, encoded: dict[str, bytes],
                                                          speech: np.ndarray, assets: Path, truth, ext: str) -> None:
    """FSMN-VAD finds the clip's two sentences in each format where it finds them in the WAV,
    give or take the codec: its delay (measured) and its noise at the sentence ends."""
    found = await vad_spans(server, encoded[ext], f"clip.{ext}")
    delay_ms = 20 * best_lag(envelope(decode_audio(encoded[ext], AudioLimits())),
                             envelope(speech.astype(np.float32) / 32768))[0]
    wav = await vad_spans(server, (assets / "audio" / "speech_gap.wav").read_bytes(), "clip.wav")
    assert len(found) == len(wav) == len(truth["speech_gap"]["speech_ms"])
    for (start, end), (w_start, w_end) in zip(found, wav):
        assert abs(start - delay_ms - w_start) <= 150 and abs(end - delay_ms - w_end) <= 150, (found, wav, delay_ms)


def test_official_client_transcribes_compressed_uploads(server: ServerProcess, encoded: dict[str, bytes]) -> None:
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    for ext in ("mp4", "oga", "flac"):
        result = client.audio.transcriptions.create(model="paraformer-tiny", file=(f"clip.{ext}", encoded[ext]),
                                                    response_format="verbose_json")
        assert result.text and result.duration == pytest.approx(7.84, abs=0.15), ext
    with pytest.raises(openai.BadRequestError) as err:
        client.audio.transcriptions.create(model="paraformer-tiny", file=("clip.aac", b"\xff\xf1" + bytes(500)))
    assert "mp3, mp4, mpeg, mpga, oga, ogg, wav, webm" in err.value.message
