"""Canary sizing under `make bench-operator`: GPUs requested and ready capacity during rollouts.

    {"bench": "accelerators_peak_ratio", "value": N, "target": "<= 1.5", ...}
    {"bench": "accelerators_peak_ratio_stable_full", "value": N, ...}
    {"bench": "stable_ready_min_ratio", "value": N, "target": "1.0", ...}

The operator process (`python -m asr_operator`) runs against a real v1.28 control plane when
`KUBEBUILDER_ASSETS` names the binaries (real Deployment and ReplicaSet controllers make real pod
objects; a stand-in kubelet here turns each pod Ready `--pod-start` seconds after it appears),
else against the API emulator (a stand-in Deployment controller counts replicas ready after the
same delay). Each JSON line says which. Every pod asks for one `nvidia.com/gpu`.

accelerators_peak_ratio: a 4-replica Gateway API rollout, steps 10/25/50/100 (each followed by a
`pause: {}` the bench promotes once the weight is written: no Prometheus is needed), from the
version change to the canary's scale-down after the promotion. GPUs requested = sum over the two
Deployments of spec.replicas x GPUs per pod, at every version the API server stored (a watch, in
resourceVersion order); the peak over 4. With `spec.strategy.dynamicStableScale` (the line named
`accelerators_peak_ratio`) and with the default, stable at full size (`..._stable_full`).
stable_ready_min_ratio: the same steps under replicaRatio with pods that take `--pod-start`
(10 s) to turn ready: the lowest (stable readyReplicas + canary readyReplicas) / replicas over the
same span, again from every stored version of both Deployments.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import math
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import requests
import urllib3
import yaml

from asr_sandbox.control_plane import ControlPlane, missing_parts
from asr_sandbox.bench_operator import operator
from asr_sandbox.kube_emulator import EmulatorServer, write_kubeconfig
from asr_sandbox.paths import CRD_PATH, REPO_ROOT

NS = "bench-capacity"
REPLICAS = 4
WEIGHTS = (10, 25, 50, 100)
GPU = "nvidia.com/gpu"
RO_PATH = f"/apis/asr.rollout.dev/v1alpha1/namespaces/{NS}/asrmodelrollouts"
DEPLOYMENTS = f"/apis/apps/v1/namespaces/{NS}/deployments"
# The Gateway API's HTTPRoute, as far as the operator uses it (a real cluster installs the full CRD).
HTTPROUTE_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "httproutes.gateway.networking.k8s.io",
                 "annotations": {"api-approved.kubernetes.io": "https://github.com/kubernetes-sigs/gateway-api/pull/2466"}},
    "spec": {"group": "gateway.networking.k8s.io", "scope": "Namespaced",
             "names": {"kind": "HTTPRoute", "plural": "httproutes", "singular": "httproute", "listKind": "HTTPRouteList"},
             "versions": [{"name": "v1", "served": True, "storage": True, "subresources": {"status": {}},
                           "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}}]},
}

urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)  # the bench's own API server


class Api:
    def __init__(self, url: str, token: str | None = None):
        self.url = url.rstrip("/")
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def call(self, method: str, path: str, body: Any = None, patch: str | None = None) -> Any:
        headers = {"Content-Type": f"application/{patch}+json"} if patch else {}
        # verify per request: a session's verify=False loses to REQUESTS_CA_BUNDLE in the environment
        response = self.session.request(method, self.url + path, json=body, headers=headers, timeout=10,
                                        verify=False)
        if response.status_code >= 400:
            raise RuntimeError(f"{method} {path}: {response.status_code} {response.text[:300]}")
        return response.json()

    def status(self, name: str) -> dict[str, Any]:
        return self.call("GET", f"{RO_PATH}/{name}").get("status") or {}


@contextlib.contextmanager
def cluster(workdir: Path) -> Iterator[tuple[str, Api, Path]]:
    """(kind, admin client, kubeconfig): the real control plane when its binaries are here."""
    if not missing_parts():
        with ControlPlane(workdir / "control-plane") as plane:
            plane.apply_crd(yaml.safe_load(CRD_PATH.read_text()))
            plane.apply_crd(HTTPROUTE_CRD)
            api = Api(plane.url, plane.token)
            api.call("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
            yield "real API (v1.28 kube-apiserver + kube-controller-manager)", api, plane.kubeconfig
        return
    with EmulatorServer() as server:
        server.emulator.register_crd(yaml.safe_load(CRD_PATH.read_text()))
        yield "API emulator (KUBEBUILDER_ASSETS not set)", Api(server.url), \
            write_kubeconfig(workdir / "kubeconfig", server.url, NS)


class PodPlayer:
    """Turns pods ready `delay` seconds after they appear: a kubelet on the real API (pod status),
    a Deployment controller on the emulator (Deployment status). A scale-down removes the newest
    (least ready) pods first, as the ReplicaSet controller does."""

    def __init__(self, api: Api, real: bool, delay: float):
        self.api, self.real, self.delay = api, real, delay
        self.seen: dict[str, float] = {}
        self.starts: dict[str, list[float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="pod-player")

    def __enter__(self) -> "PodPlayer":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            try:
                self._pods() if self.real else self._deployments()
            except (requests.RequestException, RuntimeError, KeyError):
                continue  # mid-change; the next round sees it

    def _pods(self) -> None:
        now = time.monotonic()
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        for pod in self.api.call("GET", f"/api/v1/namespaces/{NS}/pods").get("items") or []:
            meta = pod["metadata"]
            if meta.get("deletionTimestamp"):
                continue
            ready = now - self.seen.setdefault(meta["uid"], now) >= self.delay
            wanted = "True" if ready else "False"
            status = pod.get("status") or {}
            current = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
            if status.get("phase") == "Running" and current.get("Ready") == wanted:
                continue
            conditions = [{"type": kind, "status": "True" if kind in ("PodScheduled", "Initialized") else wanted,
                           "lastTransitionTime": stamp}
                          for kind in ("PodScheduled", "Initialized", "ContainersReady", "Ready")]
            with contextlib.suppress(RuntimeError):  # deleted meanwhile
                self.api.call("PATCH", f"/api/v1/namespaces/{NS}/pods/{meta['name']}/status",
                              {"status": {"phase": "Running", "conditions": conditions, "podIP": "10.244.0.1",
                                          "startTime": stamp}}, patch="strategic-merge-patch")

    def _deployments(self) -> None:
        now = time.monotonic()
        for deployment in self.api.call("GET", DEPLOYMENTS).get("items") or []:
            meta = deployment["metadata"]
            replicas = int((deployment.get("spec") or {}).get("replicas") or 0)
            starts = self.starts.setdefault(meta["name"], [])
            del starts[replicas:]
            starts.extend([now] * (replicas - len(starts)))
            ready = sum(1 for started in starts if now - started >= self.delay)
            want = {"observedGeneration": meta.get("generation"), "replicas": replicas, "updatedReplicas": replicas,
                    "readyReplicas": ready, "availableReplicas": ready}
            if any((deployment.get("status") or {}).get(k) != v for k, v in want.items()):
                self.api.call("PATCH", f"{DEPLOYMENTS}/{meta['name']}/status", {"status": want}, patch="merge-patch")


class DeploymentWatch:
    """Every version of the namespace's Deployments the API server stores, in order (a watch)."""

    def __init__(self, api: Api):
        self.api = api
        self.versions: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True, name="deployment-watch")

    def __enter__(self) -> "DeploymentWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()

    def since(self, resource_version: int) -> list[dict[str, Any]]:
        with self._lock:
            return [v for v in self.versions if int(v["metadata"]["resourceVersion"]) > resource_version]

    def latest_version(self) -> int:
        with self._lock:
            return max((int(v["metadata"]["resourceVersion"]) for v in self.versions), default=0)

    def _run(self) -> None:
        resource_version = ""
        while not self._stop.is_set():
            params = {"watch": "true", "timeoutSeconds": "30", **({"resourceVersion": resource_version}
                                                                     if resource_version else {})}
            try:
                with self.api.session.get(self.api.url + DEPLOYMENTS, params=params, stream=True,
                                          timeout=(5, 60), verify=False) as response:
                    for line in response.iter_lines():
                        if self._stop.is_set():
                            return
                        event = json.loads(line)
                        obj = event.get("object") or {}
                        if event.get("type") in ("ADDED", "MODIFIED"):
                            resource_version = obj["metadata"]["resourceVersion"]
                            with self._lock:
                                self.versions.append(obj)
            except (requests.RequestException, ValueError):
                self._stop.wait(0.3)


