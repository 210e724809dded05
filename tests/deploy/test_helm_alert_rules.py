"""The chart's PrometheusRule: `promtool check rules` and `promtool test rules` on its groups.

The groups are taken from the chart rendered with the real Helm SDK (alerts on), so what is
tested is what a cluster would get. The unit tests feed series shaped like the inference
server's metrics (docs/contracts.md) and check which alerts fire, with which labels: every
alert must carry `namespace` and `rollout`, the labels the operator's webhook routes by.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.chart_render import NON_DEFAULT_VALUES, of_kind, render

PROMTOOL = shutil.which("promtool")


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL, "promtool not found: install the Debian package `prometheus` (make setup does)"
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def groups() -> list[dict[str, Any]]:
    (rule,) = of_kind(render(NON_DEFAULT_VALUES), "PrometheusRule")
    return rule["spec"]["groups"]  # type: ignore[no-any-return]


@pytest.fixture
def rule_file(groups: list[dict[str, Any]], tmp_path: Path) -> Path:
    path = tmp_path / "asr-rollout-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False), encoding="utf-8")
    return path


def test_promtool_check_rules(rule_file: Path) -> None:
    result = promtool("check", "rules", rule_file.name, cwd=rule_file.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "8 rules found" in result.stdout


def test_every_alert_keeps_the_routing_labels(groups: list[dict[str, Any]]) -> None:
    alerts = [rule for group in groups for rule in group["rules"] if "alert" in rule]
    assert {a["alert"] for a in alerts} == {
        f"ASR{track}{what}" for track in ("Canary", "Stable")
        for what in ("HighErrorRate", "HighLatency", "ModelLoadFailed", "ModelReloadFailed")}
    for alert in alerts:
        # Every aggregation must keep namespace and rollout, or the label is lost.
        for by in re.findall(r"by \(([^)]*)\)", alert["expr"]):
            assert {"namespace", "rollout", "track"} <= {label.strip() for label in by.split(",")}, alert["alert"]
        assert alert["labels"]["severity"] == "critical"
        assert alert["annotations"]["summary"]


def _counter(per_step: float, steps: int = 40) -> str:
    return f"0+{per_step}x{steps}"


def _series(name: str, value: str, **labels: str) -> dict[str, str]:
    text = ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return {"series": f"{name}{{{text}}}", "values": value}


def unit_tests(rule_file_name: str) -> dict[str, Any]:
    """Scenarios on a 15 s scrape interval; evaluated 5 minutes in."""
    canary = {"namespace": "speech", "rollout": "meeting-zh", "track": "canary", "pod": "meeting-zh-canary-0",
              "model": "paraformer-tiny", "version": "v2", "endpoint": "/v1/audio/transcriptions"}
    stable = dict(canary, track="stable", pod="meeting-zh-stable-0", version="v1")
    quiet = dict(canary, rollout="quiet", pod="quiet-canary-0")
    slow = dict(canary, rollout="slow", pod="slow-canary-0")
    broken = {"namespace": "speech", "rollout": "broken", "track": "stable", "pod": "broken-stable-0",
              "model": "paraformer-tiny", "version": "corrupt"}
    series = [
        # meeting-zh canary: 4 req/s, 0.67 of them 503 -> 14 % errors: fires.
        _series("asr_requests_total", _counter(60), code="200", **canary),
        _series("asr_requests_total", _counter(10), code="503", **canary),
        # meeting-zh stable: no errors: silent.
        _series("asr_requests_total", _counter(60), code="200", **stable),
        _series("asr_requests_total", _counter(0), code="503", **stable),
        # quiet canary: 50 % errors but 0.07 req/s, under minRequestRate: silent.
        _series("asr_requests_total", _counter(0.5), code="200", **quiet),
        _series("asr_requests_total", _counter(0.5), code="500", **quiet),
        # slow canary: every request between 1 s and 2.5 s -> p99 = 1 + 0.99 * 1.5 = 2.485 s > 2 s: fires.
        *[_series("asr_request_duration_seconds_bucket", _counter(rate), le=le,
                  **{k: v for k, v in slow.items()})
          for le, rate in (("0.5", 0), ("1", 0), ("2.5", 10), ("+Inf", 10))],
        # broken stable: model state FAILED, and a failed hot reload 1 minute in.
        _series("asr_model_state", "1x40", state="FAILED", **broken),
        _series("asr_model_state", "0x40", state="READY", **broken),
        _series("asr_model_reloads_total", "0 0 0 0 1x36", result="failure", reason="checksum", **broken),
        _series("asr_model_reloads_total", _counter(0), result="success", reason="config-change", **broken),
    ]
    def labels(**extra: str) -> dict[str, str]:
        return dict({"severity": "critical"}, **extra)
    return {
        "rule_files": [rule_file_name],
        "evaluation_interval": "15s",
        "tests": [{
            "interval": "15s",
            "input_series": series,
            "alert_rule_test": [
                {"eval_time": "5m", "alertname": "ASRCanaryHighErrorRate", "exp_alerts": [{
                    "exp_labels": labels(namespace="speech", rollout="meeting-zh", track="canary"),
                    "exp_annotations": {
                        "summary": "canary error rate of speech/meeting-zh is 14.29%",
                        "description": "More than 0.05 of the canary requests answer 5xx over 2m."}}]},
                {"eval_time": "5m", "alertname": "ASRStableHighErrorRate", "exp_alerts": []},
                {"eval_time": "5m", "alertname": "ASRCanaryHighLatency", "exp_alerts": [{
                    "exp_labels": labels(namespace="speech", rollout="slow", track="canary"),
                    "exp_annotations": {
                        "summary": "canary p99 latency of speech/slow is 2.485s",
                        "description": "The 99th percentile request duration of the canary pods is above 2s."}}]},
                {"eval_time": "5m", "alertname": "ASRStableModelLoadFailed", "exp_alerts": [{
                    "exp_labels": labels(namespace="speech", rollout="broken", track="stable",
                                         model="paraformer-tiny", version="corrupt"),
                    "exp_annotations": {
                        "summary": "stable model paraformer-tiny corrupt of speech/broken failed to load",
                        "description": "A pod reports the model state FAILED (missing files, checksum "
                                       "mismatch or a load error)."}}]},
                # `for: 1m` on load failures: not yet 30 s in.
                {"eval_time": "30s", "alertname": "ASRStableModelLoadFailed", "exp_alerts": []},
                {"eval_time": "5m", "alertname": "ASRStableModelReloadFailed", "exp_alerts": [{
                    "exp_labels": labels(namespace="speech", rollout="broken", track="stable"),
                    "exp_annotations": {
                        "summary": "stable hot reload failed for speech/broken",
                        "description": "At least one hot reload of the stable model failed in the last "
                                       "10m; the old model keeps serving."}}]},
                {"eval_time": "30s", "alertname": "ASRStableModelReloadFailed", "exp_alerts": []},
            ],
        }],
    }


def test_promtool_test_rules(rule_file: Path) -> None:
    tests_file = rule_file.parent / "asr-rollout-rules.test.yaml"
    tests_file.write_text(yaml.safe_dump(unit_tests(rule_file.name), sort_keys=False), encoding="utf-8")
    result = promtool("test", "rules", tests_file.name, cwd=rule_file.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_test_rules_catches_a_missing_alert(rule_file: Path) -> None:
    # The harness can fail: expecting the stable error-rate alert where none fires is reported.
    scenario = unit_tests(rule_file.name)
    scenario["tests"][0]["alert_rule_test"][1]["exp_alerts"] = [
        {"exp_labels": {"severity": "critical", "namespace": "speech", "rollout": "meeting-zh", "track": "stable"}}]
    tests_file = rule_file.parent / "asr-rollout-rules.test.yaml"
    tests_file.write_text(yaml.safe_dump(scenario, sort_keys=False), encoding="utf-8")
    result = promtool("test", "rules", tests_file.name, cwd=rule_file.parent)
    assert result.returncode != 0
    assert "ASRStableHighErrorRate" in result.stdout + result.stderr
