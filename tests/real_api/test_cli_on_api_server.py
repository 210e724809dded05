"""The CLI (`kubectl asr`) against a real v1.28 kube-apiserver, logged in as kubectl is: a
kubeconfig whose user is an `exec` credential plugin (as on EKS, GKE, AKS), `--context`
between two contexts, `-A`, and `status --watch` exit codes driven by writing the rollout's
status through its `/status` subresource (no operator needed: the CLI only reads status)."""
from __future__ import annotations

import json
import stat
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from asr_operator import cli
from asr_operator.cli_format import EXIT_ERROR, EXIT_FAILED, EXIT_OK, EXIT_ROLLED_BACK, EXIT_TIMEOUT
from asr_sandbox.control_plane import ControlPlane
from tests.support.kube import KubeClient

pytestmark = pytest.mark.real_api
RO = ("asr.rollout.dev/v1alpha1", "asrmodelrollouts")
NS, OTHER = "cli-real", "cli-real-other"


def rollout(name: str, namespace: str = NS, version: str = "v2") -> dict[str, Any]:
    return {
        "apiVersion": "asr.rollout.dev/v1alpha1", "kind": "ASRModelRollout",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"model": {"name": "paraformer-tiny", "version": version, "path": f"paraformer-tiny/{version}"},
                 "modelVolume": {"persistentVolumeClaim": {"claimName": "asr-models"}},
                 "server": {"image": "asr:0.1"}, "traffic": {"replicaRatio": {}},
                 "strategy": {"steps": [{"setWeight": 10}, {"pause": {}}, {"setWeight": 100}]},
                 "analysis": {"prometheus": {"address": "http://prometheus:9090"},
                              "metrics": [{"name": "error-rate", "max": 0.01}]}},
    }


