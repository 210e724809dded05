"""Shared by the deploy tests that run the real operator (import as tests.deploy.operator_run):
the API emulator with the chart's CRDs and peering objects, the operator started with the
flags and env the chart's Deployment gives it, and a stand-in for the Deployment controller
the emulator lacks."""
from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import yaml

from asr_sandbox.crd_schema import load_crd
from asr_sandbox.kube_emulator import ApiEmulator, EmulatorServer, write_kubeconfig
from asr_sandbox.paths import REPO_ROOT
from asr_sandbox.processes import ManagedProcess
from tests.deploy.chart_render import CHART_DIR, of_kind, render
from tests.support.kube import KubeClient

NAMESPACE = "speech"
TEST_AGENT = "asr-deploy-test"
TOKEN = "deploy-test-token"
RO = ("asr.rollout.dev/v1alpha1", "asrmodelrollouts")


# The headers of the request being served, per aiohttp handler task.
_CALLER: ContextVar[Mapping[str, str] | None] = ContextVar("caller", default=None)


class RecordingEmulator(ApiEmulator):
    """The shared emulator, also noting who sent each logged request: the test itself (by its
    User-Agent) or which operator replica (by the bearer token of its kubeconfig)."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.test_requests: set[int] = set()
        self.credentials: dict[int, str] = {}  # log index -> the Authorization header sent

    async def __call__(self, raw_request: Any) -> Any:
        token = _CALLER.set(raw_request.headers)
        try:
            return await super().__call__(raw_request)
        finally:
            _CALLER.reset(token)

    def _log(self, *args: Any, **kwargs: Any) -> None:
        # Called in the serving task (also when a watch starts), right after the append.
        super()._log(*args, **kwargs)
        headers = _CALLER.get() or {}
        index = len(self.request_log) - 1
        if headers.get("User-Agent") == TEST_AGENT:
            self.test_requests.add(index)
        self.credentials[index] = headers.get("Authorization", "")


@contextmanager
def emulated_cluster(values: dict[str, Any]) -> Iterator[tuple[EmulatorServer, RecordingEmulator, KubeClient]]:
    """The emulator serving the rollout CRD, kopf's peering CRDs and the peering objects the
    chart renders for `values`; a client whose requests are marked as the test's."""
    recorder = RecordingEmulator()
    with EmulatorServer(recorder) as api:
        api.emulator.register_crd(load_crd())
        peering_crds = (CHART_DIR / "crds" / "kopf-peerings.yaml").read_text(encoding="utf-8")
        for crd in yaml.safe_load_all(peering_crds):
            api.emulator.register_crd(crd)
        kube = KubeClient(api.url)
        kube.session.headers["User-Agent"] = TEST_AGENT
        for peering in [o for o in render(values) if o["apiVersion"].startswith("kopf.dev/")]:
            namespace = peering["metadata"].get("namespace")
            plural = "kopfpeerings" if namespace else "clusterkopfpeerings"
            prefix = f"namespaces/{namespace}/" if namespace else ""
            kube._call("POST", f"{api.url}/apis/kopf.dev/v1/{prefix}{plural}", json=peering)
        yield api, recorder, kube


def kubeconfig_for(path: Path, server_url: str, token: str) -> Path:
    """A kubeconfig for the emulator whose user sends `token` (tells replicas apart in the log)."""
    write_kubeconfig(path, server_url)
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    config["users"][0]["user"]["token"] = token
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def chart_operator_args(values: dict[str, Any], webhook_port: int) -> list[str]:
    """The operator's flags exactly as the chart's Deployment passes them; only the ports are
    moved to free ones (metrics off), as several test runs share this machine."""
    (deployment,) = of_kind(render(values), "Deployment")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    args = [a for a in args if not a.startswith(("--metrics-port=", "--webhook-port="))]
    return [*args, "--metrics-port=0", f"--webhook-port={webhook_port}"]


def chart_operator_env(values: dict[str, Any], kubeconfig: Path, pod_name: str) -> dict[str, str]:
    """The env the chart's Deployment sets (values resolved as the kubelet would), plus the
    kubeconfig that stands in for the in-cluster service account."""
    (deployment,) = of_kind(render(values), "Deployment")
    env = dict(os.environ, KUBECONFIG=str(kubeconfig),
               PYTHONPATH=os.pathsep.join(["operator", "sandbox", "."]))
    for var in deployment["spec"]["template"]["spec"]["containers"][0]["env"]:
        source = var.get("valueFrom", {})
        if "value" in var:
            env[var["name"]] = var["value"]
        elif source.get("fieldRef", {}).get("fieldPath") == "metadata.name":
            env[var["name"]] = pod_name
        elif "secretKeyRef" in source:
            env[var["name"]] = TOKEN
        else:
            raise AssertionError(f"the test does not know how to resolve env {var}")
    env.pop("ASR_PEERING_PRIORITY", None)
    return env


def start_operator(values: dict[str, Any], kubeconfig: Path, log_path: Path, pod_name: str,
                   webhook_port: int) -> ManagedProcess:
    argv = [sys.executable, "-m", "asr_operator", *chart_operator_args(values, webhook_port)]
    return ManagedProcess(argv, log_path, env=chart_operator_env(values, kubeconfig, pod_name),
                          cwd=REPO_ROOT).start()


@contextmanager
def deployment_controller(kube: KubeClient) -> Iterator[None]:
    """Plays the Deployment controller the emulator lacks: every Deployment in the namespace
    is marked ready at its desired replicas."""
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(0.2):
            try:
                for deployment in kube.list("apps/v1", "deployments", NAMESPACE):
                    meta, spec = deployment["metadata"], deployment.get("spec") or {}
                    replicas = spec.get("replicas", 1)
                    want = {"readyReplicas": replicas, "replicas": replicas, "updatedReplicas": replicas,
                            "observedGeneration": meta.get("generation")}
                    if any((deployment.get("status") or {}).get(k) != v for k, v in want.items()):
                        kube.patch("apps/v1", "deployments", NAMESPACE, meta["name"], {"status": want},
                                   subresource="status")
            except Exception:  # the operator may be mid-create; try again on the next round
                continue

    thread = threading.Thread(target=run, daemon=True, name="deployment-controller")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


def example_rollout(path: str, name: str) -> dict[str, Any]:
    """An example from examples/, renamed, with manual steps only (no Prometheus here)."""
    obj = yaml.safe_load((REPO_ROOT / path).read_text(encoding="utf-8"))
    obj["metadata"] = {"name": name, "namespace": NAMESPACE}
    obj["spec"].pop("analysis", None)
    obj["spec"]["strategy"] = {"steps": [{"setWeight": 20}, {"pause": {}}, {"setWeight": 100}]}
    obj["spec"]["server"]["replicas"] = 2
    obj["spec"]["rollback"] = {"onAlert": True, "postPromotionWindow": "10m"}
    return obj  # type: ignore[no-any-return]


def http_route(name: str) -> dict[str, Any]:
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {"parentRefs": [{"name": "gw"}], "rules": [{"backendRefs": [
                {"name": f"{name}-stable", "port": 8000, "weight": 100},
                {"name": f"{name}-canary", "port": 8000, "weight": 0}]}]}}


def phase(kube: KubeClient, name: str) -> str | None:
    return (kube.rollout(NAMESPACE, name).get("status") or {}).get("phase")  # type: ignore[no-any-return]
