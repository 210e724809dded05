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
    assert "rollout missing not found in namespace cli; list them with: asr-rollout list -n cli" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["rollback", "strict", "-n", NS])  # --to is required


def test_status_says_what_the_canary_changes() -> None:
    text = cli.format_status({**rollout("r"), "status": {**STATUS, "canaryChanges": ["model v1 -> v2", "image a -> b"]}})
    assert "model v1 -> v2; image a -> b" in text


# --- pure formatting and decisions (cli_format) -------------------------------------------------

import datetime  # noqa: E402

from asr_operator import cli_format as fmt  # noqa: E402

NOW = datetime.datetime(2026, 1, 1, 1, 0, 0, tzinfo=datetime.timezone.utc)


def test_the_plugin_says_kubectl_asr(capsys: pytest.CaptureFixture[str]) -> None:
    assert fmt.program_name("/usr/local/bin/kubectl-asr") == "kubectl asr"
    assert fmt.program_name("/venv/bin/asr-rollout") == "asr-rollout"
    with pytest.raises(SystemExit) as done:
        cli.parse_args(["--help"], fmt.program_name("kubectl-asr"))
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith("usage: kubectl asr ")


def test_flags_go_before_or_after_the_command() -> None:
    args = cli.parse_args(["-n", "a", "--context", "c", "get", "r"])
    assert (args.namespace, args.context, args.name) == ("a", "c", "r")
    args = cli.parse_args(["get", "r", "-n", "b", "--kubeconfig", "k"])
    assert (args.namespace, args.kubeconfig, args.context) == ("b", "k", None)
    args = cli.parse_args(["set", "model", "r", "--version", "v3", "--path", "m/v3"])
    assert (args.command, args.model_version, args.path, args.sha256) == ("set-model", "v3", "m/v3", None)


def with_status(status: dict[str, Any], generation: int = 2, observed: int = 2, version: str = "v2") -> dict[str, Any]:
    body = rollout("r")
    body["metadata"]["generation"] = generation
    body["spec"]["model"]["version"] = version
    return {**body, "status": {"observedGeneration": observed, **status}}


@pytest.mark.parametrize("status, observed, done, code", [
    ({"phase": "Succeeded", "stableVersion": "v2"}, 2, True, fmt.EXIT_OK),
    ({"phase": "Succeeded", "stableVersion": "v1"}, 1, False, fmt.EXIT_OK),   # an older generation's verdict
    ({"phase": "Succeeded", "stableVersion": "v1"}, 2, False, fmt.EXIT_OK),   # not the spec's version yet
    ({"phase": "Progressing"}, 2, False, fmt.EXIT_OK),
    ({"phase": "Paused"}, 2, False, fmt.EXIT_OK),
    ({"phase": "RollingBack"}, 2, True, fmt.EXIT_ROLLED_BACK),
    ({"phase": "RolledBack"}, 2, True, fmt.EXIT_ROLLED_BACK),
    ({"phase": "Failed"}, 2, True, fmt.EXIT_FAILED),
    ({"phase": "Succeeded", "stableVersion": "v2",
      "conditions": [{"type": "InvalidSpec", "status": "True", "message": "bad path"}]}, 2, True, fmt.EXIT_FAILED),
])
def test_watch_verdict_is_about_the_current_spec(status: dict[str, Any], observed: int, done: bool, code: int) -> None:
    verdict = fmt.watch_verdict(with_status(status, observed=observed))
    assert (verdict.done, verdict.code) == (done, code), verdict


def test_exit_codes_are_distinct() -> None:
    codes = [fmt.EXIT_OK, fmt.EXIT_ERROR, fmt.EXIT_USAGE, fmt.EXIT_ROLLED_BACK, fmt.EXIT_FAILED, fmt.EXIT_TIMEOUT]
    assert len(set(codes)) == len(codes)
    assert fmt.parse_timeout("90s") == 90 and fmt.parse_timeout("2") == 2 and fmt.parse_timeout("0") is None
    with pytest.raises(ValueError, match="not a duration"):
        fmt.parse_timeout("soon")


