"""Clean signals on a real server process: only inference requests feed the request metrics the
operator's analysis reads, streams are measured as streams, and model-state gauges describe the
present (a version that failed and was followed by another attempt has no series left)."""

from __future__ import annotations

import asyncio
import re
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from asr_operator.analysis.queries import INFERENCE_ENDPOINT_REGEX
from asr_sandbox import ConfigMapDir, ServerProcess, model_config
from tests.support.forms import form

POD = {"namespace": "speech", "rollout": "meeting-zh", "track": "canary", "pod": "meeting-zh-canary-0"}
Samples = dict[str, list[tuple[dict[str, str], float]]]


@pytest.fixture(scope="module")
def signals_server(tmp_path_factory: pytest.TempPathFactory, models_root: Path, server_starter
                   ) -> Iterator[tuple[ServerProcess, ConfigMapDir]]:
    """v1 with VAD, rollout labels, a 1 ms request timeout (every transcription is a genuine 504
    while a version is leased: a real failed inference, no fault injected) and a fast watcher."""
    server, cm = server_starter(
        tmp_path_factory.mktemp("signals"), models_root, model_config("v1"),
        extra_args=["--request-timeout", "0.001", "--watch-interval", "0.1"],
        env={"ASR_NAMESPACE": POD["namespace"], "ASR_ROLLOUT": POD["rollout"], "ASR_TRACK": POD["track"],
             "POD_NAME": POD["pod"], "ASR_ADMIN_TOKEN": "s3cret"})
    yield server, cm
    server.stop()


def scrape(server: ServerProcess) -> Samples:
    text = urllib.request.urlopen(server.url + "/metrics", timeout=10).read().decode()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((dict(s.labels), s.value))
    return out


def builtin_error_rate(samples: Samples, version: str, endpoint_regex: str | None = INFERENCE_ENDPOINT_REGEX
                       ) -> float:
    """What the operator's error-rate query computes (over a window starting at 0): 5xx over all
    asr_requests_total of the rollout's canary version on the inference endpoints, the endpoint
    regex being the operator's own constant (PromQL matches it anchored: fullmatch). With
    `endpoint_regex=None`: the query without an endpoint selector (what the server alone must
    already get right, for dashboards and older operators)."""
    def selected(labels: dict[str, str]) -> bool:
        return (all(labels.get(k) == v for k, v in POD.items() if k != "pod") and labels.get("version") == version
                and (endpoint_regex is None
                     or re.fullmatch(endpoint_regex, labels.get("endpoint", "")) is not None))
    series = [(labels, value) for labels, value in samples.get("asr_requests_total", []) if selected(labels)]
    total = sum(value for _, value in series)
    errors = sum(value for labels, value in series if labels["code"].startswith("5"))
    return errors / total




async def test_a_thousand_model_polls_and_one_failed_transcription_is_error_rate_1(signals_server, audio) -> None:
    server, _ = signals_server
    async with aiohttp.ClientSession() as s:
        async def poll(path: str, count: int) -> None:
            for _ in range(count):
                async with s.get(server.url + path) as r:
                    await r.read()
        # 1,000 polls of /v1/models (a dashboard, a readiness script) and the other non-inference
        # paths: none of them is an inference the canary should be judged on.
        await asyncio.gather(*(poll("/v1/models", 100) for _ in range(10)))
        for path in ("/healthz", "/readyz", "/v1/golden", "/no/such/path", "/metrics"):
            await poll(path, 3)
        async with s.post(server.url + "/admin/reload") as r:
            assert r.status == 401
        async with s.post(server.url + "/v1/audio/transcriptions", data=form(audio("long_40s.wav"), model="paraformer-tiny")) as r:
            assert r.status == 504, await r.text()
            version = r.headers["X-Model-Version"]
    samples = scrape(server)
    rate = builtin_error_rate(samples, version)
    unfiltered = builtin_error_rate(samples, version, endpoint_regex=None)
    print(f"error rate from /metrics after 1,000 /v1/models polls + 1 failed transcription: "
          f"{rate} (no endpoint selector: {unfiltered})")
    assert rate == 1.0
    assert unfiltered == 1.0
    endpoints = {labels["endpoint"] for labels, _ in samples["asr_requests_total"]}
    endpoints |= {labels["endpoint"] for labels, _ in samples["asr_request_duration_seconds_count"]}
    assert endpoints == {"/v1/audio/transcriptions"}
    control = {(labels["endpoint"], labels["code"]): value for labels, value in samples["asr_control_requests_total"]}
    assert control[("/v1/models", "200")] == 1000
    assert control[("/admin/reload", "401")] == 1
    assert control[("other", "404")] == 3
    assert ("/v1/golden", "404") in control and ("/healthz", "200") in control


