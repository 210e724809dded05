"""OpenAI's transcription parameters -> what this server does with them, or an error in OpenAI's
shape that says why not. Every parameter the official client can send is honoured or refused
here; none is silently dropped (a client that asks for word timestamps and gets none would
otherwise never know).

Pure functions of the form fields and of what the serving model can do (ModelTraits), so each
rule is tested without a server.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from inference_server.errors import APIError, bad_request
from inference_server.formats import RESPONSE_FORMATS

GRANULARITIES = ("segment", "word")
STREAM_FORMATS = ("json", "text")  # OpenAI streams text deltas; segment-level formats have no delta form
# Fields the official client sends for transcriptions (openai.types.audio.TranscriptionCreateParams).
KNOWN_FIELDS = frozenset({
    "file", "model", "response_format", "stream", "temperature", "language", "prompt",
    "timestamp_granularities", "include", "chunking_strategy",
})

# What FunASR model classes take (the `model:` key of the version's config.yaml). A class missing
# here gets none of the optional behaviour, and a request that needs it a 400 naming the class.
LANGUAGE_INPUT: dict[str, tuple[str, ...]] = {
    # SenseVoiceSmall.inference reads kwargs["language"] and looks it up in its lid_dict.
    "SenseVoiceSmall": ("auto", "zh", "en", "yue", "ja", "ko"),
}
# Paraformer's CIF predictor gives a [start_ms, end_ms] per output token (`output_timestamp`).
WORD_TIMESTAMPS = frozenset({"Paraformer", "BiCifParaformer"})
# Model-level hotword biasing (`hotword=` to generate()): the contextual Paraformers only.
HOTWORDS = frozenset({"SeacoParaformer", "ContextualParaformer"})

VAD_SILENCE_MS = (100, 6000)      # FSMN-VAD max_end_silence_time a request may set
VAD_PREFIX_PADDING_MS = (0, 2000)


@dataclass(frozen=True)
class ModelTraits:
    """What a loaded model can do with OpenAI's optional parameters."""

    family: str                        # the FunASR model class, e.g. Paraformer
    name: str                          # the served model name (model config `name`)
    aliases: tuple[str, ...] = ()      # other names clients may ask for (options.aliases)
    fixed_language: str | None = None  # what a single-language model transcribes (options.language)
    has_vad: bool = False              # a VAD model is configured (chunking_strategy server_vad)

    @property
    def languages(self) -> tuple[str, ...]:
        return LANGUAGE_INPUT.get(self.family, ())

    @property
    def word_timestamps(self) -> bool:
        return self.family in WORD_TIMESTAMPS

    @property
    def hotwords(self) -> bool:
        return self.family in HOTWORDS

    def served_names(self) -> tuple[str, ...]:
        return (self.name, *[a for a in self.aliases if a != self.name])


@dataclass(frozen=True)
class VadOverride:
    """chunking_strategy={type: server_vad, ...}: the request's own VAD settings."""

    silence_ms: int | None = None
    prefix_padding_ms: int = 0


@dataclass(frozen=True)
class FormatRequest:
    """The parameters that do not depend on the serving model (checked before decoding)."""

    model: str
    response_format: str = "json"
    stream: bool = False
    temperature: float = 0.0
    language: str | None = None
    prompt: str | None = None
    granularities: frozenset[str] = frozenset()
    vad: VadOverride | None = None


@dataclass(frozen=True)
class RecognitionOptions:
    """What a request asks of recognition, once checked against the serving model."""

    generate_kwargs: dict[str, Any] = field(default_factory=dict)  # extra generate() kwargs
    word_timestamps: bool = False
    vad: VadOverride | None = None

    @property
    def is_default(self) -> bool:
        return not self.generate_kwargs and not self.word_timestamps and self.vad is None


def _one_of(fields: dict[str, list[str]], name: str) -> str | None:
    values = fields.get(name) or fields.get(name + "[]")
    if not values:
        return None
    if len(values) > 1:
        raise bad_request(f"parameter {name!r} was sent {len(values)} times; send it once", name)
    return values[0].strip()


def _list_of(fields: dict[str, list[str]], name: str) -> list[str]:
    return [v.strip() for v in (fields.get(name + "[]", []) + fields.get(name, [])) if v.strip()]


def field_base(key: str) -> str:
    """`timestamp_granularities[]` -> timestamp_granularities; `chunking_strategy[type]` -> chunking_strategy."""
    return key.split("[", 1)[0]


