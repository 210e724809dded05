"""`make bench-operator`: the operator's rollback speed and its scale, as JSON lines.

    {"bench": "rollback_operator_seconds", "value": N, "target": "<= 1.0", ...}
    {"bench": "tick_lag_p99_seconds_200_rollouts", "value": N, "target": "<= 1.0", ...}
    {"bench": "operator_rss_mb_200_rollouts", "value": N, "target": "<= 300", ...}
    {"bench": "accelerators_peak_ratio", "value": N, "target": "<= 1.5", ...}
    {"bench": "accelerators_peak_ratio_stable_full", "value": N, ...}
    {"bench": "stable_ready_min_ratio", "value": N, "target": "1.0", ...}

The last three (canary sizing) are sandbox/asr_sandbox/bench_capacity.py: on a real control
plane when KUBEBUILDER_ASSETS names one, else on the emulator; each line says which.

Everything real that can be here: the operator process (`python -m asr_operator`) talks to the
kmock API emulator (the testbed's subclass) through a kubeconfig over HTTP, and judges canaries
by a real Prometheus scraping a small exporter with the server's metric names; the numbers in
those series are synthetic (a healthy or a failing version on demand). Pods do not exist: the
bench marks Deployments ready itself (the emulator has no Deployment controller).

rollback_operator_seconds: from the start of the analysis tick that reaches the failure limit
(`status.analysis.lastRun`, stamped by the operator when the tick starts) to the moment the
HTTPRoute's canary weight is 0 and the canary ConfigMap points back at the stable model, seen by
polling the API every few ms. Worst of several repetitions.
tick_lag: N rollouts progressing at once (a canary at 10 %, analysis every `--interval`); every
analysis tick's start minus its schedule (previous tick + interval), p99 over all ticks.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import requests
import yaml
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily

from asr_sandbox.kube_emulator import EmulatorServer, write_kubeconfig
from asr_sandbox.paths import CRD_PATH, REPO_ROOT
from asr_sandbox.processes import free_port
from asr_sandbox.prometheus_runner import PrometheusRunner
RO = "apis/asr.rollout.dev/v1alpha1"
NS = "bench"


def emit(name: str, value: float, target: str, **extra: Any) -> None:
    print(json.dumps({"bench": name, "value": round(value, 4), "target": target, **extra}), flush=True)


def parse_rfc3339(text: str) -> float:
    import datetime
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class CanaryExporter:
    """`asr_requests_total` for the canary track of each rollout, at `rps` requests per second,
    a chosen share of them answered 500. Counters grow with wall time, as a real server's do."""

    def __init__(self, rps: float = 20.0):
        self.rps = rps
        self.lock = threading.Lock()
        self.versions: dict[str, tuple[str, float]] = {}  # rollout -> (canary version, error ratio)
        self.totals: dict[tuple[str, str, str], float] = {}
        self.last = time.monotonic()

    def set(self, rollout: str, version: str, error_ratio: float = 0.0) -> None:
        with self.lock:
            self._advance()
            self.versions[rollout] = (version, error_ratio)

    def _advance(self) -> None:
        now = time.monotonic()
        elapsed, self.last = now - self.last, now
        for rollout, (version, error_ratio) in self.versions.items():
            for code, share in (("200", 1 - error_ratio), ("500", error_ratio)):
                key = (rollout, version, code)
                self.totals[key] = self.totals.get(key, 0.0) + elapsed * self.rps * share

    def collect(self) -> Iterator[CounterMetricFamily]:
        with self.lock:
            self._advance()
            family = CounterMetricFamily("asr_requests", "Requests (synthetic)",
                                         labels=["namespace", "rollout", "track", "version", "code", "endpoint", "pod"])
            for (rollout, version, code), value in sorted(self.totals.items()):
                family.add_metric([NS, rollout, "canary", version, code, "/v1/audio/transcriptions",
                                   f"{rollout}-canary-0"], value)
        yield family


class Api:
    def __init__(self, url: str):
        self.url = url
        self.session = requests.Session()

    def call(self, method: str, path: str, body: Any = None, merge: bool = False) -> Any:
        headers = {"Content-Type": "application/merge-patch+json"} if merge else {}
        response = self.session.request(method, f"{self.url}/{path}", json=body, headers=headers, timeout=10)
        if response.status_code >= 400:
            raise RuntimeError(f"{method} {path}: {response.status_code} {response.text[:300]}")
        return response.json()

    def rollout(self, name: str) -> dict[str, Any]:
        rollout: dict[str, Any] = self.call("GET", f"{RO}/namespaces/{NS}/asrmodelrollouts/{name}")
        return rollout

    def status(self, name: str) -> dict[str, Any]:
        return self.rollout(name).get("status") or {}

    def set_version(self, name: str, version: str) -> None:
        self.call("PATCH", f"{RO}/namespaces/{NS}/asrmodelrollouts/{name}",
                  {"spec": {"model": {"version": version, "path": f"paraformer-tiny/{version}"}}}, merge=True)

    def mark_ready(self, deployment: str, count: int) -> None:
        self.call("PATCH", f"apis/apps/v1/namespaces/{NS}/deployments/{deployment}/status",
                  {"status": {"readyReplicas": count, "updatedReplicas": count, "replicas": count}}, merge=True)


