"""The Alertmanager webhook receiver against the Kubernetes API emulator over real HTTP.

The receiver runs as a real aiohttp server on 127.0.0.1; it reaches the emulator
(sandbox/asr_sandbox/kube_emulator.py: kmock with resourceVersions, the status subresource and a request
log) through the operator's own API client (`asr_operator.kube.KubeApi`, wired as in
`handlers.startup`). What the state machine then does with the annotation (rollback during a canary, the
stable revert after a promotion) is tested by the operator's own tests; here: the annotation is
set exactly when it should be, and nothing else is written.
"""
from __future__ import annotations

import json
import logging
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import kopf
import pytest
import yaml

from asr_operator.alert_webhook import (
    ALERT_ANNOTATION,
    PayloadError,
    parse_payload,
    start_alert_webhook,
    token_matches,
)
from asr_operator.kube import KubeApi
from asr_sandbox.crd_schema import load_crd
from asr_sandbox.kube_emulator import EmulatorServer
from asr_sandbox.paths import EXAMPLES_DIR
from tests.support.kube import KubeClient

API_VERSION, PLURAL = "asr.rollout.dev/v1alpha1", "asrmodelrollouts"
TOKEN = "s3cret-token"


def rollout(namespace: str, name: str) -> dict[str, Any]:
    """A real example rollout, renamed."""
    obj = yaml.safe_load((EXAMPLES_DIR / "rollout-replica-ratio.yaml").read_text(encoding="utf-8"))
    obj["metadata"] = {"name": name, "namespace": namespace}
    return obj  # type: ignore[no-any-return]


def alert(status: str = "firing", *, namespace: str = "speech", rollout_name: str = "meeting-zh",
          fingerprint: str = "a1b2c3", starts_at: str = "2026-01-01T10:00:00Z",
          alertname: str = "ASRCanaryHighErrorRate") -> dict[str, Any]:
    labels = {"alertname": alertname, "severity": "critical", "track": "canary"}
    if namespace:
        labels["namespace"] = namespace
    if rollout_name:
        labels["rollout"] = rollout_name
    return {
        "status": status, "labels": labels,
        "annotations": {"summary": f"{alertname} on {namespace}/{rollout_name}"},
        "startsAt": starts_at, "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus/graph", "fingerprint": fingerprint,
    }


def payload(*alerts: dict[str, Any]) -> dict[str, Any]:
    """An Alertmanager webhook payload, version 4, as Alertmanager sends it."""
    status = "firing" if any(a["status"] == "firing" for a in alerts) else "resolved"
    return {
        "version": "4", "groupKey": "{}:{alertname=\"x\"}", "truncatedAlerts": 0, "status": status,
        "receiver": "asr-rollout", "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093", "alerts": list(alerts),
    }


@dataclass
class Cluster:
    api: EmulatorServer
    kube: KubeClient
    webhook_url: str

    def alert_annotation(self, namespace: str = "speech", name: str = "meeting-zh") -> dict[str, Any] | None:
        annotations = self.kube.rollout(namespace, name)["metadata"].get("annotations") or {}
        value = annotations.get(ALERT_ANNOTATION)
        return json.loads(value) if value is not None else None

    def writes(self) -> int:
        """Writes (any verb but get/list/watch) to rollouts the API saw so far."""
        log = self.api.call(lambda: list(self.api.emulator.request_log))
        return sum(1 for r in log if r.resource == PLURAL and r.verb not in ("get", "list", "watch"))

    async def post(self, body: Any, token: str | None = TOKEN) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{self.webhook_url}/alerts", json=body, headers=headers) as rsp:
                return rsp.status, await rsp.json()


@dataclass
class Served:
    runner: Any
    client: KubeApi

    async def cleanup(self) -> None:
        await self.runner.cleanup()
        await self.client.close()


async def _serve_webhook(token: str, api_host: str) -> tuple[Served, str]:
    """The receiver as `handlers.startup` starts it, on the operator's KubeApi."""
    client = KubeApi(kopf.ConnectionInfo(server=api_host))
    runner = await start_alert_webhook(0, token, client.get_rollout, client.set_annotation, host="127.0.0.1")
    host, port = runner.addresses[0][:2]
    return Served(runner, client), f"http://{host}:{port}"


@pytest.fixture
def api() -> Iterator[EmulatorServer]:
    with EmulatorServer() as server:
        server.emulator.register_crd(load_crd())
        KubeClient(server.url).create(rollout("speech", "meeting-zh"))
        yield server


@pytest.fixture
async def cluster(api: EmulatorServer) -> AsyncIterator[Cluster]:
    runner, url = await _serve_webhook(TOKEN, api.url)
    try:
        yield Cluster(api, KubeClient(api.url), url)
    finally:
        await runner.cleanup()