def parse_bool(value: str, name: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("true", "1"):
        return True
    if lowered in ("false", "0", ""):
        return False
    raise bad_request(f"{name} must be true or false, not {value!r}", name)


def parse_temperature(value: str | None) -> float:
    """OpenAI's range is 0-1. FunASR decodes greedily, so any temperature in range gives the
    temperature-0 result (verbose_json reports the 0.0 that was used)."""
    if value is None or value == "":
        return 0.0
    try:
        t = float(value)
    except ValueError:
        raise bad_request(f"temperature must be a number between 0 and 1, not {value!r}", "temperature") from None
    if not math.isfinite(t) or not 0.0 <= t <= 1.0:
        raise bad_request(f"temperature {value} is out of range; it must be between 0 and 1", "temperature",
                          "invalid_value")
    return t


def _int_in(raw: Any, name: str, bounds: tuple[int, int]) -> int:
    try:
        value = int(str(raw).strip())
    except ValueError:
        raise bad_request(f"{name} must be an integer, not {raw!r}", name) from None
    low, high = bounds
    if not low <= value <= high:
        raise bad_request(f"{name} {value} is out of range; use {low}-{high}", name, "invalid_value")
    return value


def parse_chunking(fields: dict[str, list[str]]) -> VadOverride | None:
    """None for unset or "auto" (VAD segmentation with the model config's settings, what this
    server always does when a VAD model is configured); a VadOverride for server_vad."""
    nested = {k[len("chunking_strategy["):-1]: v[-1] for k, v in fields.items()
              if k.startswith("chunking_strategy[") and k.endswith("]")}
    plain = _one_of(fields, "chunking_strategy")
    if plain and plain.startswith("{"):  # some clients send the object as JSON text
        try:
            loaded = json.loads(plain)
        except ValueError:
            raise bad_request("chunking_strategy is not valid JSON", "chunking_strategy") from None
        if not isinstance(loaded, dict):
            raise bad_request("chunking_strategy must be \"auto\" or an object", "chunking_strategy")
        nested, plain = {str(k): v for k, v in loaded.items()}, None
    if plain:
        if plain != "auto":
            raise bad_request(f"chunking_strategy {plain!r} is not supported; use \"auto\" or "
                              "{\"type\": \"server_vad\", ...}", "chunking_strategy")
        return None
    if not nested:
        return None
    if nested.get("type") != "server_vad":
        raise bad_request("chunking_strategy.type must be \"server_vad\"", "chunking_strategy")
    unknown = set(nested) - {"type", "silence_duration_ms", "prefix_padding_ms", "threshold"}
    if unknown:
        raise bad_request(f"chunking_strategy has unknown keys {sorted(unknown)}", "chunking_strategy")
    if "threshold" in nested:
        raise bad_request("chunking_strategy.threshold is not supported: FSMN-VAD's speech/noise decision is "
                          "fixed by the model; omit it (silence_duration_ms and prefix_padding_ms are honoured)",
                          "chunking_strategy", "unsupported_parameter")
    silence = nested.get("silence_duration_ms")
    return VadOverride(
        silence_ms=_int_in(silence, "chunking_strategy.silence_duration_ms", VAD_SILENCE_MS)
        if silence is not None else None,
        prefix_padding_ms=_int_in(nested.get("prefix_padding_ms", 0), "chunking_strategy.prefix_padding_ms",
                                  VAD_PREFIX_PADDING_MS),
    )


def parse_format_request(fields: dict[str, list[str]]) -> FormatRequest:
    """Check every parameter that does not depend on the serving model. Raises APIError."""
    unknown = sorted({field_base(k) for k in fields} - KNOWN_FIELDS)
    if unknown:
        raise bad_request(f"unrecognized request argument(s) supplied: {', '.join(unknown)}; this server takes "
                          f"{', '.join(sorted(KNOWN_FIELDS))}", unknown[0], "unknown_parameter")
    model = _one_of(fields, "model")
    if not model:
        raise bad_request("missing required parameter: 'model'", "model")
    fmt = _one_of(fields, "response_format") or "json"
    if fmt not in RESPONSE_FORMATS:
        raise bad_request(f"response_format {fmt!r} is not supported; use one of {', '.join(RESPONSE_FORMATS)}",
                          "response_format")
    stream = parse_bool(_one_of(fields, "stream") or "", "stream")
    if stream and fmt not in STREAM_FORMATS:
        raise bad_request(f"stream=true sends text deltas; use response_format {' or '.join(STREAM_FORMATS)} "
                          f"with it, not {fmt}", "stream")
    include = _list_of(fields, "include")
    for item in include:
        if item == "logprobs":
            raise bad_request("include[]=logprobs is not supported: the FunASR models this server runs return "
                              "no token log-probabilities", "include", "unsupported_parameter")
        raise bad_request(f"include[] value {item!r} is unknown; OpenAI defines only 'logprobs'", "include")
    granularities = _list_of(fields, "timestamp_granularities")
    bad = [g for g in granularities if g not in GRANULARITIES]
    if bad:
        raise bad_request(f"timestamp_granularities[] value {bad[0]!r} is unknown; use word and/or segment",
                          "timestamp_granularities")
    if granularities and fmt != "verbose_json":
        raise bad_request("timestamp_granularities[] needs response_format=verbose_json (as in OpenAI's API)",
                          "timestamp_granularities")
    return FormatRequest(
        model=model, response_format=fmt, stream=stream,
        temperature=parse_temperature(_one_of(fields, "temperature")),
        language=_one_of(fields, "language") or None, prompt=_one_of(fields, "prompt") or None,
        granularities=frozenset(granularities), vad=parse_chunking(fields),
    )


def model_not_found(requested: str, traits: ModelTraits) -> APIError:
    names = traits.served_names()
    listed = f"{names[0]!r}" + (f" (aliases: {', '.join(repr(a) for a in names[1:])})" if names[1:] else "")
    return APIError(404, f"the model {requested!r} does not exist on this server; it serves {listed}. "
                    "Send one of these as 'model' (GET /v1/models lists them)",
                    param="model", code="model_not_found")


def hotword_list(prompt: str) -> str:
    """OpenAI's free-text prompt -> FunASR's space-separated hotwords. FunASR reads a hotword
    string that names an existing file or URL as a list to load, so anything path- or URL-like
    is refused: a request must never make the server open a file."""
    words = [w for w in prompt.replace(",", " ").replace("\n", " ").split() if w]
    if not words:
        raise bad_request("prompt holds no words", "prompt")
    for word in words:
        if "/" in word or "\\" in word or word.startswith("."):
            raise bad_request(f"prompt term {word!r} looks like a path; hotwords are plain words", "prompt")
    return " ".join(words)


def recognition_options(req: FormatRequest, traits: ModelTraits) -> RecognitionOptions:
    """Check the model-dependent parameters against the serving model. Raises APIError."""
    if req.model not in traits.served_names():
        raise model_not_found(req.model, traits)
    kwargs: dict[str, Any] = {}
    if req.language is not None:
        if traits.languages:
            if req.language not in traits.languages:
                raise bad_request(f"language {req.language!r} is not one {traits.family} takes; use one of "
                                  f"{', '.join(traits.languages)}", "language", "unsupported_language")
            kwargs["language"] = req.language
        elif req.language != traits.fixed_language:
            said = (f"it transcribes {traits.fixed_language!r} only (options.language in the model config)"
                    if traits.fixed_language else
                    "its language is not declared (set options.language in the model config to accept it)")
            raise bad_request(f"language {req.language!r}: model {traits.name!r} ({traits.family}) takes no language "
                              f"parameter and {said}; omit language or send the model's own",
                              "language", "unsupported_language")
    if req.prompt is not None:
        if not traits.hotwords:
            raise bad_request(f"prompt is not supported by model {traits.name!r} ({traits.family}): this server "
                              "passes prompt to FunASR as hotwords, which only SeacoParaformer and "
                              "ContextualParaformer models take; omit prompt", "prompt", "unsupported_parameter")
        kwargs["hotword"] = hotword_list(req.prompt)
    if "word" in req.granularities and not traits.word_timestamps:
        raise bad_request(f"timestamp_granularities[]=word is not supported by model {traits.name!r} "
                          f"({traits.family}): it has no token timestamps; ask for segment only",
                          "timestamp_granularities", "unsupported_parameter")
    if req.vad is not None and not traits.has_vad:
        raise bad_request("chunking_strategy server_vad needs a VAD model, and this server has none configured "
                          "(vad_path in the model config); omit chunking_strategy or use \"auto\"",
                          "chunking_strategy", "unsupported_parameter")
    return RecognitionOptions(generate_kwargs=kwargs, word_timestamps="word" in req.granularities, vad=req.vad)


def check_options(options: dict[str, Any], source: str) -> str | None:
    """The problem with the model config's `aliases` / `language` options, or None."""
    aliases = options.get("aliases", [])
    if not isinstance(aliases, list) or not all(isinstance(a, str) and a.strip() for a in aliases):
        return f"{source}: options.aliases must be a list of non-empty strings (other model names clients may send)"
    language = options.get("language")
    if language is not None and (not isinstance(language, str) or not language.strip()):
        return f"{source}: options.language must be a language code such as zh or en"
    return None