def rollout_manifest(name: str, prometheus: str, interval: str, traffic: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "asr.rollout.dev/v1alpha1", "kind": "ASRModelRollout",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "model": {"name": "paraformer-tiny", "version": "v1", "path": "paraformer-tiny/v1"},
            "modelVolume": {"persistentVolumeClaim": {"claimName": "asr-models"}},
            "server": {"image": "asr:bench", "replicas": 2},
            "traffic": traffic,
            "strategy": {"steps": [{"setWeight": 10}, {"pause": {"duration": "1h"}}], "progressDeadlineSeconds": 3600},
            "analysis": {"prometheus": {"address": prometheus}, "interval": interval, "window": "5s",
                         "minRequests": 1, "failureLimit": 1, "inconclusiveLimit": 1000, "errorLimit": 1000,
                         "metrics": [{"name": "error-rate", "max": 0.05}]},
        },
    }


def wait(probe: Any, timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(interval)
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")


@contextlib.contextmanager
def operator(kubeconfig: Path, log_path: Path, namespace: str = NS) -> Iterator[subprocess.Popen[bytes]]:
    """The operator as its own process, watching `namespace`, stopped on leaving."""
    env = dict(os.environ, KUBECONFIG=str(kubeconfig), PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join(str(REPO_ROOT / p) for p in ("operator", "sandbox", ".")))
    with log_path.open("ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "asr_operator", "--standalone", "--disable-scanning",
                                 "--namespace", namespace, "--metrics-port", "0", "--webhook-port", "0"],
                                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT, start_new_session=True)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def bench_rollback(api: Api, exporter: CanaryExporter, prometheus: str, repetitions: int) -> list[float]:
    name = "rb"
    api.call("POST", f"apis/gateway.networking.k8s.io/v1/namespaces/{NS}/httproutes", {
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "rb-route", "namespace": NS},
        "spec": {"rules": [{"backendRefs": [{"name": "rb-stable", "port": 8000}]}]}})
    api.call("POST", f"{RO}/namespaces/{NS}/asrmodelrollouts",
             rollout_manifest(name, prometheus, "1s", {"gatewayAPI": {"httpRoute": "rb-route"}}))
    wait(lambda: api.status(name).get("phase") == "Pending", 60, "rb Pending")
    api.mark_ready("rb-stable", 2)
    wait(lambda: api.status(name).get("phase") == "Succeeded", 60, "rb Succeeded")
    samples = []
    for attempt in range(repetitions):
        version = f"v{attempt + 2}"
        exporter.set(name, version, 0.0)
        api.set_version(name, version)
        wait(lambda: api.status(name).get("canaryVersion") == version, 30, f"canary {version}")
        api.mark_ready("rb-canary", 2)
        wait(lambda: (api.status(name).get("analysis") or {}).get("outcome") == "Successful", 60,
             f"a successful analysis of {version}")
        exporter.set(name, version, 0.5)  # the canary breaks
        route_path = f"apis/gateway.networking.k8s.io/v1/namespaces/{NS}/httproutes/rb-route"
        cm_path = f"api/v1/namespaces/{NS}/configmaps/rb-canary-model"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            refs = api.call("GET", route_path)["spec"]["rules"][0]["backendRefs"]
            weight = next(r.get("weight") for r in refs if r["name"] == "rb-canary")
            config = yaml.safe_load(api.call("GET", cm_path)["data"]["model.yaml"])
            if weight == 0 and config["version"] != version:
                seen = time.time()
                break
            time.sleep(0.003)
        else:
            raise RuntimeError(f"no rollback of {version} within 60 s")
        status = api.status(name)
        started = parse_rfc3339(status["analysis"]["lastRun"])
        assert status["analysis"]["outcome"] == "Failed", status["analysis"]
        samples.append(seen - started)
        wait(lambda: api.status(name).get("phase") == "RolledBack", 30, "RolledBack")
    return samples


