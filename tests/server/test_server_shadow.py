"""Shadow copies: sampling, the queue bound, a slow canary never slowing the user, and the
canary's CER vs stable from the real transcripts of two different tiny models (v1, v2)."""
from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from asr_sandbox import ConfigMapDir, ServerProcess, model_config
from asr_sandbox.assets import build_version_dir, paraformer_cmvn, write_paraformer
from inference_server.shadow import (
    ShadowConfigError, ShadowCopier, ShadowMetrics, ShadowSetting, is_sampled, parse_shadow, score_copy,
)
from tests.support.forms import form

REPO = Path(__file__).resolve().parents[2]
SHARED_MODELS = REPO / ".assets" / "models"
POD = {"namespace": "speech", "rollout": "meeting", "track": "stable", "pod": "s0"}


@pytest.mark.parametrize("percent", [1, 7, 20, 50, 100])
def test_exactly_percent_of_every_hundred_requests_are_copied(percent: int) -> None:
    assert sum(is_sampled(i, percent) for i in range(300)) == 3 * percent


@pytest.mark.parametrize("data,problem", [("x", "must be a mapping"), ({"url": "canary", "percent": 5}, "http"),
                                          ({"url": "http://c:8000", "percent": 0}, "1..100"),
                                          ({"url": "http://c:8000", "percent": 5, "x": 1}, "unknown keys")])
def test_a_malformed_setting_says_what_to_write(data: Any, problem: str) -> None:
    with pytest.raises(ShadowConfigError, match=problem):
        parse_shadow(data)


def test_the_score_uses_the_golden_normalisation() -> None:
    assert score_copy("今天，天气好！", "今天天气 好") == (0, 5)
    assert score_copy("abc", "abd") == (1, 3)


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, {**POD, **labels}) or 0.0


