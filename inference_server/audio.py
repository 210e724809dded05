"""Uploaded bytes -> 16 kHz mono float32 samples, with a clear 4xx for anything else."""

from __future__ import annotations

import io
import re
import wave
from dataclasses import dataclass

import numpy as np
import soundfile as sf

from inference_server.decode import ACCEPTED_TEXT, decode_with_av
from inference_server.errors import APIError, bad_request, too_large

SAMPLE_RATE = 16000
MIN_INPUT_RATE = 8000
MAX_INPUT_RATE = 192000
MIN_SECONDS = 0.1  # OpenAI's minimum too; shorter clips give the frontends no frame to work on


@dataclass(frozen=True)
class AudioLimits:
    max_bytes: int = 25 * 1024 * 1024      # OpenAI's own upload limit
    max_seconds: float = 600.0


class NotDecodable(APIError):
    """libsndfile could not open the upload: the compressed-format decoder's turn (decode.py)."""


def decode_audio(data: bytes | bytearray, limits: AudioLimits, param: str = "file") -> np.ndarray:
    """Decode an upload in any format OpenAI accepts (decode.ACCEPTED) into 16 kHz mono float32:
    16-bit PCM WAV on its own fast path, what libsndfile reads (WAV, FLAC, OGG) next, the rest
    (mp3, m4a, mp4, webm, mpeg, ...) through PyAV."""
    if not data:
        raise bad_request(f"the uploaded file is empty; send an audio file ({ACCEPTED_TEXT})", param)
    if len(data) > limits.max_bytes:
        raise too_large(f"the uploaded file is {len(data)} bytes; the limit is {limits.max_bytes}", param)
    decoded = read_pcm16_wav(data, limits, param)
    if decoded is None:
        try:
            decoded = read_with_libsndfile(data, limits, param)
        except NotDecodable:
            decoded = (decode_with_av(data, limits.max_seconds, param), SAMPLE_RATE)
            check_stream(SAMPLE_RATE, len(decoded[0]), limits, param)
    samples, rate = decoded
    if samples.shape[0] == 0:
        raise bad_request("the uploaded audio holds no samples (empty or truncated file)", param, "invalid_audio")
    mono = samples.mean(axis=1, dtype=np.float32) if samples.ndim > 1 else samples
    if samples.dtype == np.int16:
        # Both this and libsndfile's own float read divide by 32768: bit-identical samples.
        return resample(np.multiply(mono, np.float32(1 / 32768), dtype=np.float32), rate)
    # Integer PCM cannot hold NaN/inf; only float encodings need the (full-array) check.
    if not np.all(np.isfinite(mono)):
        raise bad_request("the uploaded audio contains NaN or infinite samples", param, "invalid_audio")
    return resample(mono, rate)


def read_pcm16_wav(data: bytes | bytearray, limits: AudioLimits, param: str) -> tuple[np.ndarray, int] | None:
    """(int16 samples, rate) of a plain 16-bit PCM WAV in mono or stereo, what nearly every
    client sends; None for any other file, which libsndfile decodes.

    The standard library's `wave` parses the header and the samples are used where they lie in
    the upload, uncopied: on a 10 s clip right after a generate() (the server's usual state:
    caches full of the model's tensors) this took 0.25 ms where libsndfile's read took 0.5."""
    stream = io.BytesIO(data)
    try:
        with wave.open(stream) as reader:
            channels, width = reader.getnchannels(), reader.getsampwidth()
            rate, declared = reader.getframerate(), reader.getnframes()
            # wave.open stops right after the data chunk's header: the samples start here.
            start = stream.tell()
    except Exception:  # not a PCM WAV, or a broken header (wave raises several types): libsndfile's turn
        return None
    if width != 2 or channels not in (1, 2):
        return None
    # A truncated file (or a streaming writer's unknown data size) holds fewer frames than its
    # header says; like libsndfile, read the whole frames that are there.
    count = max(min(declared, (len(data) - start) // (2 * channels)), 0)
    check_stream(rate, count, limits, param)
    samples = np.frombuffer(data, dtype="<i2", count=count * channels, offset=start)
    return (samples.reshape(count, channels) if channels > 1 else samples), rate


def read_with_libsndfile(data: bytes | bytearray, limits: AudioLimits, param: str) -> tuple[np.ndarray, int]:
    """(samples, rate) of anything libsndfile reads: int16 for 16-bit PCM, else float32."""
    try:
        sound = sf.SoundFile(io.BytesIO(data))
    except Exception as exc:  # libsndfile raises several types for junk input
        raise NotDecodable(400, f"the uploaded file is not audio this server can decode ({_short(exc)}); "
                           f"send one of: {ACCEPTED_TEXT}", param=param, code="invalid_audio") from None
    with sound:
        check_stream(sound.samplerate, sound.frames, limits, param)
        # 16-bit PCM is read as int16 and scaled in one numpy pass (decode_audio): libsndfile's
        # own float conversion took 0.43 ms of a 10 s clip's 0.5 ms decode.
        dtype = "int16" if sound.subtype == "PCM_16" else "float32"
        try:
            # Mono is read as 1-D: contiguous already, so no mean/copy on the request path.
            return sound.read(dtype=dtype, always_2d=sound.channels > 1), sound.samplerate
        except Exception as exc:
            raise bad_request(f"the uploaded audio is truncated or corrupt ({_short(exc)})", param,
                              "invalid_audio") from None


def check_stream(rate: int, frames: int, limits: AudioLimits, param: str) -> None:
    """Refuse, before reading the samples, audio that holds none, has an unusable sample rate,
    or is shorter or longer than the limits."""
    if frames <= 0 or rate <= 0:
        raise bad_request("the uploaded audio holds no samples (empty or truncated file)", param,
                          "invalid_audio")
    if not MIN_INPUT_RATE <= rate <= MAX_INPUT_RATE:
        raise bad_request(
            f"sample rate {rate} Hz is not supported; send {MIN_INPUT_RATE}-{MAX_INPUT_RATE} Hz "
            f"audio ({SAMPLE_RATE} Hz is used as is, others are resampled)", param, "unsupported_sample_rate")
    seconds = frames / rate
    if seconds < MIN_SECONDS:
        raise bad_request(f"the audio is {seconds * 1000:.0f} ms long; the minimum is {MIN_SECONDS * 1000:.0f} ms",
                          param, "audio_too_short")
    if seconds > limits.max_seconds:
        raise too_large(f"the audio is {seconds:.1f} s long; the limit is {limits.max_seconds:.0f} s", param)


def resample(samples: np.ndarray, rate: int) -> np.ndarray:
    if rate == SAMPLE_RATE:
        return np.ascontiguousarray(samples, dtype=np.float32)
    import soxr

    return np.ascontiguousarray(soxr.resample(samples, rate, SAMPLE_RATE), dtype=np.float32)


def pcm16_to_float(data: bytes) -> np.ndarray:
    """Raw little-endian 16-bit PCM (the streaming endpoint's frames) -> float32 in [-1, 1]."""
    if len(data) % 2:
        raise APIError(400, "PCM frames must hold whole 16-bit samples (an even number of bytes)")
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0


_OPENING = re.compile(r"^Error opening <[^>]*>: ")


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return _OPENING.sub("", text)[:160]
