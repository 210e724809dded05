"""Recognition with a request's own options (OpenAI parameters): extra generate() kwargs
(language, hotwords), word timestamps, the request's VAD settings; and the pieces the SSE stream
runs one at a time. A request without options goes through pipeline.transcribe unchanged.

Runs on the model's worker thread (through the scheduler), like pipeline.py.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from inference_server import pipeline
from inference_server.audio import SAMPLE_RATE
from inference_server.formats import Segment, Transcript, Word
from inference_server.model_loader import LoadedModel
from inference_server.openai_params import ModelTraits, RecognitionOptions, VadOverride
from inference_server.segments import Span, join_texts, ms_to_samples, split_long, whole_clip


def traits_of(model: LoadedModel) -> ModelTraits:
    """What the loaded version can do: its FunASR class (AutoModel keeps the built model in
    `.model`) and the model config's aliases / language."""
    family = type(getattr(model.asr, "model", None)).__name__
    options = model.config.options
    return ModelTraits(family=family, name=model.name, aliases=tuple(options.get("aliases") or ()),
                       fixed_language=options.get("language"), has_vad=model.vad is not None)


def pad_spans(spans: list[Span], prefix_ms: int) -> list[Span]:
    """Start each span `prefix_ms` earlier (OpenAI's prefix_padding_ms), never before 0 nor
    into the span before it."""
    out: list[Span] = []
    for start, end in spans:
        floor = out[-1][1] if out else 0
        out.append((max(start - prefix_ms, floor), end))
    return out


def detect_speech(model: LoadedModel, audio: np.ndarray, vad: VadOverride | None) -> list[Span]:
    if vad is None or vad.silence_ms is None:
        spans = pipeline.detect_speech(model, audio)
    else:
        if model.vad is None:
            raise RuntimeError("no VAD model is loaded")
        result = model.vad.generate(input=audio, max_end_silence_time=vad.silence_ms)
        value = result[0].get("value", []) if result else []
        spans = [(int(start), int(end)) for start, end in value if end > start]
    return pad_spans(spans, vad.prefix_padding_ms) if vad is not None and vad.prefix_padding_ms else spans


def plan_spans(model: LoadedModel, audio: np.ndarray, opts: RecognitionOptions) -> list[Span]:
    max_ms = int(model.config.server_option("max_segment_ms"))
    if model.vad is not None:
        return split_long(detect_speech(model, audio, opts.vad), max_ms)
    return whole_clip(pipeline.duration_ms(audio), max_ms)


def words_from_tokens(text: str, stamps: list[Any], span: Span) -> tuple[str, list[Word]]:
    """Paraformer's `output_timestamp` result: the text as space-separated units (a CJK
    character or a word each) and one [start_ms, end_ms] per unit, from 0 of the piece. Returns
    the text joined as without timestamps and the words placed in the clip. The CIF predictor
    can place a last token past the piece's end (its tail threshold); that is clamped to the
    piece, which is all the audio the token came from."""
    units = text.split()
    if len(units) != len(stamps):
        raise RuntimeError(f"the model returned {len(stamps)} token timestamps for {len(units)} words")
    start, end = span

    def place(ms: Any) -> int:
        return min(start + int(ms), end)

    words = [Word(start_ms=place(s[0]), end_ms=place(s[1]), word=u) for u, s in zip(units, stamps)]
    return join_texts(units), words


def recognise(model: LoadedModel, piece: np.ndarray, opts: RecognitionOptions, span: Span
              ) -> tuple[str, list[Word]]:
    """The piece's text, and its words (placed within `span`, where the piece lies in the clip)
    when the request asked for word timestamps."""
    if len(piece) < SAMPLE_RATE // 100:  # under 10 ms: nothing a frontend can frame
        return "", []
    kwargs = dict(opts.generate_kwargs)
    if opts.word_timestamps:
        kwargs["output_timestamp"] = True
    result = model.asr.generate(input=piece, **kwargs)
    if not result:
        return "", []
    text = str(result[0].get("text", "")).strip()
    if not opts.word_timestamps:
        return text, []
    return words_from_tokens(text, list(result[0].get("timestamp") or []), span)


def piece_of(audio: np.ndarray, span: Span) -> np.ndarray:
    return audio[ms_to_samples(span[0], SAMPLE_RATE): ms_to_samples(span[1], SAMPLE_RATE)]


def transcribe(model: LoadedModel, audio: np.ndarray, opts: RecognitionOptions) -> Transcript:
    segments: list[Segment] = []
    words: list[Word] = []
    for span in plan_spans(model, audio, opts):
        text, piece_words = recognise(model, piece_of(audio, span), opts, span)
        segments.append(Segment(start_ms=span[0], end_ms=span[1], text=text))
        words.extend(piece_words)
    return Transcript(text=join_texts([s.text for s in segments]), duration_s=len(audio) / SAMPLE_RATE,
                      segments=segments, words=words if opts.word_timestamps else None)
