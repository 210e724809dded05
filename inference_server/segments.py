"""Pure decisions about audio segments: cutting long ones, windows without VAD, joining text."""

from __future__ import annotations

import re

Span = tuple[int, int]  # [start_ms, end_ms)


def split_long(spans: list[Span], max_ms: int) -> list[Span]:
    """Cut every span longer than `max_ms` into equal pieces no longer than `max_ms`."""
    if max_ms <= 0:
        raise ValueError("max_ms must be positive")
    out: list[Span] = []
    for start, end in spans:
        length = end - start
        if length <= 0:
            continue
        pieces = -(-length // max_ms)  # ceil
        step = length / pieces
        for i in range(pieces):
            out.append((start + round(i * step), start + round((i + 1) * step)))
    return out


def whole_clip(duration_ms: int, max_ms: int) -> list[Span]:
    """Spans covering a clip when no VAD model is configured."""
    return split_long([(0, duration_ms)], max_ms) if duration_ms > 0 else []


def ms_to_samples(ms: int, rate: int) -> int:
    return int(round(ms * rate / 1000))


_TAG = re.compile(r"<\|[^|]*\|>")


def _is_cjk(ch: str) -> bool:
    return "\u3400" <= ch <= "\u9fff"


def join_texts(texts: list[str]) -> str:
    """Join segment texts: no space between CJK characters, one space elsewhere."""
    cleaned = [t for t in (_TAG.sub("", x).strip() for x in texts) if t]
    if not cleaned:
        return ""
    joined = cleaned[0]
    for text in cleaned[1:]:
        sep = "" if _is_cjk(joined[-1]) and _is_cjk(text[0]) else " "
        joined += sep + text
    return joined
