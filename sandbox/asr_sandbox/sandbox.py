"""The local sandbox: every moving part of a cluster that the demo needs, on 127.0.0.1.

- the kmock Kubernetes emulator (`asr_sandbox.kube_emulator`, the one the tests use) over real
  HTTP, with the ASRModelRollout CRD registered, and a kubeconfig pointing at it;
- a real Prometheus (file_sd targets: every pod and the operator's metrics port);
- the node agent (pods as real inference-server processes) and the gateway;
- a Service proxy (MOCKED: cluster DNS + kube-proxy) that the pods get as HTTP_PROXY, so a
  stable pod's shadow copies to `http://R-canary.NS.svc:8000` reach the canary pods
  (`asr_sandbox.service_proxy`);
- the operator, unchanged, as a subprocess: `python -m asr_operator --standalone
  --disable-scanning --namespace NS`, talking to the emulator through the kubeconfig.
Everything is stopped on exit, also on Ctrl-C or an error.
"""
from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import requests
import yaml

from asr_sandbox.gateway import Gateway
from asr_sandbox.kube_emulator import EmulatorServer, write_kubeconfig
from asr_sandbox.node_agent import KubeletDelay, NodeAgent
from asr_sandbox.paths import CRD_PATH, REPO_ROOT
from asr_sandbox.processes import free_port, stop_process_group
from asr_sandbox.prometheus_runner import PrometheusRunner
from asr_sandbox.service_proxy import ServiceProxy

# kind -> (API prefix, plural) for what the demo creates.
RESOURCES = {
    "ASRModelRollout": ("/apis/asr.rollout.dev/v1alpha1", "asrmodelrollouts"),
    "HTTPRoute": ("/apis/gateway.networking.k8s.io/v1", "httproutes"),
    "Deployment": ("/apis/apps/v1", "deployments"),
    "ConfigMap": ("/api/v1", "configmaps"),
}


class Api:
    """A few REST calls against the emulator (or any API server reachable without TLS)."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.session = requests.Session()

    def path(self, kind: str, namespace: str, name: str = "") -> str:
        prefix, plural = RESOURCES[kind]
        return f"{self.base_url}{prefix}/namespaces/{namespace}/{plural}" + (f"/{name}" if name else "")

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        response = self.session.post(self.path(obj["kind"], obj["metadata"]["namespace"]), json=obj, timeout=10)
        if response.status_code >= 400:
            raise RuntimeError(f"creating {obj['kind']} {obj['metadata']['name']}: "
                               f"HTTP {response.status_code}: {response.text[:300]}")
        return response.json()

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        response = self.session.get(self.path(kind, namespace, name), timeout=10)
        if response.status_code == 404:
            return None
        response.raise_for_status()
        return response.json()

    def patch(self, kind: str, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        response = self.session.patch(self.path(kind, namespace, name), json=patch, timeout=10,
                                      headers={"Content-Type": "application/merge-patch+json"})
        if response.status_code >= 400:
            raise RuntimeError(f"patching {kind} {name}: HTTP {response.status_code}: {response.text[:300]}")
        return response.json()


class OperatorProcess:
    """The operator, unchanged, in its own process group; output to a log file."""

    def __init__(self, kubeconfig: Path, namespace: str, log_path: Path, config_push: bool = True) -> None:
        self.config_push = config_push
        self.metrics_port = free_port()
        self.webhook_port = free_port()
        self.token = secrets.token_hex(16)
        self.log_path = log_path
        self.kubeconfig = kubeconfig
        self.namespace = namespace
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> "OperatorProcess":
        path = os.pathsep.join([str(REPO_ROOT / "operator"), str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])
        env = dict(os.environ, KUBECONFIG=str(self.kubeconfig), ASR_ALERT_WEBHOOK_TOKEN=self.token,
                   PYTHONPATH=path, PYTHONUNBUFFERED="1")
        argv = [sys.executable, "-m", "asr_operator", "--standalone", "--disable-scanning",
                "--namespace", self.namespace, "--metrics-port", str(self.metrics_port),
                "--webhook-port", str(self.webhook_port)]
        if not self.config_push:
            argv.append("--no-config-push")
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        return self

    @property
    def webhook_url(self) -> str:
        return f"http://127.0.0.1:{self.webhook_port}"

    def wait_webhook(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                if requests.get(self.webhook_url + "/healthz", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the operator's webhook did not answer within {timeout_s:.0f} s; log: {self.log_path}")

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"the operator exited with {self.proc.returncode}:\n{tail}")

    def stop(self) -> None:
        stop_process_group(self.proc, grace=15)


class Sandbox:
    """Start with `with Sandbox(...) as sandbox:`; `api`, `gateway`, `agent`, `operator` are live inside."""

    def __init__(self, models_root: Path, workdir: Path, namespace: str, rollout: str, http_route: str | None,
                 kubelet_delay: KubeletDelay = KubeletDelay(), config_push: bool = True) -> None:
        # kubelet_delay: how late a ConfigMap change reaches a running pod (a real kubelet's
        # pace by default); config_push: the operator's push of the model config to the pods
        # (off: only the kubelet's copy carries a change, the "before" side of bench-e2e).
        self.kubelet_delay = kubelet_delay
        self.config_push = config_push
        self.models_root = Path(models_root)
        self.workdir = Path(workdir)
        self.namespace = namespace
        self.rollout = rollout
        self.http_route = http_route
        self._stack = ExitStack()

    def start(self) -> "Sandbox":
        try:
            self._start()
        except BaseException:
            self._stack.close()
            raise
        return self

    def _start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.emulator = self._stack.enter_context(EmulatorServer())
        self.emulator.emulator.register_crd(yaml.safe_load(CRD_PATH.read_text()))
        self.emulator.emulator.add_namespace(self.namespace)
        self.kubeconfig = write_kubeconfig(self.workdir / "kubeconfig", self.emulator.url, self.namespace)
        self.api = Api(self.emulator.url)
        self.prometheus = self._stack.enter_context(PrometheusRunner(self.workdir / "prometheus"))
        self.service_proxy = self._stack.enter_context(ServiceProxy(
            self.namespace, self.rollout, lambda track: self.agent.endpoints(track)))
        proxy_env = {"HTTP_PROXY": self.service_proxy.url, "http_proxy": self.service_proxy.url,
                     "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
        self.agent = self._stack.enter_context(NodeAgent(
            self.emulator.url, self.namespace, self.rollout, self.models_root, self.workdir / "pods",
            prometheus=self.prometheus, kubelet_delay=self.kubelet_delay, extra_env=proxy_env))
        self.gateway = self._stack.enter_context(Gateway(
            self.emulator.url, self.namespace, self.rollout, self.agent.endpoints, self.http_route))
        self.operator = OperatorProcess(self.kubeconfig, self.namespace, self.workdir / "operator.log",
                                        config_push=self.config_push)
        self._stack.callback(self.operator.stop)
        self.operator.start()
        self.prometheus.set_targets("asr-operator", [(f"127.0.0.1:{self.operator.metrics_port}", {})])
        self.operator.wait_webhook()

    def stop(self) -> None:
        self._stack.close()

    def __enter__(self) -> "Sandbox":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
