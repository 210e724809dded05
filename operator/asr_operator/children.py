"""Pure builders of the objects a rollout owns (names, labels and env per docs/contracts.md).

Nothing about a model version goes into a pod template: a version change is a ConfigMap change
the server hot-reloads, so promoting a model never restarts a stable pod. The version shows on
the Deployment's and ConfigMap's own labels instead. Each track's pod template (image, resources,
env, model volume) is the one its revision names (`PodTemplate`): the canary runs the new one,
stable keeps its own until promotion.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml

from .kube import API_VERSION, KIND
from .spec import ModelRef, PodTemplate

SERVER_PORT = 8000
CONFIG_KEY = "model.yaml"
CONFIG_DIR = "/etc/asr/model"
MODELS_ROOT = "/models"
TRACKS = ("stable", "canary")


MODEL_REVISION_ANNOTATION = "asr.rollout.dev/model-revision"


def configmap_name(rollout: str, track: str) -> str:
    return f"{rollout}-{track}-model"


def deployment_name(rollout: str, track: str) -> str:
    return f"{rollout}-{track}"


def common_labels(rollout: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "asr-inference-server",
        "app.kubernetes.io/instance": rollout,
        "app.kubernetes.io/managed-by": "asr-rollout",
        "asr.rollout.dev/rollout": rollout,
    }


def track_labels(rollout: str, track: str) -> dict[str, str]:
    return {**common_labels(rollout), "asr.rollout.dev/track": track}


def owner_references(owner: Mapping[str, Any]) -> list[dict[str, Any]]:
    meta = owner.get("metadata") or {}
    ref: dict[str, Any] = {"apiVersion": API_VERSION, "kind": KIND, "name": meta.get("name"),
                           "controller": True, "blockOwnerDeletion": True}
    if meta.get("uid"):
        ref["uid"] = meta["uid"]
    return [ref]


def admin_secret_name(rollout: str) -> str:
    """The Secret holding the token of the pods' admin endpoints (asr_operator.config_push)."""
    return f"{rollout}-admin-token"


def canary_url(namespace: str, rollout: str) -> str:
    """The canary track's Service, the only place a stable pod sends shadow copies to."""
    return f"http://{deployment_name(rollout, 'canary')}.{namespace}.svc:{SERVER_PORT}"


def shadow_config(namespace: str, rollout: str, track: str, percent: int | None) -> dict[str, Any] | None:
    """The stable track's copy setting while a shadow stage runs; None otherwise."""
    return {"url": canary_url(namespace, rollout), "percent": percent} if percent and track == "stable" else None


