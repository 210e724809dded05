"""The shadow stage on the server: stable pods copy a share of their transcription requests,
with their own transcript, to the canary; the canary transcribes the copy, scores its transcript
against stable's and exports shadow metrics apart from user traffic (docs/contracts.md).

Stable side (`ShadowCopier`): the setting is the model config's `shadow:` key ({url, percent}),
written by the operator into the stable ConfigMap only while a shadow stage runs, and taken
like the model path from whichever source carries the newer `revision`: the operator's push
(`PUT /admin/config`, seconds) or the mounted file (the kubelet's copy, up to a minute and more
later). No restart; its removal stops the copies; a late file copy of an older revision never
turns copies back on. A copy is queued
only after the user's answer was written, leaves through a bounded queue served by a fixed
number of senders (a full queue drops the copy and counts it), and its outcome is counted:
sent, shed (the canary answered 503: load shedding, not a model error), failed, dropped.

Canary side (`shadow_transcribe`, POST /v1/shadow): the same transcription, scored with the
golden-set normalisation and character edit distance against the reference transcript, counted
under asr_shadow_* names so no copy ever counts as a user request.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web
from prometheus_client import Counter, Histogram

from inference_server.background import BackgroundLoop
from inference_server.golden import characters, edit_count

log = logging.getLogger("inference_server.shadow")

SHADOW_ENDPOINT = "/v1/shadow"
COPY_RESULTS = ("sent", "shed", "failed", "dropped")


class ShadowConfigError(ValueError):
    """The model config's `shadow:` key is malformed; the message says what to write."""


@dataclass(frozen=True)
class ShadowSetting:
    url: str      # the canary Service, e.g. http://R-canary.NS.svc:8000
    percent: int  # 1..100


def parse_shadow(data: Any, source: str = "model config") -> ShadowSetting | None:
    """The `shadow:` key of a model config (None: absent, no copies)."""
    if data is None:
        return None
    if not isinstance(data, dict):
        raise ShadowConfigError(f"{source}: 'shadow' must be a mapping like {{url: http://R-canary.NS.svc:8000, "
                                "percent: 20}}")
    url, percent = data.get("url"), data.get("percent")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ShadowConfigError(f"{source}: shadow.url must be the canary's http(s) address, got {url!r}")
    if isinstance(percent, bool) or not isinstance(percent, int) or not 1 <= percent <= 100:
        raise ShadowConfigError(f"{source}: shadow.percent must be an integer 1..100, got {percent!r}")
    unknown = set(data) - {"url", "percent"}
    if unknown:
        raise ShadowConfigError(f"{source}: shadow has unknown keys {sorted(unknown)}; allowed: url, percent")
    return ShadowSetting(url=url.rstrip("/"), percent=percent)


def read_shadow(config_path: Path) -> ShadowSetting | None:
    """The shadow setting in the config file; None when absent, unreadable or malformed (copies
    are an optional extra: a bad setting stops them and is logged, it never fails the model)."""
    try:
        text = Path(config_path).read_text()
    except OSError as exc:
        log.warning("no shadow copies: %s", exc)
        return None
    return shadow_of_text(text, str(config_path))[0]