def exec_plugin(folder: Path, token: str) -> Path:
    """An `exec` credential plugin: prints an ExecCredential, like `aws eks get-token`."""
    script = folder / "asr-test-credential"
    credential = {"apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential",
                  "status": {"token": token, "expirationTimestamp": "2099-01-01T00:00:00Z"}}
    script.write_text(f"#!{sys.executable}\nprint({json.dumps(json.dumps(credential))})\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


@pytest.fixture(scope="module")
def kube(control_plane: ControlPlane) -> KubeClient:
    client = KubeClient(control_plane.url, token=control_plane.token)
    client.ensure_namespace(NS)
    client.ensure_namespace(OTHER)
    return client


@pytest.fixture(scope="module")
def kubeconfig(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two contexts on the one server: `eks` (exec plugin, namespace NS, current) and `stale`
    (a static token the server does not know, namespace OTHER)."""
    folder = tmp_path_factory.mktemp("cli-kubeconfig")
    cluster = {"server": control_plane.url, "insecure-skip-tls-verify": True}
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "eks",
        "clusters": [{"name": "real", "cluster": cluster}],
        "users": [{"name": "plugin", "user": {"exec": {
                      "apiVersion": "client.authentication.k8s.io/v1", "interactiveMode": "Never",
                      "command": str(exec_plugin(folder, control_plane.token))}}},
                  {"name": "stale", "user": {"token": "not-a-token-this-server-knows"}}],
        "contexts": [{"name": "eks", "context": {"cluster": "real", "user": "plugin", "namespace": NS}},
                     {"name": "stale", "context": {"cluster": "real", "user": "stale", "namespace": OTHER}}],
    }
    path = folder / "config"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def asr(kubeconfig: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Any:
    """Run `kubectl asr ARGS` in-process with the test kubeconfig; returns (code, out, err)."""
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)

    def call(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = cli.main(list(args))
        captured = capsys.readouterr()
        return code, captured.out, captured.err
    return call


def put_status(kube: KubeClient, namespace: str, name: str, status: dict[str, Any]) -> None:
    live = kube.rollout(namespace, name)
    kube.patch(*RO, namespace, name, {"status": {"observedGeneration": live["metadata"]["generation"], **status}},
               subresource="status")


def test_exec_plugin_login_lists_and_gets_in_the_context_namespace(kube: KubeClient, asr: Any) -> None:
    kube.create(rollout("listed"))
    kube.create(rollout("elsewhere", namespace=OTHER))
    put_status(kube, NS, "listed", {"phase": "Progressing", "stableVersion": "v1", "canaryVersion": "v2",
                                     "canaryWeight": 10, "currentStep": 1})
    code, out, err = asr("list")
    assert code == EXIT_OK, err
    assert "listed" in out and "elsewhere" not in out and "Progressing" in out  # the context's namespace
    code, out, _ = asr("list", "-A")
    lines = {line.split()[1]: line.split()[0] for line in out.splitlines()[1:]}
    assert lines["listed"] == NS and lines["elsewhere"] == OTHER
    code, out, _ = asr("list", "-n", OTHER, "-o", "json")
    assert [item["metadata"]["name"] for item in json.loads(out)] == ["elsewhere"]
    code, out, _ = asr("get", "listed")
    assert code == EXIT_OK and "listed" in out and "ASRModelRollout" in out and "replica ratio" in out


def test_context_selects_the_user_and_a_refused_token_says_what_to_do(kube: KubeClient, asr: Any) -> None:
    code, out, err = asr("--context", "stale", "list")
    assert code == EXIT_ERROR and out == ""
    assert "did not accept the credentials of context 'stale'" in err and "--context" in err
    code, _, err = asr("list", "--context", "nope")
    assert code == EXIT_ERROR and "context 'nope' is not in the kubeconfig" in err
    code, out, err = asr("list", "--context", "eks", "-n", OTHER)
    assert code == EXIT_OK and "elsewhere" in out, err


def test_not_found_names_the_rollout_namespace_and_the_next_command(asr: Any) -> None:
    code, _, err = asr("status", "ghost")
    assert code == EXIT_ERROR
    assert f"rollout ghost not found in namespace {NS}; list them with: asr-rollout list -n {NS}" in err


def test_set_model_pause_resume_and_undo_change_the_resource(kube: KubeClient, asr: Any) -> None:
    kube.create(rollout("steer"))
    kube.patch(*RO, NS, "steer", {"spec": {"model": {"sha256": "a" * 64}}})
    code, out, err = asr("set", "model", "steer", "--version", "v3", "--path", "paraformer-tiny/v3")
    assert code == EXIT_OK, err
    model = kube.rollout(NS, "steer")["spec"]["model"]
    assert (model["version"], model["path"], model.get("sha256")) == ("v3", "paraformer-tiny/v3", None)
    code, _, err = asr("set", "model", "steer", "--version", "v4", "--path", "../escape")
    assert code == EXIT_ERROR and "refused to set the model of rollout steer" in err  # the CRD's own rule
    assert kube.rollout(NS, "steer")["spec"]["model"]["version"] == "v3"

    assert asr("pause", "steer")[0] == EXIT_OK
    assert kube.rollout(NS, "steer")["metadata"]["annotations"]["asr.rollout.dev/pause"] == "true"
    assert asr("resume", "steer")[0] == EXIT_OK
    assert "asr.rollout.dev/pause" not in (kube.rollout(NS, "steer")["metadata"].get("annotations") or {})
    code, _, err = asr("resume", "steer")
    assert code == EXIT_ERROR and "was not paused" in err

    code, _, err = asr("undo", "steer")
    assert code == EXIT_ERROR and "no earlier promoted version" in err
    put_status(kube, NS, "steer", {"phase": "Succeeded", "stableVersion": "v2", "history": [
        {"version": "v1", "outcome": "Promoted", "at": "2026-01-01T00:00:00Z", "reason": "first version"},
        {"version": "v2", "outcome": "Promoted", "at": "2026-01-02T00:00:00Z", "reason": "analysis passed"}]})
    assert asr("undo", "steer")[0] == EXIT_OK
    assert kube.rollout(NS, "steer")["metadata"]["annotations"]["asr.rollout.dev/rollback-to"] == "v1"
    code, out, _ = asr("history", "steer", "-o", "yaml")
    assert [entry["version"] for entry in yaml.safe_load(out)] == ["v1", "v2"]


def _drive(kube: KubeClient, name: str, phases: list[dict[str, Any]]) -> threading.Thread:
    """Write status phases one after another while the CLI watches (the operator's part)."""
    def write() -> None:
        for status in phases:
            time.sleep(0.5)
            put_status(kube, NS, name, status)
    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("final, code", [
    ({"phase": "Succeeded", "stableVersion": "v2"}, EXIT_OK),
    ({"phase": "RolledBack", "stableVersion": "v1", "message": "error-rate 0.3 over max 0.01"}, EXIT_ROLLED_BACK),
    ({"phase": "Failed", "message": "stable pods not ready"}, EXIT_FAILED),
])
def test_status_watch_exits_with_the_verdict(kube: KubeClient, asr: Any, monkeypatch: pytest.MonkeyPatch,
                                            final: dict[str, Any], code: int) -> None:
    monkeypatch.setattr(cli, "WATCH_INTERVAL_SECONDS", 0.2)
    name = f"watch-{final['phase'].lower()}"
    kube.create(rollout(name))
    # An old Succeeded of v1 for an earlier generation must not pass the new spec.
    kube.patch(*RO, NS, name, {"status": {"observedGeneration": 0, "phase": "Succeeded", "stableVersion": "v1"}},
               subresource="status")
    writer = _drive(kube, name, [{"phase": "Progressing", "canaryVersion": "v2", "canaryWeight": 10}, final])
    got, out, err = asr("status", name, "--watch")
    writer.join()
    assert got == code, out + err
    assert "Progressing" in out and final["phase"] in out.splitlines()[-1]


def test_status_watch_times_out_with_its_own_code(kube: KubeClient, asr: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "WATCH_INTERVAL_SECONDS", 0.2)
    kube.create(rollout("stuck"))
    put_status(kube, NS, "stuck", {"phase": "Paused", "canaryVersion": "v2", "canaryWeight": 10})
    code, out, _ = asr("status", "stuck", "--watch", "--timeout", "1s")
    assert code == EXIT_TIMEOUT and "no verdict within 1s" in out
