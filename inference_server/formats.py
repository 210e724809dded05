"""Render a transcript in the response formats OpenAI's transcription API offers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

RESPONSE_FORMATS = ("json", "text", "verbose_json", "srt", "vtt")


@dataclass(frozen=True)
class Segment:
    start_ms: int
    end_ms: int
    text: str


@dataclass(frozen=True)
class Word:
    start_ms: int
    end_ms: int
    word: str


@dataclass
class Transcript:
    text: str
    duration_s: float
    segments: list[Segment] = field(default_factory=list)
    language: str = "zh"
    words: list[Word] | None = None  # timestamp_granularities[]=word only


def as_json(t: Transcript) -> dict[str, Any]:
    return {"text": t.text}


def as_verbose_json(t: Transcript, model: str, version: str) -> dict[str, Any]:
    body = _verbose(t, model, version)
    if t.words is not None:
        body["words"] = [{"word": w.word, "start": w.start_ms / 1000, "end": w.end_ms / 1000} for w in t.words]
    return body


def _verbose(t: Transcript, model: str, version: str) -> dict[str, Any]:
    return {
        "task": "transcribe",
        "language": t.language,
        "duration": round(t.duration_s, 3),
        "text": t.text,
        "segments": [
            {
                "id": i,
                "seek": 0,
                "start": s.start_ms / 1000,
                "end": s.end_ms / 1000,
                "text": s.text,
                "tokens": [],
                "temperature": 0.0,
                "avg_logprob": 0.0,
                "compression_ratio": 0.0,
                "no_speech_prob": 0.0,
            }
            for i, s in enumerate(t.segments)
        ],
        "model": model,
        "model_version": version,
    }


def _clock(ms: int, sep: str) -> str:
    hours, rest = divmod(max(ms, 0), 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{seconds:02d}{sep}{millis:03d}"


def as_srt(t: Transcript) -> str:
    blocks = [
        f"{i}\n{_clock(s.start_ms, ',')} --> {_clock(s.end_ms, ',')}\n{s.text}\n"
        for i, s in enumerate(t.segments, start=1)
    ]
    return "\n".join(blocks)


def as_vtt(t: Transcript) -> str:
    blocks = [f"{_clock(s.start_ms, '.')} --> {_clock(s.end_ms, '.')}\n{s.text}\n" for s in t.segments]
    return "WEBVTT\n\n" + "\n".join(blocks)
