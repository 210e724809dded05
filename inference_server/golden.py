"""Golden sets: the format inside a model version directory, text normalisation and scores.

A version directory may carry a golden set, covered by its `MANIFEST.sha256` like every file:

    golden/manifest.jsonl   one JSON object per line:
                            {"audio": "clip1.wav", "text": "reference transcript"}
                            `audio` is relative to golden/; `text` is optional (a set without
                            references serves only the canary-vs-stable agreement check)
    golden/*.wav            the audio (any rate/format the server decodes)

Scores (all pure functions here, computed after `normalise`):
- CER: character edit distance over all items / reference characters over all items (micro
  average), with spaces removed, so "二零 二五" and "二零二五" are the same characters;
- WER: the same over words, only for items whose reference is space-delimited (no CJK, kana or
  Thai); None when the set has none;
- agreement rate between two transcript lists: 1 - character edits / the longer side's
  characters, summed over items (1.0 = identical, 0.0 = nothing in common).
Edit distances come from `rapidfuzz` (Levenshtein, C++), already a FunASR dependency.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from rapidfuzz.distance import Levenshtein

GOLDEN_DIR = "golden"
GOLDEN_MANIFEST = "manifest.jsonl"
_SPACES = re.compile(r"\s+")
# Scripts written without spaces between words: WER means nothing for them.
_UNSPACED = re.compile(
    "[\u2e80-\u2fdf\u3040-\u30ff\u3100-\u312f\u3190-\u31ff\u3400-\u4dbf\u4e00-\u9fff"
    "\uf900-\ufaff\u0e00-\u0e7f\U00020000-\U0002fa1f]"
)


class GoldenSetError(ValueError):
    """A golden set is malformed; the message names the file, the line and what to fix."""


def normalise(text: str) -> str:
    """Unicode NFKC (full-width forms become ASCII, e.g. "ＡＢＣ１" -> "ABC1"), every punctuation
    character removed (Unicode category P*: ASCII and CJK alike, "，。！？、《》"), case folded,
    whitespace collapsed to single spaces and trimmed."""
    text = unicodedata.normalize("NFKC", text)
    text = "".join(" " if unicodedata.category(c).startswith("P") else c for c in text)
    return _SPACES.sub(" ", text.casefold()).strip()


def characters(text: str) -> list[str]:
    """The units of CER: normalised characters, spaces left out."""
    return [c for c in normalise(text) if not c.isspace()]


def words(text: str) -> list[str]:
    return normalise(text).split()


def is_space_delimited(text: str) -> bool:
    """Whether WER applies: some words, and no character of an unspaced script."""
    norm = normalise(text)
    return bool(norm) and not _UNSPACED.search(norm)


@dataclass(frozen=True)
class ErrorCount:
    edits: int
    length: int  # reference units

    @property
    def rate(self) -> float | None:
        return None if self.length == 0 else self.edits / self.length


def edit_count(reference: Sequence[str], hypothesis: Sequence[str]) -> ErrorCount:
    """Substitutions + deletions + insertions turning the reference into the hypothesis."""
    return ErrorCount(int(Levenshtein.distance(list(reference), list(hypothesis))), len(reference))


@dataclass(frozen=True)
class Score:
    cer: float | None          # None: no reference characters at all
    wer: float | None          # None: no space-delimited references
    char_edits: int
    char_total: int
    word_edits: int
    word_total: int
    items: int


def score(references: Sequence[str], hypotheses: Sequence[str]) -> Score:
    """Micro-averaged CER (and WER over the space-delimited items) of paired transcripts."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses; pair them one to one")
    ce = ct = we = wt = 0
    for ref, hyp in zip(references, hypotheses):
        c = edit_count(characters(ref), characters(hyp))
        ce, ct = ce + c.edits, ct + c.length
        if is_space_delimited(ref):
            w = edit_count(words(ref), words(hyp))
            we, wt = we + w.edits, wt + w.length
    return Score(cer=ce / ct if ct else None, wer=we / wt if wt else None, char_edits=ce, char_total=ct,
                 word_edits=we, word_total=wt, items=len(references))


def agreement_rate(first: Sequence[str], second: Sequence[str]) -> float:
    """How alike two transcript lists of the same audio are: 1 - character edits / the longer
    side's characters, summed over items. Symmetric; two empty lists agree fully."""
    if len(first) != len(second):
        raise ValueError(f"transcript lists differ in length ({len(first)} vs {len(second)}); "
                         "they must be of the same golden audio, in the same order")
    edits = longest = 0
    for a, b in zip(first, second):
        ca, cb = characters(a), characters(b)
        edits += int(Levenshtein.distance(ca, cb))
        longest += max(len(ca), len(cb))
    return 1.0 if longest == 0 else 1.0 - edits / longest


# --- the set's format -----------------------------------------------------------------------

@dataclass(frozen=True)
class GoldenItem:
    audio: str                 # relative to golden/, POSIX
    text: str | None = None    # reference transcript; None: agreement only


