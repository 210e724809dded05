"""Hot reload under traffic, refused versions, start-up without a good model, queue limits and
SIGTERM drain, against real server processes and real model directories."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from asr_sandbox import ConfigMapDir, ServerProcess, model_config
from tests.support.forms import form


@pytest.fixture(scope="module")
def reload_server(tmp_path_factory: pytest.TempPathFactory, models_root: Path, server_starter):
    tmp = tmp_path_factory.mktemp("reload")
    server, cm = server_starter(tmp, models_root, model_config("v1"), extra_args=["--watch-interval", "0.1"])
    yield server, cm
    server.stop()




def reloads(server: ServerProcess) -> dict[tuple[str, str], float]:
    import urllib.request
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(server.url + "/metrics", timeout=10).read().decode()
    out: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "asr_model_reloads_total":  # summed over the tried versions
                key = (s.labels["result"], s.labels["reason"])
                out[key] = out.get(key, 0.0) + s.value
    return out


def wait_for_reload_error(server: ServerProcess, version: str | None, reason: str, timeout_s: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        _, body = server.get_json("/v1/models")
        err = body.get("last_reload_error")
        if err and err["version"] == version and err["reason"] == reason and body["last_reload"] == err:
            return body
        time.sleep(0.05)
    raise AssertionError(f"no {reason} failure for {version}: {body}")


async def test_concurrent_clients_during_repeated_reloads_every_request_200_on_one_version(
        reload_server: tuple[ServerProcess, ConfigMapDir], audio) -> None:
    server, cm = reload_server
    clip = audio("short.wav")
    before = reloads(server).get(("success", "ok"), 0)
    stop = asyncio.Event()
    results: list[tuple[int, str | None, str | None]] = []

    async def client(session: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            async with session.post(server.url + "/v1/audio/transcriptions",
                                    data=form(clip, model="paraformer-tiny", response_format="verbose_json")) as r:
                body = await r.json()
                results.append((r.status, r.headers.get("X-Model-Version"), body.get("model_version")))

    swaps = 10
    async with aiohttp.ClientSession() as session:
        clients = [asyncio.create_task(client(session)) for _ in range(8)]
        for i in range(swaps):
            version = "v2" if i % 2 == 0 else "v1"
            # alternate the two ways a config changes: ConfigMap symlink swap and a plain edit
            (cm.swap if i % 4 < 2 else cm.edit_in_place)(model_config(version))
            await asyncio.to_thread(server.wait_serving, version)
            # Let traffic run on the new version: a few answers from it, however busy the machine.
            answered = len(results)
            for _ in range(600):
                if sum(1 for _, header, _ in results[answered:] if header == version) >= 3:
                    break
                await asyncio.sleep(0.05)
        stop.set()
        await asyncio.gather(*clients)

    statuses = Counter(status for status, _, _ in results)
    assert statuses == Counter({200: len(results)}), statuses
    assert all(header == body for _, header, body in results), "a response mixed two versions"
    seen = Counter(header for _, header, _ in results)
    assert set(seen) == {"v1", "v2"} and len(results) >= 3 * swaps, seen
    assert reloads(server)[("success", "ok")] - before == swaps
    _, models = server.get_json("/v1/models")
    assert models["serving"]["version"] == "v1" and models["versions"] == {"v1": "READY"}
    # every replaced version was released once its last request finished
    released = re.findall(r"released version (\S+)", server.log_path.read_text())
    for _ in range(100):
        if len(released) >= swaps:
            break
        await asyncio.sleep(0.05)
        released = re.findall(r"released version (\S+)", server.log_path.read_text())
    assert len(released) >= swaps


async def test_corrupted_escaping_or_mismatched_versions_are_refused_while_the_old_serves(
        reload_server: tuple[ServerProcess, ConfigMapDir], audio, models_root: Path) -> None:
    server, cm = reload_server
    cm.swap(model_config("v1"))
    await asyncio.to_thread(server.wait_serving, "v1")
    clip = audio("short.wav")
    v2_digest = __import__("hashlib").sha256((models_root / "paraformer-tiny/v2/MANIFEST.sha256").read_bytes()).hexdigest()
    bad_configs = [
        (model_config("corrupt"), "corrupt", "integrity", "model.pt"),
        (model_config("v2", sha256="0" * 64), "v2", "integrity", "expects"),
        (model_config("evil", path="../../../etc"), "evil", "invalid_config", "outside the models root"),
        (model_config("ghost"), "ghost", "load", "does not exist"),
        ({"name": "paraformer-tiny", "path": "paraformer-tiny/v2"}, None, "invalid_config", "'version' is required"),
    ]
    async with aiohttp.ClientSession() as session:
        for config, version, reason, words in bad_configs:
            before = reloads(server).get(("failure", reason), 0)
            cm.swap(config)
            body = await asyncio.to_thread(wait_for_reload_error, server, version, reason)
            assert words in body["last_reload_error"]["message"]
            assert body["serving"]["version"] == "v1"
            assert reloads(server)[("failure", reason)] == before + 1
            if version not in (None, "v2"):
                assert body["versions"][version] == "FAILED"
            assert f"reload of version {version} failed ({reason})" in server.log_path.read_text()
            assert server.get_json("/readyz")[0] == 200
            async with session.post(server.url + "/v1/audio/transcriptions", data=form(clip, model="paraformer-tiny")) as r:
                assert r.status == 200 and r.headers["X-Model-Version"] == "v1"

        # the right digest is accepted; v2-same has v1's bytes under another version name
        cm.swap(model_config("v2", sha256=v2_digest))
        await asyncio.to_thread(server.wait_serving, "v2")
        cm.swap(model_config("v2-same"))
        await asyncio.to_thread(server.wait_serving, "v2-same")
        _, body = server.get_json("/v1/models")
        v1_digest = __import__("hashlib").sha256((models_root / "paraformer-tiny/v1/MANIFEST.sha256").read_bytes()).hexdigest()
        assert body["serving"]["sha256"] == v1_digest
        async with session.post(server.url + "/v1/audio/transcriptions", data=form(clip, model="paraformer-tiny")) as r:
            assert r.status == 200 and r.headers["X-Model-Version"] == "v2-same"


@pytest.fixture(scope="module")
def small_queue_server(tmp_path_factory: pytest.TempPathFactory, models_root: Path):
    """Starts on the corrupt version (so it is alive but not ready), queue of 1."""
    tmp = tmp_path_factory.mktemp("queue")
    cm = ConfigMapDir(tmp / "configmap")
    cm.swap(model_config("corrupt"))
    server = ServerProcess(cm.path, models_root, tmp / "server.log",
                           extra_args=["--max-queue", "1", "--watch-interval", "0.1"])
    server.start(wait_ready=False)
    yield server, cm
    server.stop()


async def test_startup_with_a_refused_version_is_live_but_not_ready_until_fixed(small_queue_server) -> None:
    server, cm = small_queue_server
    await asyncio.to_thread(wait_for_reload_error, server, "corrupt", "integrity")
    assert server.get_json("/healthz")[0] == 200
    status, body = server.get_json("/readyz")
    assert status == 503 and body["versions"] == {"corrupt": "FAILED"}
    cm.swap(model_config("v1"))
    await asyncio.to_thread(server.wait_ready, 60)
    assert server.get_json("/readyz")[0] == 200


async def test_full_queue_answers_503_with_retry_after_then_sigterm_drains(small_queue_server, audio) -> None:
    server, _ = small_queue_server
    await asyncio.to_thread(server.wait_ready, 60)
    clip = audio("long_40s.wav")  # ~0.5 s of work each: a burst of 8 overfills a queue of 1
    async with aiohttp.ClientSession() as session:
        async def one() -> tuple[int, str | None]:
            async with session.post(server.url + "/v1/audio/transcriptions", data=form(clip, model="paraformer-tiny")) as r:
                await r.read()
                return r.status, r.headers.get("Retry-After")

        burst = await asyncio.gather(*[one() for _ in range(8)])
        statuses = Counter(s for s, _ in burst)
        assert set(statuses) <= {200, 503} and statuses[200] >= 1 and statuses[503] >= 1, statuses
        assert all(retry == "1" for s, retry in burst if s == 503)

        # SIGTERM while a request runs: it still completes with 200, then the process exits 0
        running = asyncio.create_task(one())
        await asyncio.sleep(0.15)
        assert server.proc is not None
        server.proc.send_signal(__import__("signal").SIGTERM)
        status, _ = await running
        assert status == 200
        code = await asyncio.to_thread(server.proc.wait, 30)
        assert code == 0
        assert "draining 1 request(s)" in server.log_path.read_text()
