"""WebSocket streaming: PCM in, speech start/end events and per-segment transcripts out.

Protocol (GET /v1/audio/stream, then WebSocket):
  client -> binary frames: 16 kHz mono little-endian 16-bit PCM, any frame size
  client -> text {"type": "end"}: no more audio; the server flushes and closes
  server -> {"type": "ready", "model", "version"}
            {"type": "speech_start", "start_ms"}
            {"type": "speech_end", "end_ms"}
            {"type": "transcript", "start_ms", "end_ms", "text", "version"}
            {"type": "error", "message"} then close;  {"type": "done"} then close
A stream is served from start to end by the version serving when it opened (it holds a lease).
"""

from __future__ import annotations

import json
import time
from functools import partial
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiohttp import WSMsgType, web

from inference_server import pipeline
from inference_server.app import STATE, ServerState
from inference_server.audio import SAMPLE_RATE, pcm16_to_float
from inference_server.errors import APIError
from inference_server.model_loader import LoadedModel
from inference_server.segments import ms_to_samples

log = logging.getLogger("inference_server.stream")
CHUNK_MS = 200
CHUNK_SAMPLES = CHUNK_MS * SAMPLE_RATE // 1000


@dataclass
class VadEvents:
    """Pure bookkeeping of FSMN-VAD streaming output: [beg, -1] opens speech, [-1, end] closes it,
    [beg, end] is a whole segment; returns events and finished segments in order."""

    open_start: int | None = None
    finished: list[tuple[int, int]] = field(default_factory=list)

    def feed(self, value: list[list[int]]) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        for beg, end in value:
            if beg >= 0:
                self.open_start = beg
                events.append({"type": "speech_start", "start_ms": beg})
            if end >= 0:
                start = self.open_start if self.open_start is not None else max(beg, 0)
                events.append({"type": "speech_end", "end_ms": end})
                self.finished.append((start, end))
                self.open_start = None
        return events


class StreamSession:
    def __init__(self, state: ServerState, model: LoadedModel) -> None:
        self.state = state
        self.model = model
        self.cache: dict[str, Any] = {}
        self.pending = np.zeros(0, dtype=np.float32)
        self.audio: list[np.ndarray] = []
        self.samples = 0
        self.events = VadEvents()

    def _vad_step(self, chunk: np.ndarray, is_final: bool) -> list[list[int]]:
        vad = self.model.vad
        assert vad is not None
        result = vad.generate(input=chunk, cache=self.cache, is_final=is_final, chunk_size=CHUNK_MS,
                              max_end_silence_time=int(self.model.config.server_option("vad_max_end_silence_ms")))
        return list(result[0].get("value", [])) if result else []

    def _clip(self, start_ms: int, end_ms: int) -> np.ndarray:
        whole = np.concatenate(self.audio) if self.audio else np.zeros(0, dtype=np.float32)
        return whole[ms_to_samples(start_ms, SAMPLE_RATE): ms_to_samples(end_ms, SAMPLE_RATE)]

    async def push(self, samples: np.ndarray, is_final: bool) -> list[dict[str, Any]]:
        limit = int(self.state.settings.limits.max_seconds * SAMPLE_RATE)
        if self.samples + len(samples) > limit:
            raise APIError(413, f"the stream is longer than {self.state.settings.limits.max_seconds:.0f} s")
        self.audio.append(samples)
        self.samples += len(samples)
        self.pending = np.concatenate([self.pending, samples])
        out: list[dict[str, Any]] = []
        if is_final:
            # The final call must see a whole chunk (FunASR divides by its duration): pad with silence.
            short = (-len(self.pending)) % CHUNK_SAMPLES or (CHUNK_SAMPLES if len(self.pending) == 0 else 0)
            self.pending = np.concatenate([self.pending, np.zeros(short, dtype=np.float32)])
        while len(self.pending) >= CHUNK_SAMPLES:
            chunk, self.pending = self.pending[:CHUNK_SAMPLES], self.pending[CHUNK_SAMPLES:]
            last = is_final and len(self.pending) == 0
            value = await self.state.scheduler.run(self.model, partial(self._vad_step, chunk, last))
            out.extend(self.events.feed(value))
        if is_final and self.events.open_start is not None:  # audio ended inside speech
            end = int(self.samples * 1000 / SAMPLE_RATE)
            out.extend(self.events.feed([[-1, end]]))
        while self.events.finished:
            start, end = self.events.finished.pop(0)
            clip = self._clip(start, end)
            started = time.perf_counter()
            text = await self.state.scheduler.run(self.model, partial(pipeline.recognise, self.model, clip))
            self.state.metrics.observe_stream_segment(self.model.name, self.model.version,
                                                      time.perf_counter() - started)
            out.append({"type": "transcript", "start_ms": start, "end_ms": end, "text": text,
                        "version": self.model.version})
        return out


async def stream(request: web.Request) -> web.StreamResponse:
    """One session. It is measured as a session (how it ended, errors by status) and per speech
    segment, never as one HTTP request: a 10-minute stream in the request histogram would read
    as a 600 s request and swamp the p99 that canary analysis judges."""
    state = request.app[STATE]
    try:
        model = state.lease()
    except APIError as exc:  # not ready or shutting down: refused before any version was involved
        current = state.slot.current
        state.metrics.observe_stream(current.name if current else "none",
                                     current.version if current else "none", "error", exc.status)
        raise
    request["served_by"] = model
    result, error_code = "closed", None
    try:
        if model.vad is None:
            raise APIError(400, "streaming needs a VAD model (vad_path in the model config)")
        ws = web.WebSocketResponse(max_msg_size=1 << 20)
        await ws.prepare(request)
        session = StreamSession(state, model)
        await ws.send_json({"type": "ready", "model": model.name, "version": model.version,
                            "sample_rate": SAMPLE_RATE})
        try:
            async for msg in ws:
                if msg.type == WSMsgType.BINARY:
                    for event in await session.push(pcm16_to_float(msg.data), is_final=False):
                        await ws.send_json(event)
                elif msg.type == WSMsgType.TEXT:
                    try:
                        kind = json.loads(msg.data).get("type")
                    except (ValueError, AttributeError):
                        kind = None
                    if kind != "end":
                        raise APIError(400, 'text frames must be {"type": "end"}; send audio as binary PCM')
                    for event in await session.push(np.zeros(0, dtype=np.float32), is_final=True):
                        await ws.send_json(event)
                    await ws.send_json({"type": "done"})
                    result = "done"
                    break
                elif msg.type == WSMsgType.ERROR:
                    break
        except APIError as exc:
            result, error_code = "error", exc.status
            if not ws.closed:
                await ws.send_json({"type": "error", "message": exc.message, "status": exc.status})
        await ws.close()
        return ws
    except APIError as exc:  # before the WebSocket handshake
        result, error_code = "error", exc.status
        raise
    except ConnectionResetError:  # the client went away while we were answering
        result = "closed"
        raise
    except Exception:
        result, error_code = "error", 500
        raise
    finally:
        state.metrics.observe_stream(model.name, model.version, result, error_code)
        model.release()