@dataclass(frozen=True)
class GoldenSet:
    root: Path                 # the golden/ directory
    items: tuple[GoldenItem, ...]

    @property
    def has_references(self) -> bool:
        return all(item.text is not None for item in self.items)

    def audio_path(self, item: GoldenItem) -> Path:
        return self.root / item.audio


def _safe_relative(name: Any, where: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise GoldenSetError(f"{where}: 'audio' must be a non-empty relative path like \"clip1.wav\"")
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or "\\" in name:
        raise GoldenSetError(f"{where}: audio {name!r} must be a relative path inside golden/ (no '..', no leading '/')")
    return path.as_posix()


def parse_golden_manifest(text: str, source: str = GOLDEN_MANIFEST) -> tuple[GoldenItem, ...]:
    items: list[GoldenItem] = []
    seen: set[str] = set()
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{source} line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise GoldenSetError(f"{where} is not JSON ({exc.msg}); write one object per line: "
                                 '{"audio": "clip1.wav", "text": "reference"}') from None
        if not isinstance(record, dict):
            raise GoldenSetError(f'{where} must be a JSON object like {{"audio": "clip1.wav", "text": "..."}}')
        unknown = set(record) - {"audio", "text"}
        if unknown:
            raise GoldenSetError(f"{where}: unknown keys {sorted(unknown)}; allowed: audio, text")
        audio = _safe_relative(record.get("audio"), where)
        if audio in seen:
            raise GoldenSetError(f"{where}: audio {audio!r} is listed twice")
        seen.add(audio)
        ref = record.get("text")
        if ref is not None and not isinstance(ref, str):
            raise GoldenSetError(f"{where}: 'text' must be a string (or left out when there is no reference)")
        items.append(GoldenItem(audio=audio, text=ref))
    if not items:
        raise GoldenSetError(f"{source} lists no audio; add one line per clip or remove the golden/ directory")
    mixed = {item.text is None for item in items}
    if len(mixed) > 1:
        raise GoldenSetError(f"{source}: either every item has a 'text' reference or none has "
                             "(a set without references serves only the agreement check)")
    return tuple(items)


def render_golden_manifest(items: Sequence[GoldenItem]) -> str:
    lines = []
    for item in items:
        record: dict[str, str] = {"audio": item.audio}
        if item.text is not None:
            record["text"] = item.text
        lines.append(json.dumps(record, ensure_ascii=False))
    return "\n".join(lines) + "\n"


def load_golden_set(version_dir: Path) -> GoldenSet | None:
    """The version's golden set, None when it ships none. Every listed audio file must exist."""
    root = Path(version_dir) / GOLDEN_DIR
    if not root.exists():
        return None
    manifest = root / GOLDEN_MANIFEST
    if not manifest.is_file():
        raise GoldenSetError(f"{GOLDEN_DIR}/ has no {GOLDEN_MANIFEST}; create the set with "
                             "`asr-model golden create DIR --audio ... --refs ...`")
    items = parse_golden_manifest(manifest.read_text(encoding="utf-8"), f"{GOLDEN_DIR}/{GOLDEN_MANIFEST}")
    missing = [item.audio for item in items if not (root / item.audio).is_file()]
    if missing:
        raise GoldenSetError(f"{GOLDEN_DIR}/{GOLDEN_MANIFEST} lists audio that is not there: {', '.join(missing)}")
    return GoldenSet(root=root, items=items)


def parse_ceiling(options: dict[str, Any], source: str = "model config") -> float | None:
    """`options.golden_cer_max`: a CER ceiling in [0, 1]; absent means no ceiling."""
    value = options.get("golden_cer_max")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= float(value) <= 1:
        raise GoldenSetError(f"{source}: options.golden_cer_max must be a number from 0 to 1 "
                             f"(a CER, e.g. 0.1), got {value!r}")
    return float(value)


def check_options(options: dict[str, Any], source: str = "model config") -> None:
    """The golden options of a model config: `golden_cer_max` (see parse_ceiling) and
    `golden_interval_s` (seconds between re-runs of the serving version's set; 0 = at load only)."""
    parse_ceiling(options, source)
    interval = options.get("golden_interval_s", 0)
    if isinstance(interval, bool) or not isinstance(interval, (int, float)) or interval < 0:
        raise GoldenSetError(f"{source}: options.golden_interval_s must be a number of seconds >= 0 "
                             f"(0: evaluate only at load), got {interval!r}")


def ceiling_breach(cer: float | None, ceiling: float | None, has_references: bool) -> str | None:
    """Why a version must not turn ready (None: it may). Pure, so the rule is tested alone."""
    if ceiling is None:
        return None
    if not has_references:
        return (f"options.golden_cer_max is {ceiling:g} but the golden set has no references to "
                "measure a CER against; add 'text' to golden/manifest.jsonl or drop the ceiling")
    if cer is None:
        return f"options.golden_cer_max is {ceiling:g} but the golden references hold no characters"
    if cer > ceiling:
        return f"golden-set CER {cer:.4f} is over the ceiling golden_cer_max {ceiling:g}"
    return None
