"""The Kubernetes APIs an integration scenario can run against, behind one shape.

- `emulator`: the kmock emulator (fast; no schema validation, no controllers, no GC). The
  fake pods set Deployment status themselves.
- `real`: the session's real control plane (tests/conftest.py), v1.28 kube-apiserver with the
  Deployment, ReplicaSet and garbage-collector controllers; the fake pods act as the kubelet,
  writing pod status. This is the judge where the two disagree.
"""
from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import yaml

from asr_sandbox.control_plane import ControlPlane
from asr_sandbox.crd_schema import load_crd
from asr_sandbox.kube_emulator import EmulatorServer, write_kubeconfig
from tests.support.fake_pods import FakePods
from tests.support.kube import KubeClient

GATEWAY_CRD = Path(__file__).with_name("gateway-api-httproute-crd.yaml")
HTTPROUTE_CRD_NAME = "httproutes.gateway.networking.k8s.io"


def gateway_api_crd() -> dict[str, Any]:
    return yaml.safe_load(GATEWAY_CRD.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


@dataclass
class ApiBackend:
    kind: str  # "emulator" | "real"
    url: str
    kubeconfig: Path
    kube: KubeClient
    pods: FakePods
    emulator: EmulatorServer | None = None
    control_plane: ControlPlane | None = None
    watchers: list["ObjectHistory"] = field(default_factory=list)

    @property
    def real(self) -> bool:
        return self.kind == "real"

    def prepare_namespace(self, namespace: str) -> None:
        """A real API needs the Namespace; record every version of the objects tests inspect
        (the emulator keeps that history itself)."""
        if not self.real:
            return
        self.kube.ensure_namespace(namespace)
        for api_version, plural in (("apps/v1", "deployments"), ("gateway.networking.k8s.io/v1", "httproutes"),
                                    ("asr.rollout.dev/v1alpha1", "asrmodelrollouts")):
            self.watchers.append(ObjectHistory(self.kube, api_version, plural, namespace).start())

    def history_of(self, api_version: str, plural: str, namespace: str, name: str) -> list[dict[str, Any]]:
        """Every stored version of one object, oldest first."""
        if self.emulator is not None:
            from kmock._internal import references
            group, _, version = api_version.rpartition("/")
            res = references.resource(group, version, plural)
            emulator = self.emulator

            def read() -> list[dict[str, Any]]:
                obj = emulator.emulator.objects[res, namespace, name]
                return [dict(v.raw) for v in obj.history if v is not None]
            return emulator.call(read)
        for watcher in self.watchers:
            if (watcher.api_version, watcher.plural, watcher.namespace) == (api_version, plural, namespace):
                return watcher.versions(name)
        raise AssertionError(f"no history recorded for {plural} in {namespace}")

    def stop_watchers(self, namespace: str) -> None:
        for watcher in [w for w in self.watchers if w.namespace == namespace]:
            watcher.stop()
            self.watchers.remove(watcher)


class ObjectHistory:
    """Every version of the objects of one kind in one namespace, as a watch delivers them."""

    def __init__(self, kube: KubeClient, api_version: str, plural: str, namespace: str) -> None:
        self.kube, self.api_version, self.plural, self.namespace = kube, api_version, plural, namespace
        self._versions: dict[str, list[dict[str, Any]]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"watch-{plural}")

    def start(self) -> "ObjectHistory":
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        # Closing a streamed response from another thread blocks while the reader holds it;
        # the watch ends by itself within its timeoutSeconds and the daemon thread then exits.
        self._stop.set()

    def versions(self, name: str) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._versions.get(name, []))

    def _run(self) -> None:
        prefix = "api" if "/" not in self.api_version else "apis"
        url = f"{self.kube.base_url}/{prefix}/{self.api_version}/namespaces/{self.namespace}/{self.plural}"
        resource_version = ""
        while not self._stop.is_set():
            params = {"watch": "true", "timeoutSeconds": "10"}
            if resource_version:
                params["resourceVersion"] = resource_version
            try:
                with self.kube.session.get(url, params=params, stream=True, timeout=(5, 40),
                                           verify=self.kube.verify) as response:
                    if response.status_code == 404:  # the CRD is not installed (yet)
                        self._ready.set()
                        self._stop.wait(1)
                        continue
                    self._ready.set()
                    for line in response.iter_lines():
                        if self._stop.is_set():
                            return
                        event = json.loads(line)
                        obj = event.get("object") or {}
                        if event.get("type") not in ("ADDED", "MODIFIED"):
                            continue
                        resource_version = obj["metadata"]["resourceVersion"]
                        with self._lock:
                            self._versions.setdefault(obj["metadata"]["name"], []).append(obj)
            except (requests.RequestException, ValueError, AttributeError):
                if self._stop.wait(0.5):
                    return


@contextmanager
def emulator_backend(workdir: Path) -> Iterator[ApiBackend]:
    with EmulatorServer() as server:
        server.emulator.register_crd(load_crd())
        with FakePods(server.url) as pods:
            yield ApiBackend("emulator", server.url, write_kubeconfig(workdir / "kubeconfig", server.url),
                             KubeClient(server.url), pods, emulator=server)


@contextmanager
def real_backend(plane: ControlPlane) -> Iterator[ApiBackend]:
    plane.apply_crd(gateway_api_crd())
    kube = KubeClient(plane.url, token=plane.token)
    with FakePods(plane.url, token=plane.token, kubelet=True) as pods:
        backend = ApiBackend("real", plane.url, plane.kubeconfig, kube, pods, control_plane=plane)
        try:
            yield backend
        finally:
            for watcher in backend.watchers:
                watcher.stop()
