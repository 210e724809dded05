"""Running a version's golden set: at load (before the version turns ready), periodically
after that, and from `asr-model golden`. The scoring rules live in `golden.py`; this module
does the I/O: decode the audio, transcribe it with the loaded model, export the result."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Gauge

from inference_server import golden
from inference_server.background import BackgroundLoop

if TYPE_CHECKING:
    from inference_server.model_loader import LoadedModel

log = logging.getLogger("inference_server.golden")


@dataclass(frozen=True)
class GoldenResult:
    """One evaluation of a version's golden set."""

    audio: tuple[str, ...]
    references: tuple[str | None, ...]
    hypotheses: tuple[str, ...]
    score: golden.Score | None        # None: the set has no references (agreement only)
    evaluated_at: float
    seconds: float
    gset: golden.GoldenSet | None = None  # what was run: the periodic re-run runs it again

    @property
    def cer(self) -> float | None:
        return None if self.score is None else self.score.cer

    @property
    def wer(self) -> float | None:
        return None if self.score is None else self.score.wer

    def digests(self) -> dict[str, str]:
        """audio -> short digest of the normalised hypothesis: what the agreement check compares
        across tracks (Prometheus carries the digest, not the text)."""
        return {a: transcript_digest(h) for a, h in zip(self.audio, self.hypotheses)}

    def summary(self) -> dict[str, Any]:
        return {"items": len(self.audio), "cer": self.cer, "wer": self.wer,
                "has_references": self.score is not None, "evaluated_at": self.evaluated_at,
                "seconds": round(self.seconds, 3)}

    def detail(self) -> dict[str, Any]:
        items = []
        for audio, ref, hyp in zip(self.audio, self.references, self.hypotheses):
            item: dict[str, Any] = {"audio": audio, "hypothesis": hyp, "digest": transcript_digest(hyp)}
            if ref is not None:
                item["reference"] = ref
                item["cer"] = golden.edit_count(golden.characters(ref), golden.characters(hyp)).rate
            items.append(item)
        return {**self.summary(), "items": items}


def transcript_digest(text: str) -> str:
    return hashlib.sha256(golden.normalise(text).encode("utf-8")).hexdigest()[:16]


def read_clip(path: Path) -> Any:
    """Decode a golden clip exactly like an upload (resampled to 16 kHz mono float32)."""
    from inference_server.audio import AudioLimits, decode_audio
    from inference_server.errors import APIError

    try:
        return decode_audio(path.read_bytes(), AudioLimits(), param=path.name)
    except APIError as exc:
        raise golden.GoldenSetError(f"golden clip {path.name}: {exc}") from None


def evaluate(gset: golden.GoldenSet, transcribe: Callable[[Any], str]) -> GoldenResult:
    """Transcribe every clip with `transcribe(audio) -> text` and score it. Blocking."""
    started = time.perf_counter()
    hypotheses = []
    for item in gset.items:
        hypotheses.append(transcribe(read_clip(gset.audio_path(item))))
    refs = tuple(item.text for item in gset.items)
    result_score = golden.score([r or "" for r in refs], hypotheses) if gset.has_references else None
    return GoldenResult(audio=tuple(i.audio for i in gset.items), references=refs,
                        hypotheses=tuple(hypotheses), score=result_score, evaluated_at=time.time(),
                        seconds=time.perf_counter() - started, gset=gset)


def evaluate_model(model: LoadedModel, gset: golden.GoldenSet) -> GoldenResult:
    """The golden set through the same pipeline (VAD, splitting, recognition) requests take."""
    from inference_server import pipeline

    return evaluate(gset, lambda audio: pipeline.transcribe(model, audio).text)


def gate_at_load(model: LoadedModel, model_dir: Path) -> GoldenResult | None:
    """Run at load, before the version may turn ready. Raises GoldenSetError when the set is
    malformed or the measured CER breaks `options.golden_cer_max` (the reason names the value)."""
    ceiling = golden.parse_ceiling(model.config.options)
    gset = golden.load_golden_set(model_dir)
    if gset is None:
        if ceiling is not None:
            raise golden.GoldenSetError(
                f"options.golden_cer_max is {ceiling:g} but {model.config.path} ships no golden/ set "
                "to measure; add one with `asr-model golden create` or drop the ceiling")
        return None
    result = evaluate_model(model, gset)
    breach = golden.ceiling_breach(result.cer, ceiling, gset.has_references)
    if breach is not None:
        raise golden.GoldenSetError(f"{model.config.version}: {breach}")
    log.info("golden set of %s: %d clips, CER %s, WER %s", model.config.version, len(result.audio),
             _fmt(result.cer), _fmt(result.wer))
    return result


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


