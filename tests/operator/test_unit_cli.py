"""The CLI: the status table (pure), and the commands against the API emulator over HTTP."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from asr_operator import cli
from asr_sandbox.kube_emulator import EmulatorServer
from tests.support.kube import KubeClient

RO = ("asr.rollout.dev/v1alpha1", "asrmodelrollouts")
NS = "cli"


def rollout(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "asr.rollout.dev/v1alpha1", "kind": "ASRModelRollout",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"model": {"name": "paraformer-tiny", "version": "v2", "path": "paraformer-tiny/v2"},
                 "modelVolume": {"hostPath": {"path": "/models"}}, "server": {"image": "asr:0.1"},
                 "traffic": {"replicaRatio": {}},
                 "strategy": {"steps": [{"setWeight": 10}, {"pause": {}}, {"setWeight": 100}]}},
    }


STATUS = {
    "phase": "Paused", "message": "step 1: paused until promoted", "stableVersion": "v1", "canaryVersion": "v2",
    "canaryWeight": 10, "currentStep": 1, "weightApproximate": True, "effectiveCanaryWeight": 33,
    "observedGeneration": 1, "counters": {"failed": 1, "inconclusive": 0, "errors": 0},
    "conditions": [{"type": "Paused", "status": "True", "reason": "ManualPause", "message": "step 1"}],
    "analysis": {"lastRun": "2026-01-01T00:00:00Z", "outcome": "Failed", "metrics": [
        {"name": "error-rate", "phase": "Failed", "value": 0.0312, "message": "0.0312 is over max 0.01"}]},
    "history": [{"version": "v1", "outcome": "Promoted", "at": "2026-01-01T00:00:00Z", "reason": "first version"}],
}


def test_status_table_reads_at_a_glance() -> None:
    text = cli.format_status({**rollout("r"), "status": STATUS})
    assert text.splitlines()[0] == "cli/r"
    for expected in ("Phase:", "Paused", "Stable:", "v1", "Canary:", "v2", "10% (approximate by replicas: 33%)",
                     "Step:", "1/3", "failed 1", "ManualPause", "error-rate", "0.0312 is over max 0.01",
                     "VERSION", "first version"):
        assert expected in text, expected
    assert "Phase:" in cli.format_status(rollout("fresh"))  # no status yet: still readable
    scaling = {**STATUS, "weightApproximate": False, "effectiveCanaryWeight": 10, "pendingWeight": 50}
    assert "10%, 50% once the canary pods for it are ready" in cli.format_status({**rollout("r"), "status": scaling})


@pytest.fixture
def kube_env(kubeconfig: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))


def test_commands_set_the_annotations(api: EmulatorServer, kube: KubeClient, kube_env: None,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    kube.create(rollout("steer"))
    kube.patch(*RO, NS, "steer", {"status": STATUS}, subresource="status")
    for command, key in [("promote", "promote"), ("abort", "abort"), ("retry", "retry")]:
        assert cli.main([command, "steer", "-n", NS]) == 0
        assert kube.rollout(NS, "steer")["metadata"]["annotations"][f"asr.rollout.dev/{key}"] == "true"
    assert cli.main(["rollback", "steer", "--to", "v1", "-n", NS]) == 0
    assert kube.rollout(NS, "steer")["metadata"]["annotations"]["asr.rollout.dev/rollback-to"] == "v1"
    assert kube.rollout(NS, "steer")["spec"]["model"]["version"] == "v2"  # spec untouched
    capsys.readouterr()
    assert cli.main(["status", "steer", "-n", NS]) == 0
    assert "Paused" in capsys.readouterr().out


def test_bad_requests_say_what_to_do(api: EmulatorServer, kube: KubeClient, kube_env: None,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    kube.create(rollout("strict"))
    kube.patch(*RO, NS, "strict", {"status": STATUS}, subresource="status")
    assert cli.main(["rollback", "strict", "--to", "v9", "-n", NS]) == 1
    assert "'v9' is not a promoted version of cli/strict; choose one of: v1" in capsys.readouterr().err
    assert cli.main(["status", "missing", "-n", NS]) == 1
    assert "ASRModelRollout cli/missing not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["rollback", "strict", "-n", NS])  # --to is required


def test_status_says_what_the_canary_changes() -> None:
    text = cli.format_status({**rollout("r"), "status": {**STATUS, "canaryChanges": ["model v1 -> v2", "image a -> b"]}})
    assert "model v1 -> v2; image a -> b" in text
