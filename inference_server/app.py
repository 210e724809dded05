"""HTTP routes (aiohttp). Handlers parse and answer; decisions live in the modules they call."""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from inference_server import formats, openai_params, pipeline, recognition
from inference_server.audio import SAMPLE_RATE, decode_audio
from inference_server.errors import APIError, bad_request, not_ready
from inference_server.metrics import ServerMetrics
from inference_server.model_loader import LoadedModel
from inference_server.config import ConfigError, parse_model_config
from inference_server.config_revision import APPLY, RevisionGate, outcome_of
from inference_server.model_slot import ModelSlot, ReloadOutcome
from inference_server.scheduler import InferenceScheduler
from inference_server.settings import ServerSettings
from inference_server.shadow import SHADOW_ENDPOINT, ShadowCopier, ShadowMetrics, shadow_transcribe
from inference_server.sse import stream_transcription
from inference_server.uploads import FIELD_LIMIT, Upload, read_multipart

log = logging.getLogger("inference_server.http")

STREAM_ENDPOINT = "/v1/audio/stream"
KNOWN_ENDPOINTS = {
    "/v1/audio/transcriptions", "/v1/audio/transcriptions/batch", "/v1/vad", STREAM_ENDPOINT,
    "/v1/models", "/healthz", "/readyz", "/metrics", "/admin/reload", "/admin/config", "/v1/golden", SHADOW_ENDPOINT,
}


@dataclass
class ServerState:
    settings: ServerSettings
    metrics: ServerMetrics
    slot: ModelSlot
    scheduler: InferenceScheduler
    draining: bool = False
    inflight: int = 0
    started_at: float = field(default_factory=time.time)
    config_gate: RevisionGate = field(init=False)
    shadow: ShadowCopier | None = None  # stable side of a shadow stage (copies after the answer)
    shadow_metrics: ShadowMetrics = field(init=False)

    def __post_init__(self) -> None:
        self.config_gate = RevisionGate(self.slot)  # the file and PUT /admin/config meet here
        self._applying: set[asyncio.Task[ReloadOutcome]] = set()
        self.shadow_metrics = ShadowMetrics(self.metrics.registry, self.metrics.pod)
        # Read when scraped: nothing to update on the request path.
        self.metrics.inflight.labels(**self.metrics.pod).set_function(lambda: self.inflight)

    def lease(self) -> LoadedModel:
        """The serving version, with a lease the caller must release."""
        if self.draining:
            raise APIError(503, "the server is shutting down", type="server_shutting_down",
                           headers={"Retry-After": "1"})
        model = self.slot.current
        if model is None:
            raise not_ready("no model version is ready yet; see /v1/models for the load state")
        model.acquire()
        return model


STATE = web.AppKey("state", ServerState)


def _endpoint(request: web.Request) -> str:
    path = request.path
    return path if path in KNOWN_ENDPOINTS else "other"


@web.middleware
async def observe(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                  ) -> web.StreamResponse:
    state = request.app[STATE]
    started = time.perf_counter()
    state.inflight += 1
    status = 500
    try:
        try:
            response = await handler(request)
        except APIError as exc:
            response = web.json_response(exc.body(), status=exc.status, headers=exc.headers)
        except web.HTTPException as exc:  # aiohttp's own 404/405/413
            err = APIError(exc.status, exc.reason or "error",
                           type="invalid_request_error" if exc.status < 500 else "server_error")
            response = web.json_response(err.body(), status=exc.status)
        except Exception:
            log.exception("unexpected error on %s", request.path)
            err = APIError(500, "internal server error", type="server_error")
            response = web.json_response(err.body(), status=500)
        status = request.get("stream_error", response.status)  # an SSE stream that ended in an error event
        served_by: LoadedModel | None = request.get("served_by")
        if status >= 400 and served_by is not None:
            # A failure while a version was in use (a 504 timeout, a 500 from generate) names
            # that version, so a canary's errors can be attributed to it like its successes.
            for key, value in _model_headers(served_by).items():
                response.headers.setdefault(key, value)
        return response
    finally:
        state.inflight -= 1
        served: LoadedModel | None = request.get("served_by")
        current = state.slot.current
        model = served.name if served else (current.name if current else "none")
        version = served.version if served else (current.version if current else "none")
        # A WebSocket stream records its own session and segment metrics (streaming.py); every
        # other path is counted here, inference apart from the rest (metrics.observe_request).
        if _endpoint(request) != STREAM_ENDPOINT:
            state.metrics.observe_request(_endpoint(request), status, model, version,
                                          time.perf_counter() - started)


def _require_file(upload: Upload) -> tuple[str, bytearray]:
    if not upload.files:
        raise bad_request("missing required parameter: 'file' (the audio, as a multipart file field)", "file")
    return upload.files[0]


def _model_headers(model: LoadedModel) -> dict[str, str]:
    return {"X-Model-Name": model.name, "X-Model-Version": model.version, "X-Model-Sha256": model.digest}


