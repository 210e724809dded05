"""The quality gate end to end: the real operator (a subprocess) against the API emulator,
judging canaries by `golden-cer` and `golden-agreement` read from a real Prometheus that scrapes
real inference servers running real FunASR models (tiny Paraformer versions with a golden set).

Per track, one real server plays the track's pods: it carries the pod labels
(`ASR_NAMESPACE`, `ASR_ROLLOUT`, `ASR_TRACK`, `POD_NAME`) and its model config follows the
track's ConfigMap from the emulator, swapped in like a kubelet updates a ConfigMap volume, so
the server hot-reloads exactly as in a pod. What cannot run here is mocked and only that: the
Deployment controller/kubelet that marks Deployments ready is the testbed's fake pods
(tests/support/fake_pods.py).
"""
from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from asr_sandbox import ConfigMapDir, ServerProcess, model_config
from asr_sandbox.crd_schema import load_crd
from asr_sandbox.kube_emulator import EmulatorServer, write_kubeconfig
from asr_sandbox.prometheus_runner import PrometheusRunner
from tests.golden.conftest import GoldenModels
from tests.support.fake_pods import FakePods
from tests.support.kube import KubeClient, wait_for
from tests.support.operator_process import OperatorProcess, operator_process
from tests.support.rollouts import rollout_manifest, start_new_version, status, wait_phase

pytestmark = pytest.mark.slow

NAMESPACE = "golden"
ROLLOUT = "meeting-zh"          # followed by real servers
SILENT_ROLLOUT = "no-golden"    # no real server: no golden metric is ever reported
TRACKS = ("stable", "canary")


class TrackServer:
    """A real inference server playing one track's pods; its config follows the ConfigMap."""

    def __init__(self, kube: KubeClient, models_root: Path, workdir: Path, track: str) -> None:
        self.kube, self.track = kube, track
        self.cm = ConfigMapDir(workdir / f"{track}-configmap")
        self.cm.swap(model_config("v1", vad=False))   # until the operator writes the ConfigMap
        self.server = ServerProcess(self.cm.path, models_root, workdir / f"{track}-server.log", env={
            "ASR_NAMESPACE": NAMESPACE, "ASR_ROLLOUT": ROLLOUT, "ASR_TRACK": track,
            "POD_NAME": f"{ROLLOUT}-{track}-0"})
        self._seen: str | None = None

    def sync(self) -> None:
        cm = self.kube.get_or_none("v1", "configmaps", NAMESPACE, f"{ROLLOUT}-{self.track}-model")
        text = ((cm or {}).get("data") or {}).get("model.yaml")
        if text and text != self._seen:
            self._seen = text
            self.cm.swap(yaml.safe_load(text))


class KubeletSync:
    """Copies each track's ConfigMap into its server's config directory every 0.3 s."""

    def __init__(self, servers: list[TrackServer]) -> None:
        self.servers = servers
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="configmap-sync", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.3):
            for server in self.servers:
                try:
                    server.sync()
                except Exception as exc:  # reported in failures, the loop goes on
                    self.errors.append(repr(exc))
                    del self.errors[:-20]

    def __enter__(self) -> "KubeletSync":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