async def test_a_stream_is_a_stream_session_not_a_request(signals_server) -> None:
    """A stream ended by a protocol error is one session with result=error and one stream error
    (code 400); it adds nothing to the request metrics or their latency histogram."""
    server, _ = signals_server
    before = scrape(server)
    async with aiohttp.ClientSession() as s:
        async with s.ws_connect(server.url.replace("http", "ws") + "/v1/audio/stream") as ws:
            ready = await ws.receive_json()
            assert ready["type"] == "ready"
            await ws.send_str("not json")
            event = await ws.receive_json()
            assert event["type"] == "error" and event["status"] == 400
    after = await asyncio.to_thread(wait_for, server, lambda m: total(m, "asr_stream_sessions_total", result="error")
                                    > total(before, "asr_stream_sessions_total", result="error"))
    assert total(after, "asr_stream_sessions_total", result="error") - \
        total(before, "asr_stream_sessions_total", result="error") == 1
    assert total(after, "asr_stream_errors_total", code="400") - total(before, "asr_stream_errors_total", code="400") == 1
    assert not [l for l, _ in after.get("asr_requests_total", []) if l["endpoint"] == "/v1/audio/stream"]
    assert not [l for l, _ in after.get("asr_request_duration_seconds_count", []) if l["endpoint"] == "/v1/audio/stream"]
    assert not [l for l, _ in after.get("asr_control_requests_total", []) if l["endpoint"] == "/v1/audio/stream"]


def total(samples: Samples, name: str, **labels: str) -> float:
    return sum(v for l, v in samples.get(name, []) if all(l.get(k) == want for k, want in labels.items()))


def wait_for(server: ServerProcess, done, timeout_s: float = 60) -> Samples:
    deadline = time.monotonic() + timeout_s
    while True:
        samples = scrape(server)
        if done(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.05)


def states(samples: Samples) -> dict[tuple[str, str], float]:
    return {(l["version"], l["state"]): v for l, v in samples.get("asr_model_state", [])}


def test_a_failed_version_has_no_state_series_after_a_later_successful_reload(signals_server) -> None:
    server, cm = signals_server
    cm.swap(model_config("corrupt"))
    failed = wait_for(server, lambda m: states(m).get(("corrupt", "FAILED")) == 1)
    assert states(failed).get(("corrupt", "FAILED")) == 1, states(failed)  # the present: the last try failed
    assert total(failed, "asr_model_reloads_total", version="corrupt", result="failure", reason="integrity") == 1
    serving = server.get_json("/v1/models")[1]["serving"]["version"]
    assert states(failed).get((serving, "READY")) == 1  # the old version keeps serving

    cm.swap(model_config("v2"))
    done = wait_for(server, lambda m: states(m).get(("v2", "READY")) == 1)
    now = states(done)
    assert now == {("v2", "LOADING"): 0, ("v2", "READY"): 1, ("v2", "FAILED"): 0}, now
    assert total(done, "asr_model_reloads_total", version="v2", result="success", reason="ok") == 1
    # the counter keeps the history the gauge no longer shows
    assert total(done, "asr_model_reloads_total", version="corrupt", result="failure") == 1
    assert {l["version"] for l, _ in done.get("asr_model_load_seconds", [])} == {"v2"}
    assert server.get_json("/v1/models")[1]["versions"] == {"v2": "READY"}
