"""Compressed uploads (mp3, m4a/mp4, webm, ogg/opus, mpeg, ...) -> 16 kHz mono float32, through
PyAV: FFmpeg's demuxers, decoders and resampler, bundled in the `av` wheels (no system FFmpeg).

audio.decode_audio tries its own fast 16-bit WAV reader and libsndfile first; this is the last
decoder. The container is recognised from its first bytes here and FFmpeg is told which demuxer
to use: it never probes. Probing would let an upload pick any of FFmpeg's demuxers, among them
playlists (HLS, concat) that open the files or URLs they list.
"""

from __future__ import annotations

import io

import numpy as np

from inference_server.errors import APIError, bad_request, too_large

SAMPLE_RATE = 16000

# What OpenAI's transcription endpoint accepts, and so what this server promises (the error text
# lists exactly these). oga/mpga are extensions of ogg/mp3 files.
ACCEPTED = ("flac", "m4a", "mp3", "mp4", "mpeg", "mpga", "oga", "ogg", "wav", "webm")
ACCEPTED_TEXT = ", ".join(ACCEPTED)


def container_of(head: bytes) -> str | None:
    """The FFmpeg demuxer for an upload's first bytes, or None when it is none of ACCEPTED."""
    if head.startswith(b"fLaC"):
        return "flac"
    if head.startswith(b"OggS"):
        return "ogg"                       # .ogg / .oga: Vorbis, Opus or FLAC inside
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "matroska"                  # .webm (FFmpeg's matroska,webm demuxer)
    if head[4:8] == b"ftyp":
        return "mov"                       # .mp4 / .m4a (FFmpeg's mov,mp4,m4a demuxer)
    if head.startswith(b"RIFF") and head[8:12] == b"WAVE":
        return "wav"                       # codecs libsndfile lacks (e.g. MP3 or A-law in WAV)
    if head.startswith(b"\x00\x00\x01\xba"):
        return "mpeg"                      # MPEG program stream (.mpeg)
    if head.startswith(b"ID3"):
        return "mp3"                       # .mp3 / .mpga with an ID3v2 tag
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0 and head[1] & 0x06:
        return "mp3"                       # an MPEG audio frame header (layer bits set; 00 is AAC ADTS)
    return None


def unsupported(param: str, detail: str = "") -> APIError:
    return bad_request(f"the uploaded file is not audio this server can decode{detail}; send one of: "
                       f"{ACCEPTED_TEXT}", param, "invalid_audio")


def decode_with_av(data: bytes | bytearray, max_seconds: float, param: str = "file") -> np.ndarray:
    """16 kHz mono float32 samples of a compressed upload. Raises APIError: 400 for anything not
    in ACCEPTED, without an audio track, or corrupt; 413 past `max_seconds` (checked while
    decoding, so a long file is refused before it is all decoded)."""
    demuxer = container_of(bytes(data[:16]))
    if demuxer is None:
        raise unsupported(param)
    import av  # imported on first use: most uploads are WAV and never need it

    try:
        container = av.open(io.BytesIO(bytes(data)), mode="r", format=demuxer)
    except Exception as exc:  # FFmpegError subclasses, and ValueError for a bad header
        raise unsupported(param, f" ({demuxer}: {_short(exc)})") from None
    with container:
        if not container.streams.audio:
            raise bad_request(f"the uploaded {demuxer} file holds no audio track", param, "invalid_audio")
        stream = container.streams.audio[0]
        # FFmpeg's resampler downmixes to mono and converts to 16 kHz float in one pass.
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        chunks: list[np.ndarray] = []
        total = 0
        limit = int(max_seconds * SAMPLE_RATE)
        try:
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunk = out.to_ndarray().reshape(-1)
                    chunks.append(chunk)
                    total += len(chunk)
                if total > limit:
                    raise too_large(f"the audio is longer than the limit of {max_seconds:.0f} s", param)
            for out in resampler.resample(None):  # flush
                chunks.append(out.to_ndarray().reshape(-1))
        except av.FFmpegError as exc:
            raise bad_request(f"the uploaded {demuxer} audio is truncated or corrupt ({_short(exc)})", param,
                              "invalid_audio") from None
    samples = np.concatenate(chunks).astype(np.float32, copy=False) if chunks else np.zeros(0, np.float32)
    return samples


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:160]