@pytest.fixture(scope="module")
def cluster(golden_models: GoldenModels, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[dict[str, Any]]:
    workdir = tmp_path_factory.mktemp("golden-rollout")
    with EmulatorServer() as api:
        api.emulator.register_crd(load_crd())
        kube = KubeClient(api.url)
        servers = [TrackServer(kube, golden_models.root, workdir, track) for track in TRACKS]
        try:
            for server in servers:
                server.server.start()
            with FakePods(api.url) as pods, KubeletSync(servers) as sync, \
                    PrometheusRunner(workdir / "prometheus", targets={"asr-pods": [
                        pods.target, *(s.server.url.removeprefix("http://") for s in servers)]}) as prom:
                operator = operator_process([NAMESPACE], write_kubeconfig(workdir / "kubeconfig", api.url),
                                            workdir / "operator.log").start()
                try:
                    yield {"kube": kube, "pods": pods, "prometheus": prom, "servers": servers,
                           "sync": sync, "operator": operator}
                finally:
                    operator.stop()
        finally:
            for server in servers:
                server.server.stop()


def context(cluster: dict[str, Any], name: str) -> Any:
    def show() -> str:
        operator: OperatorProcess = cluster["operator"]
        servers = "\n".join(f"--- {s.track} server ---\n{s.server.log_tail(15)}" for s in cluster["servers"])
        return (f"status: {status(cluster['kube'], NAMESPACE, name)}\nsync errors: {cluster['sync'].errors}\n"
                f"{servers}\n--- operator ---\n{operator.log_tail(6000)}")
    return show


def metric(final: dict[str, Any], name: str) -> dict[str, Any]:
    return next(m for m in final["analysis"]["metrics"] if m["name"] == name)


def test_other_weights_fail_the_gate_same_weights_pass(cluster: dict[str, Any]) -> None:
    kube, pods = cluster["kube"], cluster["pods"]
    pods.watch(NAMESPACE, ROLLOUT)
    kube.create(rollout_manifest(
        NAMESPACE, ROLLOUT, "v1", cluster["prometheus"].url,
        steps=[{"setWeight": 50}, {"pause": {"duration": "2s"}}], inconclusiveLimit=60,
        metrics=[{"name": "golden-cer", "maxIncrease": 0.02, "max": 0.5},
                 {"name": "golden-agreement", "min": 0.9}]))
    show = context(cluster, ROLLOUT)
    wait_for(lambda: status(kube, NAMESPACE, ROLLOUT).get("phase") == "Succeeded", 60, "v1 stable", context=show)

    # v2: other weights. Its golden CER is far over stable's and the transcripts disagree.
    start_new_version(kube, NAMESPACE, ROLLOUT, "v2")
    final = wait_phase(kube, NAMESPACE, ROLLOUT, "RolledBack", 120, context=show)
    assert final["failedVersion"] == "v2" and final["stableVersion"] == "v1"
    cer = metric(final, "golden-cer")
    assert cer["phase"] == "Failed" and float(cer["value"]) > 0.5, cer
    agreement = metric(final, "golden-agreement")   # both clips transcribed differently
    assert agreement["phase"] == "Failed" and float(agreement["value"]) == 0.0, agreement
    history = [h for h in final.get("history") or [] if h.get("outcome") == "RolledBack"]
    assert history and history[-1]["version"] == "v2"

    # v2-same: v1's weights under a new version name. CER 0 like stable, full agreement: promoted.
    start_new_version(kube, NAMESPACE, ROLLOUT, "v2-same")
    done = wait_for(lambda: (s := status(kube, NAMESPACE, ROLLOUT)).get("phase") == "Succeeded"
                    and s.get("stableVersion") == "v2-same" and s, 120, "v2-same promoted", context=show)
    assert metric(done, "golden-cer")["phase"] == "Successful" and float(metric(done, "golden-cer")["value"]) == 0.0
    assert metric(done, "golden-agreement")["phase"] == "Successful"
    assert float(metric(done, "golden-agreement")["value"]) == 1.0
    # the stable server hot-reloaded the promoted version and reports its golden CER
    stable = cluster["servers"][0].server
    wait_for(lambda: stable.get_json("/v1/models")[1]["serving"]["version"] == "v2-same", 60,
             "the stable server to serve v2-same", context=show)
    assert stable.get_json("/v1/models")[1]["serving"]["golden"]["cer"] == 0.0


def test_no_golden_metric_reported_is_inconclusive_never_promoted(cluster: dict[str, Any]) -> None:
    kube, pods = cluster["kube"], cluster["pods"]
    pods.watch(NAMESPACE, SILENT_ROLLOUT)   # pods get ready and serve traffic, but no server reports
    kube.create(rollout_manifest(
        NAMESPACE, SILENT_ROLLOUT, "v1", cluster["prometheus"].url,
        steps=[{"setWeight": 50}, {"pause": {"duration": "1s"}}], inconclusiveLimit=3,
        metrics=[{"name": "golden-cer", "maxIncrease": 0.02}]))
    show = context(cluster, SILENT_ROLLOUT)
    wait_for(lambda: status(kube, NAMESPACE, SILENT_ROLLOUT).get("phase") == "Succeeded", 60, "v1 stable",
             context=show)
    start_new_version(kube, NAMESPACE, SILENT_ROLLOUT, "v2")
    paused = wait_phase(kube, NAMESPACE, SILENT_ROLLOUT, "Paused", 60, context=show)
    cer = metric(paused, "golden-cer")
    assert cer["phase"] == "Inconclusive" and "no canary pod has reported" in cer["message"], cer
    assert paused["stableVersion"] == "v1"
    assert not any(h.get("version") == "v2" and h.get("outcome") == "Promoted" for h in paused.get("history") or [])