class GoldenMetrics:
    """`asr_golden_cer`, `asr_golden_wer` and `asr_golden_transcript_info` for the serving
    version (docs/contracts.md); a replaced version's series are removed."""

    def __init__(self, registry: CollectorRegistry, pod: dict[str, str]) -> None:
        self.pod = dict(pod)
        p = list(self.pod)
        self.cer = Gauge("asr_golden_cer", "Character error rate of the version on its golden set",
                         p + ["model", "version"], registry=registry)
        self.wer = Gauge("asr_golden_wer", "Word error rate on the space-delimited golden references",
                         p + ["model", "version"], registry=registry)
        self.transcript = Gauge("asr_golden_transcript_info",
                                "1 per golden clip; digest = sha256 prefix of the normalised transcript",
                                p + ["model", "version", "file", "digest"], registry=registry)
        self.evaluated = Gauge("asr_golden_evaluated_timestamp_seconds", "When the golden set last ran",
                               p + ["model", "version"], registry=registry)
        self._published: list[tuple[Gauge, tuple[str, ...]]] = []

    def publish(self, model: str, version: str, result: GoldenResult | None) -> None:
        self.clear()
        if result is None:
            return
        base = (*self.pod.values(), model, version)
        if result.cer is not None:
            self._set(self.cer, base, result.cer)
        if result.wer is not None:
            self._set(self.wer, base, result.wer)
        self._set(self.evaluated, base, result.evaluated_at)
        for audio, digest in result.digests().items():
            self._set(self.transcript, (*base, audio, digest), 1)

    def _set(self, gauge: Gauge, labels: tuple[str, ...], value: float) -> None:
        gauge.labels(*labels).set(value)
        self._published.append((gauge, labels))

    def clear(self) -> None:
        for gauge, labels in self._published:
            try:
                gauge.remove(*labels)
            except KeyError:
                pass
        self._published = []


class GoldenMonitor(BackgroundLoop):
    """Re-runs the serving version's golden set every `interval_s` (model option
    `golden_interval_s`, 0 = only at load), through the scheduler so it queues behind requests
    instead of running beside them. Catches what changes under a running version: a GPU or
    driver fault, a corrupted weight in memory."""

    def __init__(self, current: Callable[[], LoadedModel | None],
                 run: Callable[[LoadedModel, Callable[[], GoldenResult]], Any],
                 publish: Callable[[LoadedModel, GoldenResult], None], poll_s: float = 1.0) -> None:
        self.current = current
        self.run = run
        self.publish = publish
        self.poll_s = poll_s

    @staticmethod
    def due(model: LoadedModel, now: float) -> bool:
        interval = float(model.config.options.get("golden_interval_s", 0) or 0)
        result = model.golden
        return interval > 0 and result is not None and now - result.evaluated_at >= interval

    async def check_once(self) -> bool:
        model = self.current()
        if model is None or not self.due(model, time.time()):
            return False
        gset = model.golden.gset if model.golden is not None else None
        if gset is None:
            return False
        model.acquire()
        try:
            result: GoldenResult = await self.run(model, lambda: evaluate_model(model, gset))
        finally:
            model.release()
        model.golden = result
        if self.current() is model:  # a swap during the run: the new version's values stay
            self.publish(model, result)
        return True

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                await self.check_once()
            except Exception as exc:  # keep serving; the next interval tries again
                log.warning("periodic golden-set evaluation failed: %s: %s", type(exc).__name__, exc)


# --- model tooling (`asr-model golden ...`) --------------------------------------------------

def read_refs(path: Path) -> dict[str, str]:
    """References as `<audio file name>\\t<transcript>` lines (a TSV; '#' starts a comment)."""
    refs: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        name, sep, text = line.partition("\t")
        if not sep or not name.strip():
            raise golden.GoldenSetError(f"{path.name} line {number}: write '<audio file name><TAB><transcript>'")
        refs[name.strip()] = text.strip()
    return refs


def create_golden_set(version_dir: Path, audio: Sequence[Path], refs: dict[str, str] | None) -> list[golden.GoldenItem]:
    """Copy the clips into VERSION/golden/, write golden/manifest.jsonl. The caller rewrites
    MANIFEST.sha256 afterwards so the set is covered by the version digest."""
    version_dir = Path(version_dir)
    if not version_dir.is_dir():
        raise golden.GoldenSetError(f"{version_dir} is not a model version directory")
    if not audio:
        raise golden.GoldenSetError("no audio given; pass --audio clip1.wav clip2.wav ...")
    names = [Path(a).name for a in audio]
    if len(set(names)) != len(names):
        raise golden.GoldenSetError("two audio files share a file name; golden clips are stored by name")
    for a in audio:
        if not Path(a).is_file():
            raise golden.GoldenSetError(f"audio file {a} does not exist")
    if refs is not None:
        missing = [n for n in names if n not in refs]
        if missing:
            raise golden.GoldenSetError(f"no reference for {', '.join(missing)} in the refs file")
        extra = sorted(set(refs) - set(names))
        if extra:
            raise golden.GoldenSetError(f"the refs file names audio that was not given: {', '.join(extra)}")
    for src in audio:
        read_clip(Path(src))  # refuse what the server could not decode, now rather than at load
    root = version_dir / golden.GOLDEN_DIR
    if root.exists():
        shutil.rmtree(root)
    root.mkdir()
    items = []
    for src, name in zip(audio, names):
        shutil.copyfile(src, root / name)
        items.append(golden.GoldenItem(audio=name, text=None if refs is None else refs[name]))
    (root / golden.GOLDEN_MANIFEST).write_text(golden.render_golden_manifest(items), encoding="utf-8")
    return items
