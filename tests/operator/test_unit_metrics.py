"""The operator's own Prometheus metrics, read back through prometheus_client's text format."""
from __future__ import annotations

import datetime

from prometheus_client import generate_latest

from asr_operator.durations import format_time
from asr_operator.metrics import OperatorMetrics
from asr_operator.state_machine import Decision

NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)


def decision(status: dict[str, object]) -> Decision:
    return Decision(status=status, actions=())


def text(metrics: OperatorMetrics) -> str:
    return generate_latest(metrics.registry).decode()


def test_phase_weight_verdicts_and_totals() -> None:
    metrics = OperatorMetrics()
    analysis = {"lastRun": format_time(NOW), "metrics": [{"name": "error-rate", "phase": "Failed"}]}
    metrics.record("speech", "m", {"phase": "Progressing"},
                   decision({"phase": "RollingBack", "canaryWeight": 0, "analysis": analysis}), NOW)
    out = text(metrics)
    assert 'asr_rollout_phase{namespace="speech",phase="RollingBack",rollout="m"} 1.0' in out
    assert 'asr_rollout_phase{namespace="speech",phase="Progressing",rollout="m"} 0.0' in out
    assert 'asr_rollout_rollbacks_total{namespace="speech",rollout="m"} 1.0' in out
    assert ('asr_rollout_analysis_verdicts_total{metric="error-rate",namespace="speech",rollout="m",'
            'verdict="Failed"} 1.0') in out
    # the same analysis seen again on a later tick is not counted twice
    metrics.record("speech", "m", {"phase": "RollingBack"},
                   decision({"phase": "RolledBack", "analysis": analysis}), NOW + datetime.timedelta(seconds=1))
    assert 'verdict="Failed"} 1.0' in text(metrics)
    assert 'asr_rollout_rollbacks_total{namespace="speech",rollout="m"} 1.0' in text(metrics)
    metrics.record("speech", "m", {"phase": "Promoting"}, decision({"phase": "Succeeded", "canaryWeight": 0}), NOW)
    assert 'asr_rollout_promotions_total{namespace="speech",rollout="m"} 1.0' in text(metrics)
    metrics.record("speech", "m", {"phase": "Succeeded"}, decision({"phase": "Progressing", "canaryWeight": 25}), NOW)
    assert 'asr_rollout_canary_weight{namespace="speech",rollout="m"} 25.0' in text(metrics)
    metrics.error("speech", "m")
    assert 'asr_rollout_reconcile_errors_total{namespace="speech",rollout="m"} 1.0' in text(metrics)


def test_port_zero_serves_nothing() -> None:
    OperatorMetrics().serve(0)  # no exception, no thread: tests and the emulator runs use it