async def test_a_full_queue_drops_copies_and_counts_them(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    copier = ShadowCopier(ShadowMetrics(registry, POD), tmp_path / "model.yaml", max_queue=2)
    copier.setting = ShadowSetting(url="http://127.0.0.1:9", percent=100)  # nothing sends: the queue fills
    for _ in range(5):
        copier.offer(b"RIFF", "a.wav", "text", "v1")
    assert copier.queue.qsize() == 2
    assert _value(registry, "asr_shadow_copies_total", version="v1", result="dropped") == 3


def test_the_newer_revision_decides_the_setting_whichever_source_brings_it(tmp_path: Path) -> None:
    """The operator's push turns copies on at once; a late kubelet copy of an older config (file)
    never turns them back on after a newer push turned them off."""
    copier = ShadowCopier(ShadowMetrics(CollectorRegistry(), POD), tmp_path / "model.yaml")
    on = "name: m\nversion: v1\npath: m/v1\nrevision: 2\nshadow: {url: 'http://c.ns.svc:8000', percent: 20}\n"
    off = "name: m\nversion: v1\npath: m/v1\nrevision: 3\n"
    assert copier.take_text(on, "pushed") and copier.setting == ShadowSetting("http://c.ns.svc:8000", 20)
    assert copier.take_text(off, "pushed") and copier.setting is None
    (tmp_path / "model.yaml").write_text(on)  # the kubelet's late copy of revision 2
    copier.refresh()
    assert copier.setting is None and copier.revision == 3
    (tmp_path / "model.yaml").write_text(off)  # its copy of revision 3: already taken, still off
    copier.refresh()
    assert copier.setting is None
    assert copier.take_text("name: m\nversion: v1\npath: m/v1\nshadow: {url: 'http://x:1', percent: 5}\n", "file")


# --- real server processes ------------------------------------------------------------------

@pytest.fixture(scope="module")
def models_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private models root: the shared v1 and VAD, and v2 (seed 2: other weights, other
    transcripts) built here so the shared assets are never written."""
    if not (SHARED_MODELS / "paraformer-tiny" / "v1").is_dir():
        pytest.skip("run `make assets` first (.assets/models/paraformer-tiny/v1)")
    root = tmp_path_factory.mktemp("models")
    (root / "paraformer-tiny").mkdir()
    # Copies, not links: the server refuses a path that resolves outside its models root.
    shutil.copytree(SHARED_MODELS / "paraformer-tiny" / "v1", root / "paraformer-tiny" / "v1")
    shutil.copytree(SHARED_MODELS / "fsmn-vad", root / "fsmn-vad")
    shared_v2 = SHARED_MODELS / "paraformer-tiny" / "v2"
    if shared_v2.is_dir():
        shutil.copytree(shared_v2, root / "paraformer-tiny" / "v2")
    else:
        cmvn = paraformer_cmvn(SHARED_MODELS / "fsmn-vad" / "v1")
        build_version_dir(root / "paraformer-tiny" / "v2",
                          lambda target: write_paraformer(target, seed=2, cmvn=cmvn))
    return root


def _start(tmp: Path, models_root: Path, version: str, track: str, **extra: Any) -> tuple[ServerProcess, ConfigMapDir]:
    cm = ConfigMapDir(tmp / f"{track}-configmap")
    cm.swap(model_config(version, **extra))
    server = ServerProcess(cm.path, models_root, tmp / f"{track}.log",
                           env={"ASR_NAMESPACE": "speech", "ASR_ROLLOUT": "meeting", "ASR_TRACK": track,
                                "POD_NAME": f"meeting-{track}-0"})
    server.start()
    return server, cm


async def _metric(session: aiohttp.ClientSession, url: str, name: str, **labels: str) -> float:
    text = await (await session.get(f"{url}/metrics")).text()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def _wait_for(check: Any, what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s  # a bound on waiting, not an assertion on time
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(0.1)


async def _transcribe(session: aiohttp.ClientSession, url: str, audio: bytes) -> dict[str, Any]:
    async with session.post(f"{url}/v1/audio/transcriptions", data=form(audio, model="paraformer-tiny")) as response:
        assert response.status == 200, await response.text()
        return dict(await response.json())


async def test_copies_reach_the_canary_after_the_answer_and_are_scored_against_stable(
        tmp_path: Path, models_root: Path) -> None:
    audio_dir = REPO / ".assets" / "audio"
    clips = [(audio_dir / name).read_bytes() for name in ("short.wav", "speech_gap.wav", "ten_seconds.wav")]
    canary, _ = _start(tmp_path, models_root, "v2", "canary")
    stable, stable_cm = _start(tmp_path, models_root, "v1", "stable")
    # A slow canary stand-in: it holds every copy until released.
    release, arrived = asyncio.Event(), asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        await request.read()
        arrived.set()
        await release.wait()
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/v1/shadow", slow)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    slow_url = "http://127.0.0.1:%d" % runner.addresses[0][1]
    try:
        async with aiohttp.ClientSession() as session:
            # 1. a slow canary: the user's answers keep coming while it holds the copies
            stable_cm.swap(model_config("v1", shadow={"url": slow_url, "percent": 100}))

            async def copy_arrived() -> bool:
                await _transcribe(session, stable.url, clips[0])
                return arrived.is_set()
            await _wait_for(copy_arrived, "a copy at the slow canary")
            for _ in range(3):  # answered while the canary still holds a copy
                assert (await _transcribe(session, stable.url, clips[0]))["text"] is not None
            assert not release.is_set()
            assert await _metric(session, stable.url, "asr_shadow_copies_total", result="sent") == 0
            release.set()

            # 2. the real canary (v2): CER vs stable's (v1) transcripts
            stable_cm.swap(model_config("v1", shadow={"url": canary.url, "percent": 100}))

            async def copier_moved() -> bool:
                await _transcribe(session, stable.url, clips[0])
                return await _metric(session, canary.url, "asr_shadow_requests_total", code="200") > 0
            await _wait_for(copier_moved, "copies at the real canary")
            # Copies of those probing requests may still be in flight: let them land first.
            settled = [-1.0]

            async def quiet() -> bool:
                await asyncio.sleep(1.0)
                now = await _metric(session, canary.url, "asr_shadow_requests_total", code="200")
                done, settled[0] = now == settled[0], now
                return done
            await _wait_for(quiet, "the probing copies scored")
            base = await _metric(session, canary.url, "asr_shadow_requests_total", code="200")
            edits0 = await _metric(session, canary.url, "asr_shadow_char_edits_total")
            chars0 = await _metric(session, canary.url, "asr_shadow_reference_chars_total")
            expected_edits, expected_chars = 0.0, 0.0
            for clip in clips:
                reference = (await _transcribe(session, stable.url, clip))["text"]
                hypothesis = (await _transcribe(session, canary.url, clip))["text"]
                edits, length = score_copy(reference, hypothesis)
                expected_edits, expected_chars = expected_edits + edits, expected_chars + length

            async def all_scored() -> bool:
                return await _metric(session, canary.url, "asr_shadow_requests_total", code="200") >= base + 3
            await _wait_for(all_scored, "the three copies scored")
            got_edits = await _metric(session, canary.url, "asr_shadow_char_edits_total") - edits0
            got_chars = await _metric(session, canary.url, "asr_shadow_reference_chars_total") - chars0
            assert (got_edits, got_chars) == (expected_edits, expected_chars)
            assert expected_edits > 0, "v1 and v2 are different models: their transcripts differ"
            # Copies are not user traffic on the canary: its own user requests are the 3 above only.
            assert await _metric(session, canary.url, "asr_requests_total", endpoint="/v1/audio/transcriptions") == 3

            # 3. the setting removed: no more copies, and the model was never reloaded for it
            stable_cm.swap(model_config("v1"))
            await asyncio.sleep(1.5)  # the copier's poll (0.5 s) picks it up; nothing to wait on
            sent = await _metric(session, stable.url, "asr_shadow_copies_total")
            await _transcribe(session, stable.url, clips[0])
            await asyncio.sleep(1.0)
            assert await _metric(session, stable.url, "asr_shadow_copies_total") == sent
            assert await _metric(session, stable.url, "asr_model_reloads_total", result="success") == 1
    finally:
        await runner.cleanup()
        stable.stop()
        canary.stop()


async def test_the_push_carries_the_setting_and_copies_reach_a_service_name_through_the_pods_proxy(
        tmp_path: Path, models_root: Path) -> None:
    """The operator's push (`PUT /admin/config`) turns copies on without waiting for the file; the
    copies honour the pod's HTTP_PROXY (here the sandbox's Service proxy, resolving the canary
    Service's name); a newer push turns them off, and a late file copy of the older revision
    does not turn them back on."""
    import yaml

    from asr_sandbox.node_agent import Endpoint
    from asr_sandbox.service_proxy import ServiceProxy

    copies: list[str] = []

    async def canary(request: web.Request) -> web.Response:
        copies.append((await request.post()).get("reference_version", ""))  # type: ignore[arg-type]
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/v1/shadow", canary)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    endpoint = Endpoint("meeting-canary-0", "canary", "http://127.0.0.1:%d" % runner.addresses[0][1])
    proxy = ServiceProxy("speech", "meeting", lambda track: [endpoint] if track == "canary" else [])
    await asyncio.to_thread(proxy.start)
    token = "t" * 32
    cm = ConfigMapDir(tmp_path / "stable-configmap")
    cm.swap(model_config("v1", revision=1))
    server = ServerProcess(cm.path, models_root, tmp_path / "stable.log", extra_args=["--watch-interval", "0.2"],
                           env={"ASR_NAMESPACE": "speech", "ASR_ROLLOUT": "meeting", "ASR_TRACK": "stable",
                                "POD_NAME": "meeting-stable-0", "ASR_ADMIN_TOKEN": token,
                                "HTTP_PROXY": proxy.url, "http_proxy": proxy.url,
                                "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"})
    await asyncio.to_thread(server.start)
    on = model_config("v1", revision=2, shadow={"url": "http://meeting-canary.speech.svc:8000", "percent": 100})
    off = model_config("v1", revision=3)
    clip = (REPO / ".assets" / "audio" / "short.wav").read_bytes()
    try:
        async with aiohttp.ClientSession() as session:
            async def push(config: dict[str, Any]) -> None:
                async with session.put(f"{server.url}/admin/config?wait=30", data=yaml.safe_dump(config),
                                       headers={"Authorization": f"Bearer {token}"}) as response:
                    assert response.status == 200, await response.text()

            await push(on)  # the file still says revision 1, no shadow

            async def copied() -> bool:
                await _transcribe(session, server.url, clip)
                return bool(copies)
            await _wait_for(copied, "a copy at the canary Service, through the proxy")
            assert set(copies) == {"v1"} and proxy.forwarded.get("canary", 0) >= 1
            await push(off)
            cm.swap(on)  # the kubelet's late copy of revision 2
            await asyncio.sleep(1.0)  # several of the copier's polls (0.5 s); nothing to wait on
            sent = await _metric(session, server.url, "asr_shadow_copies_total")
            for _ in range(3):
                await _transcribe(session, server.url, clip)
            await asyncio.sleep(1.0)
            assert await _metric(session, server.url, "asr_shadow_copies_total") == sent
            assert await _metric(session, server.url, "asr_model_reloads_total", result="success") == 1
    finally:
        await asyncio.to_thread(server.stop)
        await asyncio.to_thread(proxy.stop)
        await runner.cleanup()
