"""Error responses name the version that was in use, so failures can be attributed to it."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from asr_sandbox import model_config
from tests.support.forms import form


@pytest.fixture(scope="module")
def timeout_server(tmp_path_factory: pytest.TempPathFactory, models_root: Path, server_starter):
    """A real server whose request timeout (1 ms) is shorter than any transcription: every
    transcription becomes a genuine 504 while v1 is leased, no fault injected into the code."""
    server, _ = server_starter(tmp_path_factory.mktemp("timeouts"), models_root, model_config("v1", vad=False),
                               extra_args=["--request-timeout", "0.001"])
    yield server
    server.stop()




async def test_5xx_with_a_model_in_use_carries_the_version_headers(timeout_server, audio) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.post(timeout_server.url + "/v1/audio/transcriptions", data=form(audio("long_40s.wav"), model="paraformer-tiny")) as r:
            body = await r.json()
            assert r.status == 504, body
            assert body["error"]["type"] == "timeout"
            assert r.headers["X-Model-Version"] == "v1"
            assert r.headers["X-Model-Name"] == "paraformer-tiny"
            assert len(r.headers["X-Model-Sha256"]) == 64


async def test_4xx_before_a_model_is_leased_names_no_version(timeout_server) -> None:
    """A request refused before any version was involved must not be attributed to one."""
    async with aiohttp.ClientSession() as s:
        async with s.post(timeout_server.url + "/v1/audio/transcriptions", data=form(b"not audio", model="paraformer-tiny")) as r:
            assert r.status == 400
            assert "X-Model-Version" not in r.headers
