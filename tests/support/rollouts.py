"""Builders and probes for ASRModelRollout integration scenarios (short intervals, small
windows, so that each scenario takes seconds)."""
from __future__ import annotations

from typing import Any

import yaml

from tests.support.kube import KubeClient, wait_for

RO = ("asr.rollout.dev/v1alpha1", "asrmodelrollouts")
MODEL = "paraformer-tiny"


def model(version: str) -> dict[str, Any]:
    return {"name": MODEL, "version": version, "path": f"{MODEL}/{version}"}


def rollout_manifest(namespace: str, name: str, version: str, prometheus_url: str,
                     steps: list[dict[str, Any]] | None = None, gateway_route: str | None = None,
                     replicas: int = 2, **analysis: Any) -> dict[str, Any]:
    # The operator measures as soon as a weight is set, before a new canary can have served
    # minRequests: a generous inconclusiveLimit keeps those first ticks from pausing the rollout
    # (tests about the inconclusive pause set their own, smaller limit).
    settings = {"interval": "1s", "window": "4s", "minRequests": 10, "failureLimit": 2,
                "inconclusiveLimit": 10, "errorLimit": 3}
    settings.update(analysis)
    return {
        "apiVersion": "asr.rollout.dev/v1alpha1", "kind": "ASRModelRollout",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "model": model(version),
            "modelVolume": {"persistentVolumeClaim": {"claimName": "asr-models", "readOnly": True}},
            "server": {"image": "registry.example/asr-inference-server:0.1.0", "replicas": replicas,
                       "resources": {"limits": {"nvidia.com/gpu": 1}}},
            "traffic": {"gatewayAPI": {"httpRoute": gateway_route}} if gateway_route else {"replicaRatio": {}},
            "strategy": {"steps": steps or [{"setWeight": 50}, {"pause": {"duration": "3s"}}],
                         "progressDeadlineSeconds": 60},
            "analysis": {"prometheus": {"address": prometheus_url},
                         "metrics": [{"name": "error-rate", "max": 0.05},
                                     {"name": "p99-latency-seconds", "max": 1.0}],
                         **settings},
        },
    }


def http_route(namespace: str, name: str, rollout: str) -> dict[str, Any]:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"parentRefs": [{"name": "gateway"}],
                 "rules": [{"backendRefs": [{"name": f"{rollout}-stable", "port": 8000}]}]},
    }


def status(kube: KubeClient, namespace: str, name: str) -> dict[str, Any]:
    return kube.rollout(namespace, name).get("status") or {}


def condition(status_: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return next((c for c in status_.get("conditions") or [] if c.get("type") == kind), None)


def config_of(kube: KubeClient, namespace: str, name: str, track: str) -> dict[str, Any]:
    cm = kube.get("v1", "configmaps", namespace, f"{name}-{track}-model")
    return yaml.safe_load(cm["data"]["model.yaml"])


def replicas_of(kube: KubeClient, namespace: str, name: str, track: str) -> int:
    return int(kube.get("apps/v1", "deployments", namespace, f"{name}-{track}")["spec"]["replicas"])


def wait_phase(kube: KubeClient, namespace: str, name: str, phases: str | tuple[str, ...],
               timeout: float, context: Any = None) -> dict[str, Any]:
    wanted = (phases,) if isinstance(phases, str) else phases

    def probe() -> dict[str, Any] | None:
        current = status(kube, namespace, name)
        return current if current.get("phase") in wanted else None
    return wait_for(probe, timeout, f"{namespace}/{name} to reach phase {wanted}", context=context)


def start_new_version(kube: KubeClient, namespace: str, name: str, version: str) -> None:
    kube.patch(*RO, namespace, name, {"spec": {"model": model(version)}})
