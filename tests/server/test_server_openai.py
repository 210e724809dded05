"""OpenAI's transcription parameters through the official `openai` client against a real server
process (tiny Paraformer + real FSMN-VAD): each one honoured, or refused in OpenAI's error shape."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import pytest
from openai.types.audio import TranscriptionTextDeltaEvent, TranscriptionTextDoneEvent

from asr_sandbox import ConfigMapDir, ServerProcess, model_config
from tests.server.test_server_api import post
from tests.support.forms import form

MODEL = "paraformer-tiny"


@pytest.fixture(scope="module")
def client(api_server: tuple[ServerProcess, ConfigMapDir]) -> openai.OpenAI:
    return openai.OpenAI(base_url=api_server[0].url + "/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def clip(assets: Path) -> bytes:
    return (assets / "audio" / "speech_gap.wav").read_bytes()


def transcribe(client: openai.OpenAI, clip: bytes, **kw: Any) -> Any:
    return client.audio.transcriptions.create(file=("speech_gap.wav", clip), **{"model": MODEL, **kw})


def refused(exc_type: type[openai.APIStatusError], client: openai.OpenAI, clip: bytes, **kw: Any
            ) -> openai.APIStatusError:
    with pytest.raises(exc_type) as err:
        transcribe(client, clip, **kw)
    body = err.value.body
    assert isinstance(body, dict) and set(body) == {"message", "type", "param", "code"}, body
    return err.value


def test_stream_sends_openai_delta_events_then_done(client: openai.OpenAI, clip: bytes, truth) -> None:
    plain = transcribe(client, clip).text
    events = list(transcribe(client, clip, stream=True))
    deltas = [e for e in events if isinstance(e, TranscriptionTextDeltaEvent)]
    assert isinstance(events[-1], TranscriptionTextDoneEvent) and events[-1].type == "transcript.text.done"
    # one delta per VAD segment, each sent as its piece is recognised
    assert len(deltas) == len(truth["speech_gap"]["speech_ms"]) == len(events) - 1
    assert all(d.type == "transcript.text.delta" and d.delta for d in deltas)
    assert "".join(d.delta for d in deltas) == events[-1].text == plain


def test_an_error_after_the_stream_began_reaches_the_client_as_an_error(
        tmp_path_factory: pytest.TempPathFactory, models_root: Path, server_starter, clip: bytes) -> None:
    """A server whose request timeout (1 ms) is shorter than any recognition, and no VAD: the
    stream starts (the plan needs no model), then its first piece times out. The status line is
    sent by then; the official client raises on the `error` event rather than ending quietly."""
    server, _ = server_starter(tmp_path_factory.mktemp("stream-timeout"), models_root, model_config("v1", vad=False),
                               extra_args=["--request-timeout", "0.001"])
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
        with pytest.raises(openai.APIError) as err:
            list(client.audio.transcriptions.create(model=MODEL, file=("a.wav", clip), stream=True))
        assert "did not finish" in err.value.message
        assert err.value.body["code"] == "request_timeout"  # type: ignore[index]
    finally:
        server.stop()


async def test_stream_response_is_server_sent_events(api_server: tuple[ServerProcess, ConfigMapDir],
                                                    clip: bytes) -> None:
    status, body, headers = await post(api_server[0], "/v1/audio/transcriptions",
                                       form(clip, model=MODEL, stream="true"))
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    assert headers["X-Model-Version"] == "v1"
    assert body.startswith("data: {") and body.rstrip().endswith("}") and '"transcript.text.done"' in body
    status, body, _ = await post(api_server[0], "/v1/audio/transcriptions",
                                 form(clip, model=MODEL, stream="true", response_format="srt"))
    assert status == 400 and body["error"]["param"] == "stream"


def test_temperature_in_range_is_accepted_and_out_of_range_refused(client: openai.OpenAI, clip: bytes) -> None:
    base = transcribe(client, clip, response_format="verbose_json")
    warm = transcribe(client, clip, response_format="verbose_json", temperature=0.7)
    assert warm.text == base.text  # greedy decoding: the temperature-0 result, and it says so
    assert all(s.temperature == 0.0 for s in warm.segments or [])
    for bad in (1.5, -0.1):
        err = refused(openai.BadRequestError, client, clip, temperature=bad)
        assert err.body["param"] == "temperature" and "between 0 and 1" in err.message  # type: ignore[index]


def test_unknown_model_is_404_model_not_found_listing_names_and_aliases(client: openai.OpenAI, clip: bytes) -> None:
    err = refused(openai.NotFoundError, client, clip, model="gpt-4o-transcribe")
    assert err.code == "model_not_found" and err.body["param"] == "model"  # type: ignore[index]
    assert "'gpt-4o-transcribe'" in err.message and "'paraformer-tiny'" in err.message and "'whisper-1'" in err.message
    assert transcribe(client, clip, model="whisper-1").text == transcribe(client, clip).text


def test_models_retrieve_by_id(client: openai.OpenAI) -> None:
    model = client.models.retrieve(MODEL)
    assert model.id == MODEL and model.object == "model" and model.owned_by == "asr-rollout"
    alias = client.models.retrieve("whisper-1")
    assert alias.id == "whisper-1" and getattr(alias, "alias_of") == MODEL
    with pytest.raises(openai.NotFoundError) as err:
        client.models.retrieve("whisper-2")
    assert err.value.code == "model_not_found" and "'paraformer-tiny'" in err.value.message


def test_language_is_the_models_own_or_refused(client: openai.OpenAI, clip: bytes) -> None:
    verbose = transcribe(client, clip, response_format="verbose_json", language="zh")
    assert verbose.language == "zh"
    err = refused(openai.BadRequestError, client, clip, language="en")
    assert err.code == "unsupported_language" and "'zh'" in err.message and "Paraformer" in err.message


def test_word_and_segment_timestamps(client: openai.OpenAI, clip: bytes) -> None:
    plain = transcribe(client, clip, response_format="verbose_json")
    assert plain.words is None  # words only when asked for
    both = transcribe(client, clip, response_format="verbose_json", timestamp_granularities=["word", "segment"])
    assert both.text == plain.text and [s.text for s in both.segments or []] == [s.text for s in plain.segments or []]
    words = both.words or []
    assert words and "".join(w.word for w in words) == both.text.replace(" ", "")
    starts = [w.start for w in words]
    assert starts == sorted(starts) and all(w.end >= w.start for w in words)
    segments = both.segments or []
    # each word lies in its segment, at its place in the clip (not from 0 of its piece)
    first = len(segments[0].text)
    assert all(segments[0].start <= w.start and w.end <= segments[0].end for w in words[:first])
    assert all(segments[1].start <= w.start and w.end <= segments[1].end for w in words[first:])
    segment_only = transcribe(client, clip, response_format="verbose_json", timestamp_granularities=["segment"])
    assert segment_only.words is None and len(segment_only.segments or []) == len(segments)
    err = refused(openai.BadRequestError, client, clip, timestamp_granularities=["word"])
    assert "verbose_json" in err.message


def test_prompt_include_and_unknown_parameters_are_refused(client: openai.OpenAI, clip: bytes) -> None:
    err = refused(openai.BadRequestError, client, clip, prompt="fox, dog")
    assert err.code == "unsupported_parameter" and "hotwords" in err.message
    err = refused(openai.BadRequestError, client, clip, include=["logprobs"])
    assert err.body["param"] == "include" and "log-probabilities" in err.message  # type: ignore[index]
    err = refused(openai.BadRequestError, client, clip, extra_body={"keywords": "fox"})
    assert err.code == "unknown_parameter" and "keywords" in err.message


def test_chunking_strategy(client: openai.OpenAI, clip: bytes) -> None:
    base = transcribe(client, clip, response_format="verbose_json")
    auto = transcribe(client, clip, response_format="verbose_json", chunking_strategy="auto")
    assert [(s.start, s.end) for s in auto.segments or []] == [(s.start, s.end) for s in base.segments or []]
    padded = transcribe(client, clip, response_format="verbose_json",
                        chunking_strategy={"type": "server_vad", "prefix_padding_ms": 300})
    assert [round(s.end, 3) for s in padded.segments or []] == [round(s.end, 3) for s in base.segments or []]
    assert [round(s.start, 3) for s in padded.segments or []] == [
        round(max(s.start - 0.3, 0.0), 3) for s in base.segments or []]
    # a 3 s end-silence bridges the 1.5 s gap: one span, which max_segment_ms (4 s) cuts in two halves
    merged = transcribe(client, clip, response_format="verbose_json",
                        chunking_strategy={"type": "server_vad", "silence_duration_ms": 3000})
    lengths = [round((s.end - s.start) * 1000) for s in merged.segments or []]
    assert len(lengths) == 2 and abs(lengths[0] - lengths[1]) <= 1
    assert merged.segments[0].end == merged.segments[1].start
    err = refused(openai.BadRequestError, client, clip,
                  chunking_strategy={"type": "server_vad", "threshold": 0.6})
    assert "threshold" in err.message