async def _transcribe(state: ServerState, model: LoadedModel, audio: np.ndarray,
                      job: Callable[[], formats.Transcript] | None = None) -> formats.Transcript:
    started = time.perf_counter()
    # The plain path is batched with other requests (scheduler.transcribe); a request with its
    # own decoding options runs alone through `job`.
    transcript = await (state.scheduler.transcribe(model, audio) if job is None else state.scheduler.run(model, job))
    state.metrics.observe_audio(model.name, model.version, len(audio) / SAMPLE_RATE, time.perf_counter() - started)
    return transcript


def render(fmt: str, transcript: formats.Transcript, model: LoadedModel) -> web.Response:
    headers = _model_headers(model)
    if fmt == "json":
        return web.json_response(dict(formats.as_json(transcript), model_version=model.version), headers=headers)
    if fmt == "verbose_json":
        return web.json_response(formats.as_verbose_json(transcript, model.name, model.version), headers=headers)
    body = {"text": transcript.text + "\n", "srt": formats.as_srt(transcript),
            "vtt": formats.as_vtt(transcript)}[fmt]
    return web.Response(text=body, content_type="text/plain", charset="utf-8", headers=headers)


async def transcriptions(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    state.scheduler.admit()  # shed load before reading the upload
    with state.scheduler.arriving():  # a forming batch may wait for this upload (scheduler.py)
        upload = await read_multipart(request, state.settings.limits.max_bytes)
        _, data = _require_file(upload)
        params = openai_params.parse_format_request(upload.values)  # before decoding: cheap checks first
        audio = decode_audio(data, state.settings.limits)
    model = state.lease()
    try:
        traits = recognition.traits_of(model)
        opts = openai_params.recognition_options(params, traits)
        request["served_by"] = model
        if params.stream:
            return await stream_transcription(request, state.scheduler, model, audio, opts, _model_headers(model))
        if opts.is_default:  # the plain path stays pipeline.transcribe's (batched)
            transcript = await _transcribe(state, model, audio)
        else:
            transcript = await _transcribe(state, model, audio,
                                           lambda: recognition.transcribe(model, audio, opts))
        transcript.language = params.language or traits.fixed_language or transcript.language
        response = render(params.response_format, transcript, model)
        copier = state.shadow
        if copier is not None and copier.wants_copy():
            # The user's answer is written (and finished) first; the copy only then is queued.
            await response.prepare(request)
            await response.write_eof()
            copier.offer(bytes(data), upload.files[0][0], transcript.text, model.version)
        return response
    finally:
        model.release()


async def batch_transcriptions(request: web.Request) -> web.StreamResponse:
    """Several `file` fields in one request, all served by the same version, results in order."""
    state = request.app[STATE]
    state.scheduler.admit()
    max_files = 16
    upload = await read_multipart(request, state.settings.limits.max_bytes, max_files=max_files)
    if not upload.files:
        raise bad_request("missing required parameter: 'file' (repeat the field once per audio file)", "file")
    decoded: list[tuple[str, np.ndarray | APIError]] = []
    for filename, data in upload.files:
        try:
            decoded.append((filename, decode_audio(data, state.settings.limits)))
        except APIError as exc:  # one bad file fails only its own entry
            decoded.append((filename, exc))
    model = state.lease()
    try:
        request["served_by"] = model
        results: list[dict[str, Any]] = []
        for filename, item in decoded:
            if isinstance(item, APIError):
                results.append({"file": filename, **item.body()})
                continue
            t = await _transcribe(state, model, item)
            results.append({"file": filename, **formats.as_verbose_json(t, model.name, model.version)})
        return web.json_response({"object": "list", "model_version": model.version, "data": results},
                                 headers=_model_headers(model))
    finally:
        model.release()


async def vad(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    state.scheduler.admit()
    upload = await read_multipart(request, state.settings.limits.max_bytes)
    _, data = _require_file(upload)
    audio = decode_audio(data, state.settings.limits)
    model = state.lease()
    try:
        request["served_by"] = model
        if model.vad is None:
            raise bad_request("this server has no VAD model configured (vad_path in the model config)")
        spans = await state.scheduler.run(model, lambda: pipeline.detect_speech(model, audio))
        return web.json_response({
            "duration_ms": pipeline.duration_ms(audio),
            "segments": [{"start_ms": s, "end_ms": e} for s, e in spans],
            "vad_path": model.config.vad_path, "model_version": model.version,
        }, headers=_model_headers(model))
    finally:
        model.release()


def _model_objects(state: ServerState) -> list[dict[str, Any]]:
    """OpenAI model objects: the serving name, then each alias (options.aliases) as its own id."""
    desc = state.slot.describe()
    current = state.slot.current
    if not desc["serving"] or current is None:
        return []
    s = desc["serving"]
    base = {"object": "model", "created": int(s["loaded_at"]), "owned_by": "asr-rollout"}
    names = recognition.traits_of(current).served_names()
    return [{"id": names[0], **base, **s}] + [{"id": alias, **base, "alias_of": names[0], **s} for alias in names[1:]]


async def models(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    return web.json_response({"object": "list", "data": _model_objects(state), **state.slot.describe()})


async def model_by_id(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    current = state.slot.current
    if current is None:
        raise not_ready("no model version is ready yet; see /v1/models for the load state")
    wanted = request.match_info["model_id"]
    for obj in _model_objects(state):
        if obj["id"] == wanted:
            return web.json_response(obj, headers=_model_headers(current))
    raise openai_params.model_not_found(wanted, recognition.traits_of(current))


async def golden_transcripts(request: web.Request) -> web.StreamResponse:
    """The serving version's last golden-set run: per-clip hypotheses, references, CER/WER."""
    state = request.app[STATE]
    current = state.slot.current
    if current is None:
        raise not_ready("no model version is ready yet; see /v1/models for the load state")
    if current.golden is None:
        raise APIError(404, f"version {current.version} ships no golden set (golden/manifest.jsonl in its "
                       "directory); create one with `asr-model golden create`", type="not_found")
    return web.json_response({"model": current.name, "model_version": current.version,
                              **current.golden.detail()}, headers=_model_headers(current))


async def healthz(request: web.Request) -> web.StreamResponse:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    current = state.slot.current
    if state.draining:
        return web.json_response({"ready": False, "reason": "shutting down"}, status=503)
    if current is None:
        return web.json_response({"ready": False, "reason": "no verified, warmed model yet",
                                  "versions": state.slot.states}, status=503)
    return web.json_response({"ready": True, "version": current.version, "sha256": current.digest})


async def metrics(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    state.metrics.update_gpu_memory()
    state.slot.publish_memory()
    body = generate_latest(state.metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def _check_admin(request: web.Request) -> ServerState:
    state = request.app[STATE]
    token = state.settings.admin_token
    if not token:
        raise APIError(404, "the admin endpoints are off; set ASR_ADMIN_TOKEN to enable them", type="not_found")
    given = request.headers.get("Authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
        raise APIError(401, "missing or wrong bearer token", type="authentication_error")
    return state


async def admin_reload(request: web.Request) -> web.StreamResponse:
    state = _check_admin(request)
    outcome = await state.config_gate.offer_file(force=request.query.get("force") == "true")
    status = 409 if outcome.result == "failure" else 200
    return web.json_response(outcome.as_dict(), status=status)


async def admin_config(request: web.Request) -> web.StreamResponse:
    """`PUT /admin/config`: the operator's push of the model config (the body: the same YAML or
    JSON the ConfigMap's `model.yaml` holds, with its `revision`). Served if its revision is newer
    than any taken from the file or an earlier push (`inference_server.config_revision`).
    `?wait=S` waits up to S seconds for the load (default 0: answer 202 once admitted; the load
    goes on after the answer, also if the client has gone)."""
    state = _check_admin(request)
    try:
        wait_s = float(request.query.get("wait", "0"))
    except ValueError:
        raise bad_request(f"wait={request.query['wait']!r} is not a number of seconds") from None
    text = await request.text()
    try:
        config = parse_model_config(text, "pushed model config")
    except ConfigError as exc:
        raise APIError(400, str(exc), type="invalid_config") from None
    if config.revision is None:
        raise APIError(400, "a pushed model config needs a 'revision' (the operator's write counter): "
                            "without one it cannot be ordered against the mounted file", type="invalid_config")
    admission = state.config_gate.admit(config, "pushed")
    if state.shadow is not None:  # the copy setting rides on the same revision (no model reload)
        state.shadow.take_text(text, "pushed")
    if admission.verdict != APPLY:
        return web.json_response({**outcome_of(admission, config).as_dict(), "revision": admission.newest})
    task = asyncio.get_running_loop().create_task(state.config_gate.apply(config))
    state._applying.add(task)
    task.add_done_callback(state._applying.discard)
    done, _ = await asyncio.wait({task}, timeout=max(0.0, min(wait_s, 600.0)))
    if not done:
        return web.json_response({"result": "accepted", "reason": "loading", "version": config.version,
                                  "revision": config.revision, "message": "admitted; loading", "at": time.time()},
                                 status=202)
    outcome = task.result()
    return web.json_response({**outcome.as_dict(), "revision": config.revision},
                             status=409 if outcome.result == "failure" else 200)


def build_app(state: ServerState) -> web.Application:
    from inference_server.streaming import stream

    app = web.Application(middlewares=[observe], client_max_size=state.settings.limits.max_bytes + FIELD_LIMIT)
    app[STATE] = state
    app.router.add_post("/v1/audio/transcriptions", transcriptions)
    app.router.add_post("/v1/audio/transcriptions/batch", batch_transcriptions)
    app.router.add_post("/v1/vad", vad)
    app.router.add_get("/v1/audio/stream", stream)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/v1/models/{model_id}", model_by_id)
    app.router.add_get("/v1/golden", golden_transcripts)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/admin/reload", admin_reload)
    app.router.add_put("/admin/config", admin_config)
    app.router.add_post(SHADOW_ENDPOINT, shadow_transcribe)
    return app