async def test_firing_alert_sets_the_annotation(cluster: Cluster) -> None:
    status, body = await cluster.post(payload(alert()))
    assert status == 200
    assert body["results"][0]["action"] == "annotated"
    assert cluster.alert_annotation() == {
        "alertname": "ASRCanaryHighErrorRate", "fingerprint": "a1b2c3",
        "startsAt": "2026-01-01T10:00:00Z", "summary": "ASRCanaryHighErrorRate on speech/meeting-zh",
        "track": "canary",  # the alert's track label: the state machine acts by it
    }


@pytest.mark.parametrize("token", ["wrong-token", "", None])
async def test_bad_or_missing_token_is_refused_and_logged(cluster: Cluster, token: str | None,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="asr_operator.alert_webhook"):
        status, body = await cluster.post(payload(alert()), token=token)
    assert status == 401
    assert "bearer token" in body["error"]["message"]
    assert cluster.alert_annotation() is None
    assert cluster.writes() == 1  # the create only
    # the operator's log says it too (old code: only Alertmanager's log showed the 401)
    refused = [r for r in caplog.records if r.levelno == logging.WARNING and "bearer token" in r.getMessage()]
    assert len(refused) == 1


async def test_resolved_alert_is_ignored(cluster: Cluster) -> None:
    status, body = await cluster.post(payload(alert("resolved")))
    assert status == 200
    assert body["results"][0] == {
        "alertname": "ASRCanaryHighErrorRate", "fingerprint": "a1b2c3", "namespace": "speech",
        "rollout": "meeting-zh", "action": "ignored", "reason": "resolved alert",
    }
    assert cluster.writes() == 1


async def test_alert_for_unknown_rollout_is_ignored_and_creates_nothing(cluster: Cluster) -> None:
    status, body = await cluster.post(payload(alert(rollout_name="no-such-rollout")))
    assert status == 200
    assert body["results"][0]["action"] == "ignored"
    assert body["results"][0]["reason"] == "unknown rollout"
    assert cluster.kube.get_or_none(API_VERSION, PLURAL, "speech", "no-such-rollout") is None
    assert cluster.writes() == 1


async def test_alert_without_rollout_labels_is_ignored(cluster: Cluster) -> None:
    status, body = await cluster.post(payload(alert(rollout_name=""), alert(namespace="", fingerprint="f2")))
    assert status == 200
    assert [r["action"] for r in body["results"]] == ["ignored", "ignored"]
    assert all("name a rollout" in r["reason"] for r in body["results"])
    assert cluster.writes() == 1


async def test_repeats_are_harmless(cluster: Cluster) -> None:
    for _ in range(3):  # Alertmanager re-sends on repeat_interval and group changes
        status, _body = await cluster.post(payload(alert()))
        assert status == 200
    assert cluster.writes() == 2  # the create + exactly one annotation patch
    assert cluster.alert_annotation() is not None


async def test_repeat_after_the_state_machine_consumed_it_is_not_reapplied(cluster: Cluster) -> None:
    await cluster.post(payload(alert()))
    consumed = cluster.alert_annotation()
    # What the state machine does after acting (contracts: record in status, remove annotation).
    cluster.kube.patch(API_VERSION, PLURAL, "speech", "meeting-zh", {"status": {"lastAlert": consumed}},
                       subresource="status")
    cluster.kube.annotate_rollout("speech", "meeting-zh", {ALERT_ANNOTATION: None})
    writes = cluster.writes()

    status, body = await cluster.post(payload(alert()))
    assert status == 200 and body["results"][0]["action"] == "ignored"
    assert "repeat" in body["results"][0]["reason"]
    assert cluster.writes() == writes and cluster.alert_annotation() is None

    # The same alert firing again later (a new episode, e.g. after the next promotion) is new.
    status, body = await cluster.post(payload(alert(starts_at="2026-01-02T08:00:00Z")))
    assert body["results"][0]["action"] == "annotated"
    assert cluster.alert_annotation()["startsAt"] == "2026-01-02T08:00:00Z"  # type: ignore[index]


async def test_an_alert_the_state_machine_remembers_is_not_written_again(cluster: Cluster) -> None:
    """Two alerts handled (A, then B: status.lastAlert is B). Alertmanager repeats both in every
    notification; old code compared with the last alert only and wrote A again."""
    a, b = alert(fingerprint="aaaa"), alert(fingerprint="bbbb", starts_at="2026-01-01T10:01:00Z")
    seen = [{"fingerprint": "aaaa", "startsAt": a["startsAt"]}, {"fingerprint": "bbbb", "startsAt": b["startsAt"]}]
    cluster.kube.patch(API_VERSION, PLURAL, "speech", "meeting-zh",
                       {"status": {"alertsSeen": seen, "lastAlert": json.loads(annotation_of(b))}},
                       subresource="status")
    writes = cluster.writes()
    status, body = await cluster.post(payload(a, b))
    assert status == 200 and [r["action"] for r in body["results"]] == ["ignored", "ignored"]
    assert cluster.writes() == writes and cluster.alert_annotation() is None