def test_undo_goes_to_the_promoted_version_before_stable() -> None:
    history = [{"version": "v1", "outcome": "Promoted"}, {"version": "v2", "outcome": "Promoted"},
               {"version": "v3", "outcome": "RolledBack"}]
    body = with_status({"stableVersion": "v2", "history": history})
    assert fmt.undo_target(body, None) == "v1"
    assert fmt.undo_target(body, "v2") == "v2"
    with pytest.raises(ValueError, match="'v3' is not a promoted version of cli/r; choose one of: v1, v2"):
        fmt.undo_target(body, "v3")


def test_analysis_shows_each_value_beside_its_threshold() -> None:
    body = with_status({"analysis": {"metrics": [
        {"name": "error-rate", "phase": "Successful", "value": 0.001},
        {"name": "error-rate", "phase": "Failed", "value": 0.03, "stableValue": 0.001},
        {"name": "golden-cer", "phase": "Inconclusive", "value": None}]}})
    body["spec"]["analysis"] = {"metrics": [{"name": "error-rate", "max": 0.01},
                                            {"name": "error-rate", "max": 0.02, "maxIncrease": 0.005},
                                            {"name": "golden-cer", "maxIncrease": 0.02, "max": 0.2}]}
    rows = fmt.analysis_rows(body)
    assert [row[4] for row in rows] == ["max 0.01", "max 0.02, +0.005 over stable", "max 0.2, +0.02 over stable"]
    assert rows[1][2:4] == ["0.03", "0.001"] and rows[2][2] == "-"


def test_list_and_tree_read_at_a_glance() -> None:
    listed = with_status({"phase": "Paused", "stableVersion": "v1", "canaryVersion": "v2", "canaryWeight": 10,
                          "currentStep": 1})
    listed["metadata"]["creationTimestamp"] = "2026-01-01T00:00:00Z"
    lines = fmt.format_list([listed], NOW, all_namespaces=True).splitlines()
    assert lines[0].split() == ["NAMESPACE", "NAME", "PHASE", "SPEC", "STABLE", "CANARY", "WEIGHT", "STEP", "AGE"]
    assert lines[1].split() == ["cli", "r", "Paused", "v2", "v1", "v2", "10", "1/3", "1h"]
    listed["spec"]["traffic"] = {"gatewayAPI": {"httpRoute": "route"}}
    configmap = {"metadata": {"name": "r-canary-model"},
                 "data": {"model.yaml": "name: m\nversion: v2\npath: paraformer-tiny/v2\n"}}
    pod = {"metadata": {"name": "r-canary-abc", "labels": {"asr.rollout.dev/track": "canary"},
                        "creationTimestamp": "2026-01-01T00:59:00Z"},
           "spec": {"containers": [{"name": "server"}]},
           "status": {"phase": "Running", "containerStatuses": [{"ready": True, "restartCount": 2}]}}
    route = {"spec": {"rules": [{"backendRefs": [{"name": "r-stable", "weight": 90}, {"name": "r-canary", "weight": 10}]}]}}
    view = fmt.RolloutView(listed, {"stable": None, "canary": {"metadata": {"name": "r-canary"}, "spec": {"replicas": 1},
                                                                "status": {"readyReplicas": 1}}},
                           {"stable": None, "canary": configmap}, [pod], route)
    tree = fmt.format_tree(view, NOW)
    for expected in ("HTTPRoute route: r-stable=90, r-canary=10", "└── r-canary", "canary ready 1/1",
                     "path paraformer-tiny/v2", "Pod", "Running ready 1/1", "version v2", "restarts 2, age 1m"):
        assert expected in tree, (expected, tree)


def test_api_errors_say_what_to_do() -> None:
    assert fmt.explain_api_error(404, "", "get", "ns", "r", "kubectl asr") == (
        "rollout r not found in namespace ns; list them with: kubectl asr list -n ns")
    assert "install the CRD" in fmt.explain_api_error(404, "", "list", None, None, "kubectl asr")
    denied = fmt.explain_api_error(403, "forbidden", "patch", "ns", "r", "kubectl asr")
    assert "not allowed to patch rollout r in namespace ns" in denied and "kubectl auth can-i" in denied
    assert "exec credential plugin" in fmt.explain_api_error(401, "Unauthorized", "list", "ns", None, "x", "eks")