def model_config(model: ModelRef, revision: int | None = None,
                 shadow: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The model config file the server reads (docs/contracts.md, `model.yaml`); `revision`:
    the operator's write counter (asr_operator.config_push.plan_revision); `shadow`: the
    stable track's copy setting in a shadow stage ({url, percent}); the server applies it
    without reloading the model, and its removal stops the copies."""
    config: dict[str, Any] = {"name": model.name, "version": model.version, "path": model.path}
    if revision is not None:
        config["revision"] = revision
    if model.sha256:
        config["sha256"] = model.sha256
    if model.vad_path:
        config["vad_path"] = model.vad_path
    if model.options:
        config["options"] = dict(model.options)
    if shadow:
        config["shadow"] = dict(shadow)
    return config


def model_from_configmap(configmap: Mapping[str, Any] | None) -> ModelRef | None:
    """Which model a live ConfigMap points at (None when absent or unreadable)."""
    if not configmap:
        return None
    text = (configmap.get("data") or {}).get(CONFIG_KEY)
    if not text:
        return None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError:
        return None
    if not isinstance(data, dict) or not data.get("version"):
        return None
    return ModelRef(name=str(data.get("name", "")), version=str(data["version"]), path=str(data.get("path", "")),
                    sha256=data.get("sha256") or None, vad_path=data.get("vad_path") or None,
                    options=dict(data.get("options") or {}))


def configmap(namespace: str, rollout: str, track: str, model: ModelRef,
              owner: Mapping[str, Any], revision: int | None = None,
              shadow_percent: int | None = None) -> dict[str, Any]:
    shadow = shadow_config(namespace, rollout, track, shadow_percent)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": configmap_name(rollout, track),
            "namespace": namespace,
            "labels": {**track_labels(rollout, track), "asr.rollout.dev/version": model.version},
            "ownerReferences": owner_references(owner),
        },
        "data": {CONFIG_KEY: yaml.safe_dump(model_config(model, revision, shadow), sort_keys=True)},
    }


def _env(rollout: str, track: str, template: PodTemplate) -> list[dict[str, Any]]:
    fixed: list[dict[str, Any]] = [
        {"name": "ASR_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "ASR_ROLLOUT", "value": rollout},
        {"name": "ASR_TRACK", "value": track},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        # The operator's config push authenticates with it (asr_operator.config_push).
        # Optional: a pod never waits for it; one started without it converges through the file.
        {"name": "ASR_ADMIN_TOKEN", "valueFrom": {"secretKeyRef": {"name": admin_secret_name(rollout), "key": "token",
                                                                   "optional": True}}},
    ]
    ours = {item["name"] for item in fixed}
    return fixed + [dict(item) for item in template.env if item.get("name") not in ours]


def deployment(namespace: str, rollout: str, track: str, replicas: int, version: str,
               template: PodTemplate, owner: Mapping[str, Any], model_revision: str | None = None) -> dict[str, Any]:
    labels = track_labels(rollout, track)
    container: dict[str, Any] = {
        "name": "inference-server",
        "image": template.image,
        "args": ["--model-config", f"{CONFIG_DIR}/{CONFIG_KEY}", "--models-root", MODELS_ROOT],
        "ports": [{"name": "http", "containerPort": SERVER_PORT}],
        "env": _env(rollout, track, template),
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"},
                           "periodSeconds": 2, "failureThreshold": 2},
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"},
                          "periodSeconds": 10, "failureThreshold": 3},
        "volumeMounts": [
            {"name": "models", "mountPath": MODELS_ROOT, "readOnly": True},
            {"name": "model-config", "mountPath": CONFIG_DIR, "readOnly": True},
        ],
    }
    if template.resources:
        container["resources"] = dict(template.resources)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": deployment_name(rollout, track),
            "namespace": namespace,
            "labels": {**labels, "asr.rollout.dev/version": version},
            "ownerReferences": owner_references(owner),
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"asr.rollout.dev/rollout": rollout, "asr.rollout.dev/track": track}},
            "template": {
                # stableUpdate rolling: a new model revision here makes Kubernetes replace the pods
                "metadata": {"labels": labels, **({"annotations": {MODEL_REVISION_ANNOTATION: model_revision}}
                                                  if model_revision else {})},
                "spec": {
                    "containers": [container],
                    "volumes": [
                        {"name": "models", **dict(template.model_volume)},
                        {"name": "model-config", "configMap": {"name": configmap_name(rollout, track)}},
                    ],
                },
            },
        },
    }


def _service(namespace: str, name: str, labels: dict[str, str], selector: dict[str, str],
             owner: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "labels": labels,
                     "ownerReferences": owner_references(owner)},
        "spec": {"selector": selector,
                 "ports": [{"name": "http", "port": SERVER_PORT, "targetPort": "http"}]},
    }


def track_service(namespace: str, rollout: str, track: str, owner: Mapping[str, Any]) -> dict[str, Any]:
    return _service(namespace, deployment_name(rollout, track), track_labels(rollout, track),
                    {"asr.rollout.dev/rollout": rollout, "asr.rollout.dev/track": track}, owner)


def combined_service(namespace: str, rollout: str, owner: Mapping[str, Any],
                     stable_only: bool = False) -> dict[str, Any]:
    """The replicaRatio router's Service: both tracks, so pod counts set the split. At weight 0
    (`stable_only`) it selects the stable pods alone: a canary pod running then (the shadow
    stage's) takes copies of requests, never users' requests."""
    selector = {"asr.rollout.dev/rollout": rollout}
    if stable_only:
        selector["asr.rollout.dev/track"] = "stable"
    return _service(namespace, rollout, common_labels(rollout), selector, owner)


def contains(live: Any, desired: Any) -> bool:
    """Whether `live` already holds everything in `desired` (extra keys a server adds, like
    defaults, are fine). Used to write only on drift, so others' edits are put back."""
    if isinstance(desired, Mapping):
        return isinstance(live, Mapping) and all(key in live and contains(live[key], value)
                                                 for key, value in desired.items())
    if isinstance(desired, list):
        return (isinstance(live, list) and len(live) == len(desired)
                and all(contains(a, b) for a, b in zip(live, desired)))
    if type(live) is not type(desired) and not isinstance(desired, bool):
        return str(live) == str(desired)  # a server may write the quantity 1 as "1"
    return bool(live == desired)
