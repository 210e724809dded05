"""Fixtures for the inference-server tests: generated assets and real server processes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from asr_sandbox import ConfigMapDir, ServerProcess, model_config
from asr_sandbox.assets import build_all

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def assets() -> Path:
    """`make assets` output; built here when missing (idempotent, about a second when present)."""
    out = REPO / ".assets"
    build_all(out)
    return out


@pytest.fixture(scope="session")
def models_root(assets: Path) -> Path:
    return assets / "models"


@pytest.fixture(scope="session")
def truth(assets: Path) -> dict[str, Any]:
    return json.loads((assets / "audio" / "truth.json").read_text())["clips"]


@pytest.fixture(scope="session")
def audio(assets: Path):
    def read(name: str) -> bytes:
        return (assets / "audio" / name).read_bytes()
    return read


def start_server(tmp: Path, models_root: Path, config: dict[str, Any], **kwargs: Any
                 ) -> tuple[ServerProcess, ConfigMapDir]:
    cm = ConfigMapDir(tmp / "configmap")
    cm.swap(config)
    server = ServerProcess(cm.path, models_root, tmp / "server.log", **kwargs)
    server.start()
    return server, cm


@pytest.fixture(scope="session")
def server_starter():
    """`start_server` for test modules that need their own server process."""
    return start_server


@pytest.fixture(scope="module")
def api_server(tmp_path_factory: pytest.TempPathFactory, models_root: Path
               ) -> Iterator[tuple[ServerProcess, ConfigMapDir]]:
    """One server for the API tests: v1 with FSMN-VAD, rollout labels from the environment,
    small upload/duration limits so the 413 paths are cheap to reach, admin reload enabled; the
    model declares its language (zh) and answers to the alias whisper-1 as well."""
    tmp = tmp_path_factory.mktemp("api")
    server, cm = start_server(
        tmp, models_root, model_config("v1", options={"max_segment_ms": 4000, "language": "zh", "aliases": ["whisper-1"]}),
        extra_args=["--max-upload-bytes", str(4 * 1024 * 1024), "--max-audio-seconds", "45"],
        env={"ASR_NAMESPACE": "speech", "ASR_ROLLOUT": "meeting-zh", "ASR_TRACK": "canary",
             "POD_NAME": "meeting-zh-canary-0", "ASR_ADMIN_TOKEN": "s3cret"},
    )
    yield server, cm
    server.stop()