def manifest(name: str, traffic: dict[str, Any], **strategy: Any) -> dict[str, Any]:
    steps: list[dict[str, Any]] = []
    for weight in WEIGHTS:
        steps += [{"setWeight": weight}, {"pause": {}}]
    return {
        "apiVersion": "asr.rollout.dev/v1alpha1", "kind": "ASRModelRollout",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "model": {"name": "paraformer-tiny", "version": "v1", "path": "paraformer-tiny/v1"},
            "modelVolume": {"persistentVolumeClaim": {"claimName": "asr-models"}},
            "server": {"image": "asr:bench", "replicas": REPLICAS, "resources": {"limits": {GPU: 1}}},
            "traffic": traffic,
            "strategy": {"steps": steps, "progressDeadlineSeconds": 600, **strategy},
        },
    }


def wait(probe: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.2)
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")


def run_rollout(api: Api, watch: DeploymentWatch, name: str, traffic: dict[str, Any],
                **strategy: Any) -> list[dict[str, Any]]:
    """v1 settled, then v2 through every step (a person promotes each `pause: {}`) to Succeeded
    and the canary gone; the Deployment versions stored meanwhile."""
    api.call("POST", RO_PATH, manifest(name, traffic, **strategy))
    wait(lambda: api.status(name).get("phase") == "Succeeded", 120, f"{name} on v1")
    start = watch.latest_version()
    api.call("PATCH", f"{RO_PATH}/{name}", {"spec": {"model": {"version": "v2", "path": "paraformer-tiny/v2"}}},
             patch="merge-patch")
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        status = api.status(name)
        if status.get("phase") == "Succeeded" and status.get("stableVersion") == "v2":
            canary = api.call("GET", f"{DEPLOYMENTS}/{name}-canary")
            if int(canary["spec"]["replicas"]) == 0 and not (canary.get("status") or {}).get("readyReplicas"):
                time.sleep(1.0)  # the watch delivers the last versions
                return [v for v in watch.since(start) if v["metadata"]["name"].startswith(f"{name}-")]
        manual = any(c.get("type") == "Paused" and c.get("status") == "True" and c.get("reason") == "ManualPause"
                     for c in status.get("conditions") or [])
        notes = (api.call("GET", f"{RO_PATH}/{name}")["metadata"].get("annotations") or {})
        if status.get("phase") == "Paused" and manual and "asr.rollout.dev/promote" not in notes:
            api.call("PATCH", f"{RO_PATH}/{name}", {"metadata": {"annotations": {"asr.rollout.dev/promote": "true"}}},
                     patch="merge-patch")
        time.sleep(0.2)
    raise RuntimeError(f"{name}: v2 not promoted within 600 s: {api.status(name)}")


