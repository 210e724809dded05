"""A local node agent: the kubelet and Deployment controller of the sandbox.

It watches (polls) the API emulator's Deployments of one rollout and runs each pod as a real
`python -m inference_server` process on 127.0.0.1 (a free port per pod):
- the pod template's args, env and volumes are honoured: the ConfigMap volume becomes a
  directory laid out as the kubelet lays it out (`model.yaml -> ..data/model.yaml`, `..data`
  swapped atomically on every ConfigMap change), so promotion and rollback go through the
  server's real hot-reload path; the models volume becomes the local models directory;
  `fieldRef` env (namespace, pod name) is filled in as the downward API does, `secretKeyRef`
  env from the Secret;
- a changed ConfigMap reaches a running pod's folder only at that pod's next kubelet sync
  (`KubeletDelay`: by default drawn like a real kubelet's, up to its 60 s sync period plus the
  pod worker's jitter, per pod), so the times the demo and the end-to-end tests print are the
  times a cluster would show; a starting pod reads the current ConfigMap at once, as a real
  one does;
- each pod is also a Pod object in the API (labels of its template, `status.podIP`
  127.0.0.1, the container port `http` = the pod's own local port), so whatever addresses pods
  through the API (the operator's config push) reaches these processes the way it reaches pods
  in a cluster;
- `spec.replicas` is honoured by starting and stopping processes (highest index first; a
  stopping pod leaves the gateway's endpoints before it gets SIGTERM, as with a real Service);
- readiness (`GET /readyz`) is reported into the Deployment's `status` through `/status`;
- every pod's `/metrics` is handed to Prometheus through its file_sd targets file.

A pod process that exits by itself is restarted and counted: `restarts` is what the demo's
"no pod restarted by a promotion" check reads, together with each pod's process id.
"""
from __future__ import annotations

import base64
import logging
import os
import random
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable
from typing import Any

import requests
import yaml

from asr_sandbox import ConfigMapDir
from asr_sandbox.processes import free_port, stop_process_group
from asr_sandbox.prometheus_runner import PrometheusRunner

log = logging.getLogger("asr_sandbox.node_agent")
ROLLOUT_LABEL = "asr.rollout.dev/rollout"
TRACK_LABEL = "asr.rollout.dev/track"
_LISTEN = re.compile(r"listening on 127\.0\.0\.1:(\d+)")


@dataclass(frozen=True)
class KubeletDelay:
    """How long a changed ConfigMap takes to reach a running pod's volume.

    The kubelet refreshes a pod's ConfigMap volumes when it syncs that pod: every
    `--sync-frequency` (60 s by default), each pod worker re-queued with a jitter of up to half
    the period (`workerResyncIntervalJitterFactor` 0.5). A change lands at a uniformly random
    point of the current interval, so the delay is uniform over [0, period x (1 + jitter u)]:
    up to 90 s, the 60-90 s users report. `sync_period_s=0` projects at once (the old sandbox).
    """

    sync_period_s: float = 60.0
    jitter_factor: float = 0.5

    def draw(self, rng: random.Random) -> float:
        if self.sync_period_s <= 0:
            return 0.0
        interval = self.sync_period_s * (1.0 + self.jitter_factor * rng.random())
        return rng.uniform(0.0, interval)


IMMEDIATE = KubeletDelay(sync_period_s=0.0)


@dataclass(frozen=True)
class Endpoint:
    pod: str
    track: str
    url: str


