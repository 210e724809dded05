"""`stream=true` on /v1/audio/transcriptions: OpenAI's transcription events as server-sent
events. One `transcript.text.delta` per recognised piece, sent as soon as that piece is done, then
`transcript.text.done` with the whole text (the events the official client parses into
TranscriptionTextDeltaEvent / TranscriptionTextDoneEvent). The deltas joined are the done text.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import numpy as np
from aiohttp import web

from inference_server import recognition
from inference_server.errors import APIError
from inference_server.model_loader import LoadedModel
from inference_server.openai_params import RecognitionOptions
from inference_server.scheduler import InferenceScheduler
from inference_server.segments import Span, join_texts


def event(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, ensure_ascii=False).encode() + b"\n\n"


def next_delta(sent: str, texts: list[str]) -> tuple[str, str]:
    """(delta, new sent text) once `texts` holds one more piece. join_texts adds pieces one after
    another, so the text so far is always a prefix of the text with one more piece."""
    full = join_texts(texts)
    return full[len(sent):], full


async def stream_transcription(request: web.Request, scheduler: InferenceScheduler, model: LoadedModel,
                               audio: np.ndarray, opts: RecognitionOptions, headers: dict[str, str]
                               ) -> web.StreamResponse:
    # Planned before the response starts: a timeout or overload here is still a plain HTTP error.
    # Without a VAD model the plan is arithmetic, done here rather than queued for the worker.
    if model.vad is None:
        spans = recognition.plan_spans(model, audio, opts)
    else:
        spans = await scheduler.run(model, lambda: recognition.plan_spans(model, audio, opts))
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                           **headers})
    await response.prepare(request)
    try:
        await _send_pieces(request, response, scheduler, model, audio, opts, spans)
    except ConnectionResetError:  # the client left mid-stream: nothing more to send it
        request["stream_error"] = 499
    return response


async def _send_pieces(request: web.Request, response: web.StreamResponse, scheduler: InferenceScheduler,
                       model: LoadedModel, audio: np.ndarray, opts: RecognitionOptions, spans: list[Span]) -> None:
    texts: list[str] = []
    sent = ""
    for span in spans:
        job = functools.partial(recognition.recognise, model, recognition.piece_of(audio, span), opts, span)
        try:
            text, _ = await scheduler.run(model, job)
        except APIError as exc:
            # The status line is gone; the client's stream parser raises on an `error` member.
            request["stream_error"] = exc.status
            await response.write(event({"type": "error", **exc.body()}))
            await response.write_eof()
            return
        texts.append(text)
        delta, sent = next_delta(sent, texts)
        if delta:
            await response.write(event({"type": "transcript.text.delta", "delta": delta}))
    await response.write(event({"type": "transcript.text.done", "text": sent}))
    await response.write_eof()