def bench_scale(api: Api, server: Any, exporter: CanaryExporter, prometheus: str, count: int,
                interval: float, duration: float, proc: subprocess.Popen[bytes]) -> tuple[list[float], float, float]:
    names = [f"load-{i:03d}" for i in range(count)]
    for name in names:
        exporter.set(name, "v2", 0.0)
        api.call("POST", f"{RO}/namespaces/{NS}/asrmodelrollouts",
                 rollout_manifest(name, prometheus, f"{interval:g}s", {"replicaRatio": {}}))
    wait(lambda: all(api.status(n).get("phase") == "Pending" for n in names), 180, "all Pending", 1.0)
    for name in names:
        api.mark_ready(f"{name}-stable", 2)
    wait(lambda: all(api.status(n).get("phase") == "Succeeded" for n in names), 180, "all Succeeded", 1.0)
    for name in names:
        api.set_version(name, "v2")
    wait(lambda: all(api.status(n).get("canaryVersion") == "v2" for n in names), 180, "all canaries", 1.0)
    for name in names:
        api.mark_ready(f"{name}-canary", 2)
    wait(lambda: all(api.status(n).get("canaryWeight") == 10 for n in names), 180, "all at 10 %", 1.0)
    window_start = time.time()
    cpu_before = cpu_seconds(proc.pid)
    time.sleep(duration)
    window_end = time.time()
    cpu_share = (cpu_seconds(proc.pid) - cpu_before) / duration
    memory = rss_mb(proc.pid)

    from kmock._internal import references
    resource = references.resource("asr.rollout.dev", "v1alpha1", "asrmodelrollouts")

    def runs_of(name: str) -> list[float]:
        obj = server.emulator.objects[resource, NS, name]
        seen: list[str] = []
        for version in obj.history:
            if version is None:
                continue
            last = ((version.raw.get("status") or {}).get("analysis") or {}).get("lastRun")
            if last and (not seen or seen[-1] != last):
                seen.append(last)
        return [parse_rfc3339(t) for t in seen]

    lags: list[float] = []
    phases = set()
    for name in names:
        runs = server.call(runs_of, name)
        phases.add(api.status(name).get("phase"))
        for before, after in zip(runs, runs[1:]):
            if window_start <= after <= window_end:
                lags.append(max(0.0, after - before - interval))
    if not lags:
        raise RuntimeError(f"no analysis ticks measured; phases: {phases}")
    return lags, memory, cpu_share


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rollouts", type=int, default=200)
    parser.add_argument("--interval", type=float, default=5.0, help="analysis interval of the N rollouts (s)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds the N rollouts run measured")
    parser.add_argument("--repetitions", type=int, default=5, help="rollbacks measured")
    parser.add_argument("--only", choices=("all", "speed", "capacity"), default="all",
                        help="speed: rollback and scale lines; capacity: the canary sizing lines")
    parser.add_argument("--pod-start", type=float, default=10.0,
                        help="capacity: seconds a new pod takes to turn ready (a model load)")
    args = parser.parse_args(argv)
    if args.only != "speed":
        from asr_sandbox import bench_capacity
        with tempfile.TemporaryDirectory(prefix="asr-bench-capacity-") as tmp:
            for line in bench_capacity.bench(Path(tmp), args.pod_start):
                print(json.dumps(line), flush=True)
    if args.only == "capacity":
        return 0

    with tempfile.TemporaryDirectory(prefix="asr-bench-operator-") as tmp, contextlib.ExitStack() as stack:
        workdir = Path(tmp)
        server = stack.enter_context(EmulatorServer())
        server.emulator.register_crd(yaml.safe_load(CRD_PATH.read_text()))
        kubeconfig = write_kubeconfig(workdir / "kubeconfig", server.url, NS)
        api = Api(server.url)

        exporter = CanaryExporter()
        registry = CollectorRegistry()
        registry.register(exporter)
        port = free_port()
        http_server, _thread = start_http_server(port, addr="127.0.0.1", registry=registry)
        stack.callback(http_server.shutdown)
        prometheus = stack.enter_context(PrometheusRunner(workdir / "prometheus"))
        prometheus.set_targets("asr-pods", [(f"127.0.0.1:{port}", {})])
        wait(lambda: prometheus.query("up") != [], 60, "the first scrape")

        proc = stack.enter_context(operator(kubeconfig, workdir / "operator.log"))
        try:
            samples = bench_rollback(api, exporter, prometheus.url, args.repetitions)
            emit("rollback_operator_seconds", max(samples), "<= 1.0", median=round(statistics.median(samples), 4),
                 samples=[round(s, 4) for s in samples],
                 note="analysis tick start -> HTTPRoute canary weight 0 and canary ConfigMap reverted; emulator API")
            lags, memory, cpu_share = bench_scale(api, server, exporter, prometheus.url, args.rollouts, args.interval,
                                       args.duration, proc)
            lags.sort()
            p99 = lags[min(len(lags) - 1, int(0.99 * len(lags)))]
            emit(f"tick_lag_p99_seconds_{args.rollouts}_rollouts", p99, "<= 1.0", ticks=len(lags),
                 median=round(statistics.median(lags), 4), interval_s=args.interval, measured_s=args.duration,
                 operator_cpu_cores=round(cpu_share, 3), machine_cpus=os.cpu_count(),
                 load_average_1m=round(os.getloadavg()[0], 2))
            emit(f"operator_rss_mb_{args.rollouts}_rollouts", memory, "<= 300")
        except Exception:
            log = (workdir / "operator.log").read_text(errors="replace")[-3000:]
            print(f"operator log tail:\n{log}", file=sys.stderr)
            raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
