"""What runs on a model's worker thread: VAD, splitting, recognition, timestamp restoring."""

from __future__ import annotations

import numpy as np

from inference_server.audio import SAMPLE_RATE
from inference_server.formats import Segment, Transcript
from inference_server.model_loader import LoadedModel
from inference_server.segments import Span, join_texts, ms_to_samples, split_long, whole_clip


def duration_ms(audio: np.ndarray) -> int:
    return int(round(len(audio) * 1000 / SAMPLE_RATE))


def detect_speech(model: LoadedModel, audio: np.ndarray) -> list[Span]:
    """Speech spans in ms from FSMN-VAD. `max_end_silence_time` is passed explicitly: FunASR
    1.4.16's default dynamic silence would merge a whole file into one segment."""
    if model.vad is None:
        raise RuntimeError("no VAD model is loaded")
    result = model.vad.generate(
        input=audio, max_end_silence_time=int(model.config.server_option("vad_max_end_silence_ms"))
    )
    value = result[0].get("value", []) if result else []
    return [(int(start), int(end)) for start, end in value if end > start]


def recognise(model: LoadedModel, audio: np.ndarray) -> str:
    if len(audio) < SAMPLE_RATE // 100:  # under 10 ms: nothing a frontend can frame
        return ""
    result = model.asr.generate(input=audio)
    if not result:
        return ""
    return str(result[0].get("text", "")).strip()


def plan_spans(model: LoadedModel, audio: np.ndarray) -> list[Span]:
    """Where to run recognition: VAD speech spans (cut to max_segment_ms), or the whole clip."""
    max_ms = int(model.config.server_option("max_segment_ms"))
    if model.vad is not None:
        return split_long(detect_speech(model, audio), max_ms)
    return whole_clip(duration_ms(audio), max_ms)


def transcribe(model: LoadedModel, audio: np.ndarray) -> Transcript:
    segments: list[Segment] = []
    for start, end in plan_spans(model, audio):
        piece = audio[ms_to_samples(start, SAMPLE_RATE) : ms_to_samples(end, SAMPLE_RATE)]
        text = recognise(model, piece)
        # Each piece is recognised from 0; its offset in the clip restores the timestamps.
        segments.append(Segment(start_ms=start, end_ms=end, text=text))
    return Transcript(text=join_texts([s.text for s in segments]), duration_s=len(audio) / SAMPLE_RATE,
                      segments=segments)