async def test_the_earliest_alert_not_seen_yet_is_annotated(cluster: Cluster) -> None:
    """Old code chose the earliest alert, then skipped it as a repeat: B never went out."""
    a, b = alert(fingerprint="aaaa"), alert(fingerprint="bbbb", starts_at="2026-01-01T10:01:00Z")
    cluster.kube.patch(API_VERSION, PLURAL, "speech", "meeting-zh",
                       {"status": {"alertsSeen": [{"fingerprint": "aaaa", "startsAt": a["startsAt"]}]}},
                       subresource="status")
    status, body = await cluster.post(payload(a, b))
    assert [r["action"] for r in body["results"]] == ["ignored", "annotated"]
    assert cluster.alert_annotation()["fingerprint"] == "bbbb"  # type: ignore[index]


def annotation_of(raw: dict[str, Any]) -> str:
    from asr_operator.alert_webhook import annotation_value
    return annotation_value(parse_payload(payload(raw))[0])


async def test_several_alerts_for_one_rollout_annotate_the_earliest(cluster: Cluster) -> None:
    later = alert(fingerprint="later", starts_at="2026-01-01T10:05:00Z", alertname="ASRCanaryHighLatency")
    earlier = alert(fingerprint="earlier", starts_at="2026-01-01T10:00:00Z")
    status, body = await cluster.post(payload(later, earlier))
    assert status == 200
    assert sorted(r["action"] for r in body["results"]) == ["annotated", "ignored"]
    assert cluster.alert_annotation()["fingerprint"] == "earlier"  # type: ignore[index]
    assert cluster.writes() == 2


async def test_malformed_payload_gets_a_clear_400(cluster: Cluster) -> None:
    status, body = await cluster.post({"hello": "world"})
    assert status == 400
    assert "'alerts'" in body["error"]["message"]
    assert cluster.writes() == 1


async def test_without_a_configured_token_alerts_are_refused_but_healthz_answers(
        api: EmulatorServer) -> None:
    runner, url = await _serve_webhook("", api.url)
    try:
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{url}/alerts", json=payload(alert()),
                                    headers={"Authorization": "Bearer "}) as rsp:
                assert rsp.status == 503
                assert "ASR_ALERT_WEBHOOK_TOKEN" in (await rsp.json())["error"]["message"]
            async with session.get(f"{url}/healthz") as rsp:
                assert rsp.status == 200
        assert KubeClient(api.url).rollout("speech", "meeting-zh")["metadata"].get("annotations") is None
    finally:
        await runner.cleanup()


async def test_api_outage_answers_5xx_so_alertmanager_retries() -> None:
    # A real connection failure: an API address where nothing listens.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    runner, url = await _serve_webhook(TOKEN, f"http://127.0.0.1:{closed_port}")
    try:
        host, port = url.removeprefix("http://").rsplit(":", 1)
        async with aiohttp.ClientSession() as session:
            async with session.post(f"http://{host}:{port}/alerts", json=payload(alert()),
                                    headers={"Authorization": f"Bearer {TOKEN}"}) as rsp:
                assert rsp.status == 502
                assert "retry" in (await rsp.json())["error"]["message"]
    finally:
        await runner.cleanup()


# --- the pure parts -----------------------------------------------------------------------


@pytest.mark.parametrize("body, message", [
    ([], "JSON object"),
    ({"alerts": "x"}, "'alerts' list"),
    ({"alerts": [{"status": "pending", "fingerprint": "f"}]}, "alerts[0].status"),
    ({"alerts": [{"status": "firing"}]}, "alerts[0].fingerprint"),
    ({"alerts": [{"status": "firing", "fingerprint": "f", "labels": {"a": 1}}]}, "alerts[0].labels"),
])
def test_parse_payload_says_what_is_wrong(body: Any, message: str) -> None:
    with pytest.raises(PayloadError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_payload(body)


def test_token_matching() -> None:
    assert token_matches("Bearer abc", "abc")
    assert token_matches("bearer abc", "abc")
    assert not token_matches("Bearer abd", "abc")
    assert not token_matches("Basic abc", "abc")
    assert not token_matches(None, "abc")
    assert not token_matches("Bearer ", "")  # no configured token never matches
