"""The CRD accepts the relative bounds against stable (maxIncrease, maxRatio) on the built-in
metrics and refuses negative ones; validated with jsonschema against the CRD's own schema
(sandbox/asr_sandbox/crd_schema.py), as tests/operator/test_crd_schema.py does."""
from __future__ import annotations

from typing import Any

import pytest

from asr_sandbox.crd_schema import describe, validation_errors


def rollout(metrics: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "asr.rollout.dev/v1alpha1", "kind": "ASRModelRollout",
        "metadata": {"name": "r", "namespace": "ns"},
        "spec": {
            "model": {"name": "paraformer-tiny", "version": "v2", "path": "paraformer-tiny/v2"},
            "modelVolume": {"persistentVolumeClaim": {"claimName": "models"}},
            "server": {"image": "asr:0.1"}, "traffic": {"replicaRatio": {}},
            "strategy": {"steps": [{"setWeight": 50}, {"pause": {"duration": "30s"}}]},
            "analysis": {"prometheus": {"address": "http://127.0.0.1:9090"}, "metrics": metrics},
        },
    }


def test_relative_bounds_are_accepted_alone_or_with_max() -> None:
    metrics = [{"name": "error-rate", "max": 0.05, "maxIncrease": 0.005},
               {"name": "p99-latency-seconds", "maxRatio": 1.5},
               {"name": "real-time-factor", "max": 1, "maxIncrease": 0.1, "maxRatio": 2}]
    assert [describe(e) for e in validation_errors(rollout(metrics))] == []


@pytest.mark.parametrize("metric, field", [
    ({"name": "p99-latency-seconds", "maxRatio": -1}, "spec.analysis.metrics.0.maxRatio"),
    ({"name": "error-rate", "maxIncrease": -0.1}, "spec.analysis.metrics.0.maxIncrease"),
    ({"name": "error-rate", "maxRatio": "2x"}, "spec.analysis.metrics.0.maxRatio"),
])
def test_negative_or_non_numeric_bounds_are_refused(metric: dict[str, Any], field: str) -> None:
    errors = [describe(e) for e in validation_errors(rollout([metric]))]
    assert any(e.startswith(field + ":") for e in errors), errors
