"""The demo's bad model versions are real FunASR model directories that fail the way their
scenario needs, through the real server (no mock): `broken` becomes ready and then answers
5 s+ speech with 500s; `slow` answers correctly but much slower than v1."""
from __future__ import annotations

import json
import uuid
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from asr_sandbox import ConfigMapDir, ServerProcess, assets
from asr_sandbox.demo_assets import broken_tokens, build_demo_models
from inference_server.manifest import verify_dir

REPO_ROOT = Path(__file__).resolve().parents[2]
ASSETS = REPO_ROOT / ".assets"


@pytest.fixture(scope="module")
def models() -> dict[str, Path]:
    return build_demo_models(ASSETS)


def _transcribe(url: str, wav: Path) -> tuple[int, str | None]:
    boundary = uuid.uuid4().hex
    body = ((f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n"
            f"Content-Type: audio/wav\r\n\r\n").encode() + wav.read_bytes()
            + f"\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nparaformer-tiny"
              f"\r\n--{boundary}--\r\n".encode())
    request = urllib.request.Request(url + "/v1/audio/transcriptions", data=body,
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.headers.get("X-Model-Version")
    except urllib.error.HTTPError as error:
        return error.code, None


@pytest.fixture(scope="module")
def broken_server(models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("broken")
    config = ConfigMapDir(tmp / "cm")
    config.swap({"name": "paraformer-tiny", "version": "broken", "path": "paraformer-tiny/broken"})
    with ServerProcess(config.path, ASSETS / "models", tmp / "server.log") as server:
        yield server


def test_bad_versions_are_verified_model_directories(models: dict[str, Path]) -> None:
    for name in ("paraformer-tiny/broken", "paraformer-tiny/slow", "paraformer-tiny/sluggish"):
        assert verify_dir(models[name]).ok
    tokens = json.loads((models["paraformer-tiny/broken"] / "tokens.json").read_text())
    assert tokens == broken_tokens() and len(tokens) == len(assets.PARAFORMER_TOKENS)
    assert any(isinstance(t, int) for t in tokens)


def test_broken_version_is_ready_then_fails_real_speech(broken_server: ServerProcess) -> None:
    status, _ = broken_server.get_json("/readyz")
    assert status == 200  # it passed verification and warm-up: only traffic shows the bug
    assert _transcribe(broken_server.url, ASSETS / "audio" / "speech_gap.wav")[0] == 500
    assert _transcribe(broken_server.url, ASSETS / "audio" / "ten_seconds.wav")[0] == 500
    # a clip as short as the warm-up clip decodes no token, so it is answered
    assert _transcribe(broken_server.url, ASSETS / "audio" / "short.wav") == (200, "broken")
