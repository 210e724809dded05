"""The decisions behind OpenAI's transcription parameters, without a server: which model class
gets which generate() kwargs, and what is refused with which code."""

from __future__ import annotations

from typing import Any

import pytest

from inference_server.config import ConfigError, parse_model_config
from inference_server.errors import APIError
from inference_server.openai_params import (ModelTraits, VadOverride, hotword_list, parse_chunking,
                                            parse_format_request, recognition_options)
from inference_server.recognition import pad_spans, words_from_tokens
from inference_server.sse import next_delta

PARAFORMER = ModelTraits(family="Paraformer", name="paraformer-zh", aliases=("whisper-1",), fixed_language="zh",
                         has_vad=True)
SENSEVOICE = ModelTraits(family="SenseVoiceSmall", name="sensevoice")
SEACO = ModelTraits(family="SeacoParaformer", name="seaco")


def fields(**kw: str | list[str]) -> dict[str, list[str]]:
    out = {"model": ["paraformer-zh"]}
    out.update({k: v if isinstance(v, list) else [v] for k, v in kw.items()})
    return out


def error(fn: Any, *args: Any) -> APIError:
    with pytest.raises(APIError) as err:
        fn(*args)
    return err.value


def test_language_goes_to_models_that_take_it() -> None:
    opts = recognition_options(parse_format_request(fields(model="sensevoice", language="yue")), SENSEVOICE)
    assert opts.generate_kwargs == {"language": "yue"}
    err = error(recognition_options, parse_format_request(fields(model="sensevoice", language="de")), SENSEVOICE)
    assert err.status == 400 and err.code == "unsupported_language" and "zh, en, yue" in err.message
    # a fixed-language model: its own language is fine (nothing to pass), another is refused
    assert recognition_options(parse_format_request(fields(language="zh")), PARAFORMER).generate_kwargs == {}
    assert error(recognition_options, parse_format_request(fields(language="en")), PARAFORMER).code == \
        "unsupported_language"
    undeclared = ModelTraits(family="Paraformer", name="paraformer-zh")
    assert "options.language" in error(recognition_options, parse_format_request(fields(language="zh")),
                                       undeclared).message


def test_prompt_becomes_hotwords_only_where_the_model_takes_them() -> None:
    opts = recognition_options(parse_format_request(fields(model="seaco", prompt="阿里巴巴, 达摩院\nFunASR")), SEACO)
    assert opts.generate_kwargs == {"hotword": "阿里巴巴 达摩院 FunASR"}
    assert error(recognition_options, parse_format_request(fields(prompt="x")), PARAFORMER).code == \
        "unsupported_parameter"
    # FunASR loads a hotword string that names a file: a request must never make it read one
    for sneaky in ("/etc/passwd", "../secrets.txt", "a\\b", "http://x/y"):
        assert error(hotword_list, sneaky).param == "prompt"


def test_model_names_and_aliases() -> None:
    assert recognition_options(parse_format_request(fields(model="whisper-1")), PARAFORMER).is_default
    err = error(recognition_options, parse_format_request(fields(model="whisper-2")), PARAFORMER)
    assert (err.status, err.code, err.param) == (404, "model_not_found", "model")
    assert "'paraformer-zh' (aliases: 'whisper-1')" in err.message


@pytest.mark.parametrize("kw, param", [
    ({"temperature": "1.01"}, "temperature"), ({"temperature": "nan"}, "temperature"),
    ({"temperature": "warm"}, "temperature"), ({"stream": "yes"}, "stream"),
    ({"stream": "true", "response_format": "verbose_json"}, "stream"),
    ({"include[]": "logprobs"}, "include"), ({"include[]": "tokens"}, "include"),
    ({"timestamp_granularities[]": "word"}, "timestamp_granularities"),
    ({"timestamp_granularities[]": "char", "response_format": "verbose_json"}, "timestamp_granularities"),
    ({"response_format": "diarized_json"}, "response_format"), ({"languages[]": "zh"}, "languages"),
    ({"model": ["a", "b"]}, "model"),
])
def test_refused_before_decoding(kw: dict[str, Any], param: str) -> None:
    err = error(parse_format_request, fields(**kw))
    assert err.status == 400 and err.param == param and err.message


def test_timestamp_granularities_and_temperature_accepted() -> None:
    granularities: dict[str, Any] = {"timestamp_granularities[]": ["word", "segment"],
                                     "response_format": "verbose_json", "temperature": "1"}
    req = parse_format_request(fields(**granularities))
    assert req.granularities == {"word", "segment"} and req.temperature == 1.0
    assert recognition_options(req, PARAFORMER).word_timestamps
    sensevoice = ModelTraits(family="SenseVoiceSmall", name="paraformer-zh")  # no word timestamps wired for it
    assert error(recognition_options, req, sensevoice).param == "timestamp_granularities"


def test_chunking_strategy_forms() -> None:
    assert parse_chunking({}) is None and parse_chunking({"chunking_strategy": ["auto"]}) is None
    assert parse_chunking({"chunking_strategy[type]": ["server_vad"], "chunking_strategy[silence_duration_ms]": ["300"],
                           "chunking_strategy[prefix_padding_ms]": ["100"]}) == VadOverride(300, 100)
    assert parse_chunking({"chunking_strategy": ['{"type": "server_vad", "silence_duration_ms": 800}']}) == \
        VadOverride(800, 0)
    for bad in ({"chunking_strategy": ["manual"]}, {"chunking_strategy[type]": ["client_vad"]},
                {"chunking_strategy[type]": ["server_vad"], "chunking_strategy[silence_duration_ms]": ["5"]},
                {"chunking_strategy[type]": ["server_vad"], "chunking_strategy[threshold]": ["0.5"]}):
        assert error(parse_chunking, bad).param.startswith("chunking_strategy")  # type: ignore[union-attr]
    no_vad = ModelTraits(family="Paraformer", name="paraformer-zh")
    req = parse_format_request(fields(**{"chunking_strategy[type]": "server_vad"}))
    assert "VAD model" in error(recognition_options, req, no_vad).message


def test_stream_deltas_add_up_to_the_joined_text() -> None:
    sent, deltas = "", []
    for texts in (["你好"], ["你好", ""], ["你好", "", "世界"], ["你好", "", "世界", "hello"]):
        delta, sent = next_delta(sent, texts)
        deltas.append(delta)
    assert deltas == ["你好", "", "世界", " hello"] and "".join(deltas) == sent == "你好世界 hello"


def test_prefix_padding_and_word_placement() -> None:
    assert pad_spans([(100, 900), (1000, 2000), (2050, 2500)], 300) == [(0, 900), (900, 2000), (2000, 2500)]
    text, words = words_from_tokens("你 好 hello", [[0, 100], [100, 250], [250, 900]], (1000, 1800))
    assert text == "你好 hello"
    assert [(w.word, w.start_ms, w.end_ms) for w in words] == [("你", 1000, 1100), ("好", 1100, 1250),
                                                              ("hello", 1250, 1800)]
    with pytest.raises(RuntimeError):
        words_from_tokens("你 好", [[0, 100]], (0, 500))


def test_model_config_checks_aliases_and_language() -> None:
    ok = parse_model_config("name: m\nversion: v1\npath: m/v1\noptions: {aliases: [whisper-1], language: zh}")
    assert ok.options["aliases"] == ["whisper-1"] and ok.automodel_options() == {}
    for bad in ("aliases: whisper-1", "aliases: ['']", "language: 3"):
        with pytest.raises(ConfigError):
            parse_model_config(f"name: m\nversion: v1\npath: m/v1\noptions: {{{bad}}}")
