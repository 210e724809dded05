"""The sandbox pieces of the shadow-stage demo, fast: the Service proxy (the sandbox's stand-in
for cluster DNS + kube-proxy), the story samples' `stage`, and the shadow scenarios as data
(accepted by the operator's own spec parser)."""
from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import aiohttp.web
import pytest

from asr_operator.spec import InvalidSpec, parse_spec
from asr_sandbox import scenarios as sc
from asr_sandbox.node_agent import Endpoint
from asr_sandbox.service_proxy import ServiceName, ServiceProxy, parse_service_host, service_track
from asr_sandbox.story import Sample, current_stage


@pytest.mark.parametrize("host, expected", [
    ("asr-demo-canary.asr-demo.svc:8000", ServiceName("asr-demo-canary", "asr-demo")),
    ("asr-demo-canary.asr-demo.svc", ServiceName("asr-demo-canary", "asr-demo")),
    ("asr-demo-canary.asr-demo.svc.cluster.local:8000", ServiceName("asr-demo-canary", "asr-demo")),
    ("asr-demo-canary", None),
    ("asr-demo-canary.asr-demo", None),
    ("127.0.0.1:8000", None),
    ("example.com", None),
    ("a.b.svc.example.com", None),
])
def test_service_host_names(host: str, expected: ServiceName | None) -> None:
    assert parse_service_host(host) == expected


def test_only_the_rollouts_own_services_resolve() -> None:
    assert service_track(ServiceName("r-canary", "ns"), "ns", "r") == "canary"
    assert service_track(ServiceName("r-stable", "ns"), "ns", "r") == "stable"
    assert service_track(ServiceName("r-canary", "other"), "ns", "r") is None
    assert service_track(ServiceName("x-canary", "ns"), "ns", "r") is None


async def test_the_proxy_forwards_a_service_request_to_a_ready_pod_and_refuses_the_rest() -> None:
    seen: list[tuple[str, bytes]] = []

    async def backend(request: aiohttp.web.Request) -> aiohttp.web.Response:
        seen.append((request.path_qs, await request.read()))
        return aiohttp.web.json_response({"pod": "canary-0"})

    app = aiohttp.web.Application()
    app.router.add_post("/{tail:.*}", backend)
    runner = aiohttp.web.AppRunner(app, access_log=None)
    await runner.setup()
    await aiohttp.web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    ready: dict[str, list[Endpoint]] = {"canary": [Endpoint("r-canary-0", "canary", f"http://127.0.0.1:{port}")]}
    proxy = ServiceProxy("ns", "r", lambda track: list(ready.get(track or "", [])))
    await asyncio.to_thread(proxy.start)
    try:
        async with aiohttp.ClientSession() as session:
            async with session.post("http://r-canary.ns.svc:8000/v1/shadow?x=1", data=b"copy",
                                    proxy=proxy.url) as response:
                assert response.status == 200 and (await response.json()) == {"pod": "canary-0"}
            assert seen == [("/v1/shadow?x=1", b"copy")]
            assert proxy.forwarded == {"canary": 1}
            async with session.post("http://example.com/", data=b"x", proxy=proxy.url) as response:
                assert response.status == 502  # only the sandbox's Services: nothing leaves
            ready["canary"] = []
            async with session.post("http://r-canary.ns.svc:8000/v1/shadow", data=b"x", proxy=proxy.url) as response:
                assert response.status == 503  # no ready endpoint, as a Service without endpoints
        assert proxy.refused == 1 and len(seen) == 1
    finally:
        await asyncio.to_thread(proxy.stop)
        await runner.cleanup()


@pytest.mark.parametrize("status, stage", [
    ({"phase": "Progressing", "canaryModel": {"version": "v2"}, "canaryWeight": 0,
      "shadow": {"step": 0, "percent": 50, "startedAt": "2026-01-01T00:00:00Z"}}, "shadow"),
    ({"phase": "Paused", "canaryModel": {"version": "v2"}, "canaryWeight": 0, "shadow": {"step": 0, "percent": 50}},
     "shadow"),
    ({"phase": "Progressing", "canaryModel": {"version": "v2"}, "canaryWeight": 25, "shadow": None}, ""),
    ({"phase": "RolledBack", "canaryWeight": 0, "shadow": {"step": 0, "percent": 50}}, ""),  # a stale field
    ({"phase": "Succeeded"}, ""),
    ({}, ""),
])
def test_the_stage_a_sample_shows(status: dict[str, Any], stage: str) -> None:
    assert current_stage(status) == stage


def test_sample_stage_is_the_last_field_and_empty_by_default() -> None:
    sample = Sample(at=0.0, phase="-", step=None, weight=0, routed_weight=0, stable="v1", canary="-",
                    verdicts="", message="")
    assert sample.stage == "" and list(Sample.__dataclass_fields__)[-1] == "stage"


def _spec(scenario: sc.Scenario) -> dict[str, Any]:
    return sc.rollout_manifest(scenario, None, "http://127.0.0.1:9090", sc.DemoSettings())["spec"]


def test_shadow_scenarios_start_with_a_shadow_stage_judged_by_shadow_metrics() -> None:
    for scenario in sc.SHADOW_STORY:
        spec = parse_spec(_spec(scenario))
        assert spec.strategy.steps[0].is_shadow
        assert not any(step.is_shadow for step in spec.strategy.steps[1:])
        kinds = {metric.kind for metric in spec.analysis.metrics} if spec.analysis else set()
        assert {"shadow-error-rate", "shadow-cer"} <= kinds
    # the other scenarios have no stage, and the operator would refuse shadow metrics without one
    for scenario in sc.STORY:
        spec = parse_spec(_spec(scenario))
        assert not any(step.is_shadow for step in spec.strategy.steps)
    mixed = {**_spec(sc.STORY[0]), "analysis": {**_spec(sc.STORY[0])["analysis"],
                                                "metrics": sc.analysis_metrics(sc.DemoSettings(), True)}}
    with pytest.raises(InvalidSpec):
        parse_spec(mixed)


def test_shadow_story_catches_each_bad_version_with_its_own_guard() -> None:
    by_key = {s.key: s for s in sc.SHADOW_STORY}
    assert by_key["shadow-errors"].metric == "shadow-error-rate" and by_key["shadow-errors"].directory == "broken"
    assert by_key["shadow-drift"].metric == "shadow-cer" and by_key["shadow-drift"].directory == "drift"
    assert by_key["shadow-good"].expect == sc.PROMOTED
    # bad=False: a failed user request during any of them fails the demo (none may reach them)
    assert not any(s.bad for s in sc.SHADOW_STORY)
    # the full story runs them while v1's weights serve (the good one's transcripts are v1's)
    assert sc.FULL_STORY[:len(sc.SHADOW_STORY)] == sc.SHADOW_STORY
    assert len({s.version for s in sc.FULL_STORY}) == len(sc.FULL_STORY)
