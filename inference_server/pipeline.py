"""What runs on a model's worker thread: VAD, splitting, recognition, timestamp restoring."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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


MIN_SAMPLES = SAMPLE_RATE // 100  # under 10 ms: nothing a frontend can frame
# A batch is padded to its longest input, and padded frames cost as much as real ones. Inputs go
# into one generate() only while the longest is at most this many times the shortest; a 1 s
# piece is never decoded at the cost of a 30 s one (bucket_by_length).
MAX_PAD_RATIO = 2.0


def recognise(model: LoadedModel, audio: np.ndarray) -> str:
    if len(audio) < MIN_SAMPLES:
        return ""
    result = model.asr.generate(input=audio)
    if not result:
        return ""
    return str(result[0].get("text", "")).strip()


def batch_pad_ratio(automodel: Any) -> float:
    """How much padding a batch of this model's inputs may carry without changing any text,
    preparing the model for it on first use (on the worker thread, like every model call).

    FunASR 1.4.16's Paraformer pads a batch's features and masks the encoder, but its CIF
    predictor (CifPredictorV2) runs a Conv1d over the encoder output *unmasked*: the last frames
    of a shorter input see the encoder's output on the padding (not zero, as alone), their
    firing weights shift (by ~0.002 on the tiny model) and the last tokens change. Zeroing the
    padded encoder frames before the predictor makes every input's text the same as alone
    (on a lone input nothing is padded and nothing changes). Models without that predictor
    entry point are batched only with inputs of the same length: no padding at all."""
    inner = getattr(automodel, "model", None)
    if inner is None or not callable(getattr(inner, "calc_predictor", None)):
        return 1.0
    if not getattr(inner, "_asr_rollout_masked_predictor", False):
        import torch

        unmasked = inner.calc_predictor

        def calc_predictor(encoder_out: Any, encoder_out_lens: Any) -> Any:
            frames = encoder_out.shape[1]
            if encoder_out.shape[0] > 1 and int(encoder_out_lens.min()) < frames:
                keep = torch.arange(frames, device=encoder_out.device)[None, :] < encoder_out_lens[:, None]
                encoder_out = encoder_out * keep[:, :, None].to(encoder_out.dtype)
            return unmasked(encoder_out, encoder_out_lens)

        inner.calc_predictor = calc_predictor
        inner._asr_rollout_masked_predictor = True
    return MAX_PAD_RATIO


class BatchMismatch(RuntimeError):
    """generate() returned a different number of results than it was given inputs."""


def bucket_by_length(lengths: list[int], max_ratio: float = MAX_PAD_RATIO) -> list[list[int]]:
    """Pure: indices of `lengths` grouped for batched decoding, shortest first; in each group the
    longest input is at most `max_ratio` times the shortest."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups: list[list[int]] = []
    for i in order:
        if groups and lengths[i] <= max_ratio * max(lengths[groups[-1][0]], 1):
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def recognise_batch(model: LoadedModel, pieces: list[np.ndarray], options: dict[str, Any] | None = None,
                    on_generate: Callable[[int], None] | None = None, max_pad_ratio: float | None = None
                    ) -> list[str]:
    """The texts of `pieces`, in order, from as few generate() calls as bucket_by_length allows.

    FunASR's AutoModel takes a list of arrays and `batch_size` (on CPU it sets its own
    batch_size to 1 at construction, so it is passed per call); Paraformer pads the fbank
    features to the longest and masks with the lengths. With batch_pad_ratio's fix an input's
    text does not depend on its batch mates (tests/server/test_server_batching.py checks it on
    mixed lengths). One input runs exactly as `recognise` does. `on_generate(n)` is told the
    size of every call (the batch-size histogram). `max_pad_ratio` (default: the model's
    batch_pad_ratio) bounds longest / shortest in one call."""
    options = options or {}
    texts = [""] * len(pieces)
    live = [i for i, piece in enumerate(pieces) if len(piece) >= MIN_SAMPLES]
    if len(live) > 1:
        ratio = batch_pad_ratio(model.asr)
        if max_pad_ratio is not None:
            ratio = max_pad_ratio
    else:
        ratio = 1.0
    for group in bucket_by_length([len(pieces[i]) for i in live], ratio):
        indices = [live[g] for g in group]
        if on_generate is not None:
            on_generate(len(indices))
        if len(indices) == 1:
            result = model.asr.generate(input=pieces[indices[0]], **options)
        else:
            result = model.asr.generate(input=[pieces[i] for i in indices], batch_size=len(indices), **options)
        if len(indices) == 1 and not result:
            continue
        if len(result) != len(indices):
            # Paraformer returns one empty result for a whole batch in which no input has a
            # token; the caller retries each input alone.
            raise BatchMismatch(f"generate returned {len(result)} results for {len(indices)} inputs")
        for i, item in zip(indices, result):
            texts[i] = str(item.get("text", "")).strip()
    return texts


def plan_spans(model: LoadedModel, audio: np.ndarray) -> list[Span]:
    """Where to run recognition: VAD speech spans (cut to max_segment_ms), or the whole clip."""
    max_ms = int(model.config.server_option("max_segment_ms"))
    if model.vad is not None:
        return split_long(detect_speech(model, audio), max_ms)
    return whole_clip(duration_ms(audio), max_ms)


def cut(audio: np.ndarray, spans: list[Span]) -> list[np.ndarray]:
    return [audio[ms_to_samples(start, SAMPLE_RATE) : ms_to_samples(end, SAMPLE_RATE)] for start, end in spans]


def assemble(audio: np.ndarray, spans: list[Span], texts: list[str]) -> Transcript:
    """Each piece is recognised from 0; its span in the clip restores the timestamps, whatever
    batch it was decoded in."""
    segments = [Segment(start_ms=start, end_ms=end, text=text) for (start, end), text in zip(spans, texts)]
    return Transcript(text=join_texts([s.text for s in segments]), duration_s=len(audio) / SAMPLE_RATE,
                      segments=segments)


def transcribe(model: LoadedModel, audio: np.ndarray) -> Transcript:
    """The whole pipeline in one call, one piece at a time (golden sets; requests go through the
    scheduler, which batches the pieces)."""
    spans = plan_spans(model, audio)
    return assemble(audio, spans, [recognise(model, piece) for piece in cut(audio, spans)])