def shadow_of_text(text: str, source: str) -> tuple[ShadowSetting | None, int | None]:
    """(shadow setting, revision) of a model config's text; a malformed setting is None (logged)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        log.warning("no shadow copies: %s: %s", source, exc)
        return None, None
    if not isinstance(data, dict):
        return None, None
    revision = data.get("revision")
    revision = revision if isinstance(revision, int) and not isinstance(revision, bool) else None
    try:
        return parse_shadow(data.get("shadow"), source), revision
    except ShadowConfigError as exc:
        log.warning("no shadow copies: %s", exc)
        return None, revision


def is_sampled(sequence: int, percent: int) -> bool:
    """Whether request number `sequence` (0, 1, 2, ...) is copied: exactly `percent` of every 100
    consecutive requests, spread evenly (no randomness: a test can count on it)."""
    return (sequence + 1) * percent // 100 > sequence * percent // 100


class ShadowMetrics:
    def __init__(self, registry: Any, pod: dict[str, str]) -> None:
        p = list(pod)
        self.pod = pod
        self.copies = Counter("asr_shadow_copies", "Stable side: copies of requests for the canary by outcome "
                              "(sent, shed: the canary answered 503, failed, dropped: the queue was full)",
                              p + ["version", "result"], registry=registry)
        self.requests = Counter("asr_shadow_requests", "Canary side: shadow copies answered, by status code",
                                p + ["code", "model", "version"], registry=registry)
        self.duration = Histogram("asr_shadow_request_duration_seconds", "Canary side: seconds to transcribe a copy",
                                  p + ["model", "version"], registry=registry,
                                  buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60))
        self.rtf = Histogram("asr_shadow_real_time_factor", "Canary side: processing seconds per audio second "
                             "of copies", p + ["model", "version"], registry=registry,
                             buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5))
        self.char_edits = Counter("asr_shadow_char_edits", "Canary side: character edits from stable's transcript "
                                  "to the canary's", p + ["model", "version"], registry=registry)
        self.reference_chars = Counter("asr_shadow_reference_chars", "Canary side: characters of stable's "
                                       "transcripts (the shadow CER's denominator)", p + ["model", "version"],
                                       registry=registry)

    def copy(self, version: str, result: str) -> None:
        self.copies.labels(**self.pod, version=version, result=result).inc()


@dataclass(frozen=True)
class _Copy:
    audio: bytes
    filename: str
    reference: str
    version: str
    url: str


class ShadowCopier(BackgroundLoop):
    """Stable side. `offer()` never waits: it is called after the answer was written."""

    def __init__(self, metrics: ShadowMetrics, config_path: Path, interval_s: float = 0.5,
                 max_queue: int = 16, concurrency: int = 2, timeout_s: float = 30.0) -> None:
        self.metrics = metrics
        self.config_path = Path(config_path)
        self.interval_s = interval_s
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self.setting: ShadowSetting | None = None
        self.queue: asyncio.Queue[_Copy] = asyncio.Queue(maxsize=max_queue)
        self.revision: int | None = None  # the revision the setting was taken from
        self._sequence = 0
        self._raw: bytes | None = None

    def take(self, setting: ShadowSetting | None, revision: int | None, source: str) -> bool:
        """Apply the setting of a config carrying `revision`, unless a newer revision was taken
        (the rule of `inference_server.config_revision.admit`; a config without a revision, e.g.
        a hand-written file, is applied). True when applied."""
        if revision is not None and self.revision is not None and revision < self.revision:
            log.info("%s shadow setting of revision %s ignored: revision %s is newer", source, revision,
                     self.revision)
            return False
        if revision is not None:
            self.revision = revision
        if setting != self.setting:
            log.info("shadow copies %s (%s)", f"on: {setting.percent}% to {setting.url}" if setting else "off",
                     source)
        self.setting = setting
        return True

    def take_text(self, text: str, source: str) -> bool:
        setting, revision = shadow_of_text(text, source)
        return self.take(setting, revision, source)

    def refresh(self) -> None:
        """Re-read the setting when the config file's bytes changed."""
        try:
            raw = self.config_path.read_bytes()
        except OSError:
            return  # mid-swap: keep the last setting
        if raw != self._raw:
            self._raw = raw
            self.take_text(raw.decode("utf-8", errors="replace"), "file")

    def wants_copy(self) -> bool:
        """Counts the request; True when this one is to be copied."""
        setting = self.setting
        if setting is None:
            return False
        sequence, self._sequence = self._sequence, self._sequence + 1
        return is_sampled(sequence, setting.percent)

    def offer(self, audio: bytes, filename: str, reference: str, version: str) -> None:
        setting = self.setting
        if setting is None:
            return
        try:
            self.queue.put_nowait(_Copy(audio, filename, reference, version, setting.url))
        except asyncio.QueueFull:
            self.metrics.copy(version, "dropped")

    async def _loop(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        # trust_env: HTTP(S)_PROXY / NO_PROXY from the pod's env apply to copies. Where a cluster
        # sets a proxy, NO_PROXY must hold `.svc` (and `.cluster.local`), else copies to the
        # canary Service go out through the proxy (docs/shadow.md).
        async with aiohttp.ClientSession(timeout=timeout, trust_env=True) as session:
            senders = [asyncio.create_task(self._send_loop(session)) for _ in range(self.concurrency)]
            try:
                while True:
                    self.refresh()
                    await asyncio.sleep(self.interval_s)
            finally:
                for task in senders:
                    task.cancel()
                await asyncio.gather(*senders, return_exceptions=True)

    async def _send_loop(self, session: aiohttp.ClientSession) -> None:
        while True:
            item = await self.queue.get()
            self.metrics.copy(item.version, await self._send(session, item))

    async def _send(self, session: aiohttp.ClientSession, item: _Copy) -> str:
        form = aiohttp.FormData()
        form.add_field("file", item.audio, filename=item.filename or "audio.wav")
        form.add_field("reference", item.reference)
        form.add_field("reference_version", item.version)
        try:
            async with session.post(f"{item.url}{SHADOW_ENDPOINT}", data=form) as response:
                await response.read()
                if response.status == 503:
                    return "shed"
                return "sent" if response.status == 200 else "failed"
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            log.debug("shadow copy to %s failed: %s", item.url, exc)
            return "failed"


def score_copy(reference: str, hypothesis: str) -> tuple[int, int]:
    """(character edits, reference characters) after the golden-set normalisation."""
    count = edit_count(characters(reference), characters(hypothesis))
    return count.edits, count.length


async def shadow_transcribe(request: web.Request) -> web.StreamResponse:
    """Canary side: transcribe a copy and score it against stable's transcript."""
    from inference_server import pipeline
    from inference_server.app import STATE
    from inference_server.audio import SAMPLE_RATE, decode_audio
    from inference_server.errors import APIError, bad_request
    from inference_server.uploads import read_multipart

    state = request.app[STATE]
    metrics: ShadowMetrics = state.shadow_metrics
    started = time.perf_counter()
    current = state.slot.current
    name, version = (current.name, current.version) if current else ("none", "none")
    code = 500
    try:
        state.scheduler.admit()
        upload = await read_multipart(request, state.settings.limits.max_bytes)
        if not upload.files:
            raise bad_request("missing required parameter: 'file'", "file")
        reference = upload.fields.get("reference", "")
        audio = decode_audio(upload.files[0][1], state.settings.limits)
        model = state.lease()
        try:
            name, version = model.name, model.version
            transcript = await state.scheduler.run(model, lambda: pipeline.transcribe(model, audio))
        finally:
            model.release()
        seconds = time.perf_counter() - started
        edits, length = score_copy(reference, transcript.text)
        labels = dict(**metrics.pod, model=name, version=version)
        metrics.duration.labels(**labels).observe(seconds)
        if len(audio):
            metrics.rtf.labels(**labels).observe(seconds / (len(audio) / SAMPLE_RATE))
        metrics.char_edits.labels(**labels).inc(edits)
        metrics.reference_chars.labels(**labels).inc(length)
        code = 200
        return web.json_response({"text": transcript.text, "model_version": version, "char_edits": edits,
                                  "reference_chars": length})
    except APIError as exc:
        code = exc.status
        raise
    finally:
        metrics.requests.labels(**metrics.pod, code=str(code), model=name, version=version).inc()