def replay(versions: list[dict[str, Any]], name: str) -> tuple[int, float]:
    """(peak GPUs requested, lowest ready stable + ready canary) over the stored versions."""
    state = {"stable": (REPLICAS, REPLICAS, 1), "canary": (0, 0, 1)}  # (spec.replicas, readyReplicas, GPUs/pod)
    peak, lowest = REPLICAS, float(REPLICAS)
    for version in versions:
        track = version["metadata"]["name"].removeprefix(f"{name}-")
        if track not in state:
            continue
        container = version["spec"]["template"]["spec"]["containers"][0]
        gpus = int(((container.get("resources") or {}).get("limits") or {}).get(GPU) or 0)
        state[track] = (int(version["spec"].get("replicas") or 0),
                        int((version.get("status") or {}).get("readyReplicas") or 0), gpus)
        peak = max(peak, sum(replicas * per_pod for replicas, _, per_pod in state.values()))
        lowest = min(lowest, sum(ready for _, ready, _ in state.values()))
    return peak, lowest


def bench(workdir: Path, pod_start: float) -> list[dict[str, Any]]:
    """The JSON lines (as dicts) of the capacity benchmarks."""
    lines: list[dict[str, Any]] = []
    with cluster(workdir) as (kind, api, kubeconfig):
        real = kind.startswith("real")
        for name in ("dyn", "full"):
            api.call("POST", f"/apis/gateway.networking.k8s.io/v1/namespaces/{NS}/httproutes", {
                "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                "metadata": {"name": f"{name}-route", "namespace": NS},
                "spec": {"rules": [{"backendRefs": [{"name": f"{name}-stable", "port": 8000}]}]}})
        with DeploymentWatch(api) as watch, PodPlayer(api, real, pod_start), \
                operator(kubeconfig, workdir / "operator.log", NS):
            try:
                common = {"api": kind, "pod_start_s": pod_start, "replicas": REPLICAS, "steps": list(WEIGHTS)}
                peak, _ = replay(run_rollout(api, watch, "dyn", {"gatewayAPI": {"httpRoute": "dyn-route"}},
                                             dynamicStableScale=True), "dyn")
                lines.append({"bench": "accelerators_peak_ratio", "value": round(peak / REPLICAS, 4),
                              "target": "<= 1.5", "peak_gpus": peak, "mode": "gatewayAPI, dynamicStableScale: true",
                              **common})
                peak, _ = replay(run_rollout(api, watch, "full", {"gatewayAPI": {"httpRoute": "full-route"}}), "full")
                bound = REPLICAS + math.ceil(REPLICAS * max(WEIGHTS) / 100)
                lines.append({"bench": "accelerators_peak_ratio_stable_full", "value": round(peak / REPLICAS, 4),
                              "target": f"<= {bound / REPLICAS:g} (replicas + ceil(replicas x max weight / 100))",
                              "peak_gpus": peak, "mode": "gatewayAPI, default (stable at full size)", **common})
                _, lowest = replay(run_rollout(api, watch, "ratio", {"replicaRatio": {}}), "ratio")
                lines.append({"bench": "stable_ready_min_ratio", "value": round(lowest / REPLICAS, 4),
                              "target": "1.0", "lowest_ready_pods": lowest, "mode": "replicaRatio", **common})
            except Exception:
                print(f"operator log tail:\n{(workdir / 'operator.log').read_text(errors='replace')[-3000:]}",
                      file=sys.stderr)
                raise
    return lines
