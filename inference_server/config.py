"""The model config file (a ConfigMap key in a cluster) and the server options it carries."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from inference_server.device import check_device_name
from inference_server.golden import GoldenSetError
from inference_server.golden import check_options as check_golden_options
from inference_server.openai_params import check_options as check_openai_options

_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")

# Server-side options (model config `options:`) with their defaults; any other key is passed to
# FunASR's AutoModel constructor unchanged.
SERVER_OPTIONS: dict[str, Any] = {
    "max_segment_ms": 30000,          # longer VAD segments are cut into pieces of at most this
    "vad_max_end_silence_ms": 500,    # FSMN-VAD end-of-speech silence (1.4.16 needs it explicit)
    "device": None,                   # auto | cpu | cuda | cuda:N; the server's --device / ASR_DEVICE wins
                                      # when set (inference_server.device.wanted_device says why)
    "ncpu": 2,                        # torch threads (process-wide, set by FunASR)
    "golden_cer_max": None,           # golden-set CER ceiling: a version over it never turns ready
    "golden_interval_s": 0,           # re-run the serving version's golden set every N s (0: at load only)
    "aliases": [],                    # other names the OpenAI API answers to (inference_server.openai_params)
    "language": None,                 # the language a single-language model transcribes (request `language`)
}


class ConfigError(ValueError):
    """The model config is unreadable or invalid; the message says which field and why."""


@dataclass(frozen=True)
class ModelConfig:
    name: str
    version: str
    path: str
    sha256: str | None = None
    vad_path: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    # Monotonic revision the operator writes on every change (docs/contracts.md): decides which
    # of the pushed config and the file is newer. Not part of what is served: two configs that
    # differ only in it are the same model, so a new revision of the same model reloads nothing.
    revision: int | None = field(default=None, compare=False)

    def server_option(self, key: str) -> Any:
        return self.options.get(key, SERVER_OPTIONS[key])

    def automodel_options(self) -> dict[str, Any]:
        return {k: v for k, v in self.options.items() if k not in SERVER_OPTIONS}

    def model_dir(self, models_root: Path) -> Path:
        return resolve_under(models_root, self.path, "path")

    def vad_dir(self, models_root: Path) -> Path | None:
        return resolve_under(models_root, self.vad_path, "vad_path") if self.vad_path else None


def resolve_under(root: Path, relative: str, field_name: str) -> Path:
    """`root/relative`, refused when it resolves (symlinks included) outside `root`."""
    if Path(relative).is_absolute():
        raise ConfigError(f"{field_name} {relative!r} must be relative to the models root, not absolute")
    root_real = Path(root).resolve()
    target = (root_real / relative).resolve()
    if target != root_real and root_real not in target.parents:
        raise ConfigError(f"{field_name} {relative!r} resolves outside the models root {root}; refused")
    return target


def _require_str(data: dict[str, Any], key: str, source: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{source}: '{key}' is required and must be a non-empty string")
    return value.strip()


def parse_model_config(text: str, source: str = "model config") -> ModelConfig:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source} must be a YAML mapping with name, version and path")
    name = _require_str(data, "name", source)
    version = _require_str(data, "version", source)
    path = _require_str(data, "path", source)
    sha256 = data.get("sha256")
    if sha256 is not None and sha256 != "":
        if not isinstance(sha256, str) or not _HEX64.match(sha256):
            raise ConfigError(f"{source}: 'sha256' must be 64 hex characters (the MANIFEST.sha256 digest)")
        sha256 = sha256.lower()
    else:
        sha256 = None
    vad_path = data.get("vad_path")
    if vad_path is not None and (not isinstance(vad_path, str) or not vad_path.strip()):
        raise ConfigError(f"{source}: 'vad_path' must be a non-empty string when given")
    options = data.get("options") or {}
    if not isinstance(options, dict):
        raise ConfigError(f"{source}: 'options' must be a mapping")
    max_segment = options.get("max_segment_ms", SERVER_OPTIONS["max_segment_ms"])
    if not isinstance(max_segment, int) or max_segment < 1000:
        raise ConfigError(f"{source}: options.max_segment_ms must be an integer >= 1000")
    device = options.get("device")
    if device is not None:
        problem = check_device_name(str(device))
        if problem is not None:
            raise ConfigError(f"{source}: options.{problem}")
    problem = check_openai_options(options, source)
    if problem is not None:
        raise ConfigError(problem)
    try:
        check_golden_options(options, source)
    except GoldenSetError as exc:
        raise ConfigError(str(exc)) from None
    revision = data.get("revision")
    if revision is not None and (isinstance(revision, bool) or not isinstance(revision, int) or revision < 0):
        raise ConfigError(f"{source}: 'revision' must be a non-negative integer (the operator's write counter)")
    # `shadow` (a shadow stage's copy setting) is read by inference_server.shadow, not here: a
    # change of it alone must not reload the model.
    unknown = set(data) - {"name", "version", "path", "sha256", "vad_path", "options", "revision", "shadow"}
    if unknown:
        raise ConfigError(f"{source}: unknown keys {sorted(unknown)}; allowed: name, version, path, "
                          "sha256, vad_path, options, revision, shadow")
    return ModelConfig(name=name, version=version, path=path, sha256=sha256,
                       vad_path=vad_path.strip() if vad_path else None, options=dict(options),
                       revision=revision)


def read_model_config(path: Path) -> tuple[ModelConfig, bytes]:
    """Read and parse the file; returns the config and the raw bytes (the change detector's key)."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the model config {path}: {exc.strerror}") from None
    return parse_model_config(raw.decode("utf-8", errors="replace"), str(path)), raw