@dataclass
class PodProcess:
    """One pod: its process, its ConfigMap directory and what the agent knows about it."""

    name: str
    deployment: str
    track: str
    workdir: Path
    config_dir: ConfigMapDir
    proc: subprocess.Popen[bytes] | None = None
    port: int | None = None
    ready: bool = False
    terminating: bool = False
    starts: int = 0
    pids: list[int] = field(default_factory=list)
    config_text: str | None = None
    sync_due: float | None = None  # when the kubelet's next sync projects a changed ConfigMap
    pod_object: bool = False  # the Pod object exists in the API
    # One log per process, never appended to: the port is read from the current process's log.
    log_path: Path = Path("/dev/null")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def resolve_env(template_env: list[dict[str, Any]], namespace: str, pod: str,
                secret: Callable[[str, str], str | None] | None = None) -> dict[str, str]:
    """Container env as the kubelet sets it: plain values, the downward API's
    `metadata.namespace` / `metadata.name` field references, and `secretKeyRef` values read
    through `secret(name, key)` (None: the Secret or key is missing, the pod cannot start)."""
    fields = {"metadata.namespace": namespace, "metadata.name": pod}
    env: dict[str, str] = {}
    for item in template_env:
        if "value" in item:
            env[item["name"]] = str(item["value"])
        elif "secretKeyRef" in (item.get("valueFrom") or {}):
            ref = item["valueFrom"]["secretKeyRef"]
            value = secret(ref["name"], ref["key"]) if secret is not None else None
            if value is None and ref.get("optional"):
                continue  # as the kubelet does: an optional reference that is missing sets nothing
            if value is None:
                raise LookupError(f"env {item['name']}: Secret {ref['name']} key {ref['key']} not found "
                                  "(a real pod waits in CreateContainerConfigError)")
            env[item["name"]] = value
        else:
            path = ((item.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath")
            if path not in fields:
                raise ValueError(f"env {item.get('name')}: only fieldRef {sorted(fields)} is supported "
                                 f"by the sandbox node agent, got {item.get('valueFrom')!r}")
            env[item["name"]] = fields[path]
    return env


def map_args(args: list[str], mounts: dict[str, Path]) -> list[str]:
    """Rewrite container paths under a volume's mountPath to the local directory serving it."""
    mapped = []
    for arg in args:
        for mount_path, local in sorted(mounts.items(), key=lambda kv: -len(kv[0])):
            if arg == mount_path or arg.startswith(mount_path.rstrip("/") + "/"):
                arg = str(local) + arg[len(mount_path.rstrip("/")):]
                break
        mapped.append(arg)
    return mapped


def deployment_status(deployment: dict[str, Any], pods: list[PodProcess]) -> dict[str, Any]:
    """The status a Deployment controller would report for these pods."""
    live = [p for p in pods if not p.terminating]
    ready = sum(1 for p in live if p.ready)
    return {
        "observedGeneration": (deployment.get("metadata") or {}).get("generation"),
        "replicas": len(live),
        "updatedReplicas": len(live),
        "readyReplicas": ready,
        "availableReplicas": ready,
    }


class NodeAgent:
    """Runs the pods of rollout `rollout` in `namespace`. `start()` runs the loop in a thread."""

    def __init__(self, api_url: str, namespace: str, rollout: str, models_root: Path, workdir: Path,
                 prometheus: PrometheusRunner | None = None, poll_s: float = 0.3,
                 extra_server_args: list[str] | None = None, kubelet_delay: KubeletDelay = KubeletDelay(),
                 seed: int | None = None, extra_env: dict[str, str] | None = None) -> None:
        # extra_env: set in every pod's env before the template's own (the sandbox's HTTP_PROXY
        # to its Service proxy: asr_sandbox.service_proxy).
        self.extra_env = dict(extra_env or {})
        self.api_url = api_url.rstrip("/")
        self.namespace = namespace
        self.rollout = rollout
        self.models_root = Path(models_root).resolve()
        self.workdir = Path(workdir)
        self.prometheus = prometheus
        self.poll_s = poll_s
        self.extra_server_args = extra_server_args or []
        self.kubelet_delay = kubelet_delay
        self._rng = random.Random(seed)
        self.projections: list[tuple[str, float, float]] = []  # (pod, ConfigMap seen changed, projected)
        self._seen_at: dict[str, float] = {}
        self._secrets: dict[str, dict[str, Any]] = {}
        self.pods: dict[str, PodProcess] = {}
        self.restarts: dict[str, int] = {}
        self.operator_target: str | None = None
        self._endpoints: tuple[Endpoint, ...] = ()
        self._session = requests.Session()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="node-agent", daemon=True)
        self._stoppers: list[threading.Thread] = []
        self._last_status: dict[str, dict[str, Any]] = {}
        self._last_targets: list[tuple[str, dict[str, str]]] | None = None
        self.errors = 0
        self._spawned = 0

    # --- what others read ---------------------------------------------------------------

    def endpoints(self, track: str | None = None) -> list[Endpoint]:
        """Ready, not-terminating pods (a Service's endpoints)."""
        return [e for e in self._endpoints if track is None or e.track == track]

    def pod_pids(self) -> dict[str, list[int]]:
        return {name: list(pod.pids) for name, pod in self.pods.items()}

    # --- the loop -----------------------------------------------------------------------

    def start(self) -> "NodeAgent":
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sync_once()
            except requests.RequestException as error:
                self.errors += 1
                log.debug("node agent: API unreachable: %s", error)
            except Exception:  # keep the node alive; the log says what went wrong
                self.errors += 1
                log.exception("node agent sync failed")
            self._stop.wait(self.poll_s)

    def _get(self, path: str) -> dict[str, Any]:
        response = self._session.get(self.api_url + path, timeout=5)
        response.raise_for_status()
        return response.json()

    def sync_once(self) -> None:
        deployments = [d for d in self._get(f"/apis/apps/v1/namespaces/{self.namespace}/deployments")["items"]
                       if (d["metadata"].get("labels") or {}).get(ROLLOUT_LABEL) == self.rollout]
        configmaps = {c["metadata"]["name"]: c
                      for c in self._get(f"/api/v1/namespaces/{self.namespace}/configmaps")["items"]}
        self._secrets = {s["metadata"]["name"]: s
                         for s in self._get(f"/api/v1/namespaces/{self.namespace}/secrets")["items"]}
        for deployment in deployments:
            self._reconcile(deployment, configmaps)
        wanted = {d["metadata"]["name"] for d in deployments}
        for name, pod in list(self.pods.items()):  # a deleted Deployment takes its pods along
            if pod.deployment not in wanted and not pod.terminating:
                self._terminate(pod)
        self._probe()
        for deployment in deployments:
            self._report(deployment)
        self._publish()

    def _reconcile(self, deployment: dict[str, Any], configmaps: dict[str, dict[str, Any]]) -> None:
        name = deployment["metadata"]["name"]
        replicas = int((deployment.get("spec") or {}).get("replicas") or 0)
        template = deployment["spec"]["template"]
        track = (template["metadata"].get("labels") or {}).get(TRACK_LABEL, "")
        container = template["spec"]["containers"][0]
        volumes = {v["name"]: v for v in template["spec"].get("volumes") or []}
        current = sorted((p for p in list(self.pods.values()) if p.deployment == name and not p.terminating),
                         key=lambda p: p.name)
        for index in range(replicas):
            pod_name = f"{name}-{index}"
            if pod_name not in self.pods or self.pods[pod_name].terminating:
                if pod_name in self.pods:
                    continue  # the previous pod of that name is still draining
                workdir = self.workdir / pod_name
                workdir.mkdir(parents=True, exist_ok=True)
                self.pods[pod_name] = PodProcess(pod_name, name, track, workdir,
                                                 ConfigMapDir(workdir / "model-config"))
        for pod in current[replicas:]:
            self._terminate(pod)
        for index in range(replicas):
            member = self.pods.get(f"{name}-{index}")
            if member is None or member.terminating:
                continue
            text = self._configmap_text(volumes, configmaps)
            self._project(member, text)
            if member.config_text is None:
                continue  # a pod whose ConfigMap does not exist yet waits (ContainerCreating)
            if member.proc is None or member.proc.poll() is not None:
                if member.proc is not None:
                    self.restarts[member.name] = self.restarts.get(member.name, 0) + 1
                    log.warning("pod %s exited with %s; restarting", member.name, member.proc.returncode)
                try:
                    self._spawn(member, container, volumes)
                except LookupError as error:  # e.g. its Secret is not there yet: try again next sync
                    log.info("pod %s cannot start yet: %s", member.name, error)
                    continue
                self._ensure_pod_object(member, template)

    def _project(self, pod: PodProcess, text: str | None) -> None:
        """The kubelet's ConfigMap volume refresh: at once for a pod not started yet, else at the
        pod's next sync, with whatever the ConfigMap holds then (a newer change meanwhile wins)."""
        if text is None or text == pod.config_text:
            pod.sync_due = None
            return
        now = time.monotonic()
        if pod.config_text is not None:
            if pod.sync_due is None:
                pod.sync_due = now + self.kubelet_delay.draw(self._rng)
                self._seen_at[pod.name] = now
            if now < pod.sync_due:
                return
            self.projections.append((pod.name, self._seen_at.pop(pod.name, now), now))
            log.info("pod %s: ConfigMap change projected after %.1f s (kubelet sync)", pod.name,
                     now - self.projections[-1][1])
        pod.config_dir.swap(yaml.safe_load(text))  # the kubelet's atomic ..data swap
        pod.config_text = text
        pod.sync_due = None

    def _secret_value(self, name: str, key: str) -> str | None:
        data = (self._secrets.get(name) or {}).get("data") or {}
        if key not in data:
            return None
        return base64.b64decode(data[key]).decode()

    def _pods_path(self, name: str = "") -> str:
        return f"{self.api_url}/api/v1/namespaces/{self.namespace}/pods" + (f"/{name}" if name else "")

    def _ensure_pod_object(self, pod: PodProcess, template: dict[str, Any]) -> None:
        """The Pod in the API, as the scheduler and kubelet leave it: the template's labels, the
        container port `http` (this pod's own local port: the sandbox's stand-in for a pod IP
        of its own), `status.podIP` 127.0.0.1 and phase Running."""
        if pod.pod_object:
            return
        body: dict[str, Any] = {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod.name, "namespace": self.namespace,
                         "labels": dict(template["metadata"].get("labels") or {})},
            "spec": {"containers": [{"name": "inference-server",
                                     "ports": [{"name": "http", "containerPort": pod.port}]}]},
        }
        response = self._session.post(self._pods_path(), json=body, timeout=5)
        if response.status_code == 409:
            response = self._session.put(self._pods_path(pod.name), json=body, timeout=5)
        response.raise_for_status()
        response = self._session.patch(self._pods_path(pod.name) + "/status",
                                       json={"status": {"podIP": "127.0.0.1", "phase": "Running"}},
                                       headers={"Content-Type": "application/merge-patch+json"}, timeout=5)
        response.raise_for_status()
        pod.pod_object = True

    def _delete_pod_object(self, pod: PodProcess) -> None:
        if not pod.pod_object:
            return
        try:
            self._session.delete(self._pods_path(pod.name), timeout=5)
        except requests.RequestException as error:
            log.debug("pod %s: could not delete its Pod object: %s", pod.name, error)
        pod.pod_object = False

    @staticmethod
    def _configmap_text(volumes: dict[str, Any], configmaps: dict[str, dict[str, Any]]) -> str | None:
        for volume in volumes.values():
            if "configMap" in volume:
                cm = configmaps.get(volume["configMap"]["name"])
                if cm is not None:
                    return str((cm.get("data") or {}).get("model.yaml") or "") or None
        return None

    def _spawn(self, pod: PodProcess, container: dict[str, Any], volumes: dict[str, Any]) -> None:
        mounts: dict[str, Path] = {}
        for mount in container.get("volumeMounts") or []:
            volume = volumes.get(mount["name"]) or {}
            mounts[mount["mountPath"]] = pod.config_dir.root if "configMap" in volume else self.models_root
        env = dict(os.environ, PYTHONUNBUFFERED="1", **self.extra_env,
                   **resolve_env(container.get("env") or [], self.namespace, pod.name, self._secret_value))
        if pod.port is None:
            pod.port = free_port()  # the pod's own port for its whole life (its "pod IP")
        argv = [sys.executable, "-m", "inference_server", *map_args(list(container.get("args") or []), mounts),
                "--host", "127.0.0.1", "--port", str(pod.port), *self.extra_server_args]
        pod.starts += 1
        self._spawned += 1
        pod.log_path = pod.workdir / f"server-{self._spawned}.log"
        with pod.log_path.open("ab") as log_file:
            pod.proc = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT, env=env,
                                        start_new_session=True)
        pod.ready = False
        pod.pids.append(pod.proc.pid)
        log.info("pod %s started (pid %d)", pod.name, pod.proc.pid)

    def _terminate(self, pod: PodProcess) -> None:
        """Out of the endpoints first, then SIGTERM after a moment (endpoint propagation)."""
        pod.terminating = True
        pod.ready = False
        self._delete_pod_object(pod)

        def stop() -> None:
            time.sleep(1.0)
            stop_process_group(pod.proc, grace=30)
            if self.pods.get(pod.name) is pod:
                del self.pods[pod.name]

        thread = threading.Thread(target=stop, name=f"stop-{pod.name}", daemon=True)
        self._stoppers.append(thread)
        thread.start()

    def _probe(self) -> None:
        for pod in list(self.pods.values()):
            if pod.terminating or pod.proc is None:
                continue
            if pod.proc.poll() is not None:
                pod.ready = False
                continue
            if pod.port is None or not _LISTEN.search(pod.log_path.read_text(errors="replace")):
                continue  # not listening yet
            try:
                pod.ready = self._session.get(pod.url + "/readyz", timeout=1).status_code == 200
            except requests.RequestException:
                pod.ready = False

    def _report(self, deployment: dict[str, Any]) -> None:
        name = deployment["metadata"]["name"]
        status = deployment_status(deployment, [p for p in list(self.pods.values()) if p.deployment == name])
        live = deployment.get("status") or {}
        if all(live.get(k) == v for k, v in status.items()) and self._last_status.get(name) == status:
            return
        response = self._session.patch(
            f"{self.api_url}/apis/apps/v1/namespaces/{self.namespace}/deployments/{name}/status",
            json={"status": status}, headers={"Content-Type": "application/merge-patch+json"}, timeout=5)
        response.raise_for_status()
        self._last_status[name] = status

    def _publish(self) -> None:
        self._endpoints = tuple(Endpoint(p.name, p.track, p.url) for p in sorted(list(self.pods.values()), key=lambda p: p.name)
                                if p.ready and not p.terminating and p.port is not None)
        if self.prometheus is None:
            return
        targets = [(f"127.0.0.1:{p.port}", {"sandbox_pod": p.name}) for p in list(self.pods.values())
                   if p.port is not None and not p.terminating]
        if targets != self._last_targets:
            self.prometheus.set_targets("asr-pods", targets)
            self._last_targets = targets

    # --- shutdown -------------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)
        for pod in list(self.pods.values()):
            if not pod.terminating:
                self._terminate(pod)
        for thread in self._stoppers:
            thread.join(40)

    def __enter__(self) -> "NodeAgent":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
