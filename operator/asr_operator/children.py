"""Pure builders of the objects a rollout owns (names, labels and env per docs/contracts.md).

Nothing about a model version goes into a pod template: a version change is a ConfigMap change
the server hot-reloads, so promoting a model never restarts a stable pod. The version shows on
the Deployment's and ConfigMap's own labels instead. Each track's pod template (image, resources,
env, model volume, the user's partial pod template) is the one its revision names
(`PodTemplate`): the canary runs the new one, stable keeps its own until promotion.

Every pod gets what a production inference pod needs (README, "Pod template"): a non-root
security context, a startup probe sized for slow model loads (liveness and readiness wait for
it), a preStop pause so endpoints forget the pod before the server drains, and a termination
grace period longer than both. A PodDisruptionBudget per track keeps voluntary evictions (node
drains) to `maxUnavailable` ready pods at a time.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any

import yaml

from . import pod_template as pods
from .kube import API_VERSION, KIND
from .pod_template import CONFIG_DIR, MODELS_ROOT, SERVER_CONTAINER, SERVER_PORT
from .spec import ModelRef, PodTemplate

CONFIG_KEY = "model.yaml"
TRACKS = ("stable", "canary")
TEMPLATE_DIGEST = "asr.rollout.dev/template-digest"  # on a Deployment: digest of the pod template it was given
PROBE_PERIOD_SECONDS = 10
GRACE_MARGIN_SECONDS = 10  # after the drain: closing connections, releasing the model
DEFAULT_POD_SECURITY = {"runAsNonRoot": True, "runAsUser": pods.SERVER_UID, "runAsGroup": pods.SERVER_GID,
                        "seccompProfile": {"type": "RuntimeDefault"}}
DEFAULT_CONTAINER_SECURITY = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


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
    if template.uses_accelerator:
        fixed.append({"name": pods.DEVICE_ENV, "value": "cuda"})  # the pod holds a GPU: compute on it
    ours = {item["name"] for item in fixed} | set(pods.OPERATOR_ENV)
    return fixed + [dict(item) for item in template.env if item.get("name") not in ours]


def grace_period_seconds(template: PodTemplate) -> int:
    """The preStop pause, then the server's drain, then a margin: SIGKILL never cuts a drain short."""
    return math.ceil(template.pre_stop_delay + template.drain_timeout) + GRACE_MARGIN_SECONDS


def _server_container(rollout: str, track: str, template: PodTemplate) -> dict[str, Any]:
    user = pods.server_container(template.pod)
    http = {"path": "/readyz", "port": "http"}
    container: dict[str, Any] = {
        "name": SERVER_CONTAINER,
        "image": template.image,
        "args": ["--model-config", f"{CONFIG_DIR}/{CONFIG_KEY}", "--models-root", MODELS_ROOT,
                 "--drain-timeout", f"{template.drain_timeout:g}"],
        "ports": [{"name": "http", "containerPort": SERVER_PORT}],
        "env": _env(rollout, track, template),
        # Started = a verified, warmed model serves; until then neither liveness nor readiness
        # runs, so a load of many minutes is never killed.
        "startupProbe": {"httpGet": dict(http), "periodSeconds": PROBE_PERIOD_SECONDS, "timeoutSeconds": 5,
                         "failureThreshold": max(1, math.ceil(template.startup_timeout / PROBE_PERIOD_SECONDS))},
        "readinessProbe": {"httpGet": dict(http), "periodSeconds": 2, "failureThreshold": 2},
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"},
                          "periodSeconds": PROBE_PERIOD_SECONDS, "timeoutSeconds": 5, "failureThreshold": 3},
        "securityContext": {**copy.deepcopy(DEFAULT_CONTAINER_SECURITY), **copy.deepcopy(user.get("securityContext") or {})},
        "volumeMounts": [
            {"name": "models", "mountPath": MODELS_ROOT, "readOnly": True},
            {"name": "model-config", "mountPath": CONFIG_DIR, "readOnly": True},
            *copy.deepcopy(user.get("volumeMounts") or []),
        ],
    }
    if template.pre_stop_delay > 0:
        # Deletion takes the pod out of the Service's ready endpoints at once, but kube-proxy and
        # gateways learn it seconds later: keep serving meanwhile, then SIGTERM starts the drain
        # (/readyz 503, in-flight requests finish, --drain-timeout).
        container["lifecycle"] = {"preStop": {"exec": {"command": ["sleep", str(math.ceil(template.pre_stop_delay))]}}}
    for key in ("envFrom", "imagePullPolicy"):
        if key in user:
            container[key] = copy.deepcopy(user[key])
    if template.resources:
        container["resources"] = dict(template.resources)
    return container


def pod_template_spec(rollout: str, track: str, template: PodTemplate,
                      model_revision: str | None = None) -> dict[str, Any]:
    """The Deployment's `spec.template`: the user's partial pod template under the operator's parts.
    `model_revision` (stableUpdate rolling): a new value makes Kubernetes replace the pods."""
    user_meta = template.pod.get("metadata") or {}
    user_spec = copy.deepcopy(dict(template.pod.get("spec") or {}))
    user_spec.pop("containers", None)
    user_volumes = user_spec.pop("volumes", None) or []
    user_security = user_spec.pop("securityContext", None) or {}
    metadata: dict[str, Any] = {"labels": {**dict(user_meta.get("labels") or {}), **track_labels(rollout, track)}}
    annotations = {**dict(user_meta.get("annotations") or {}),
                   **({MODEL_REVISION_ANNOTATION: model_revision} if model_revision else {})}
    if annotations:
        metadata["annotations"] = annotations
    return {
        "metadata": metadata,
        "spec": {
            **user_spec,
            "securityContext": {**copy.deepcopy(DEFAULT_POD_SECURITY), **user_security},
            "terminationGracePeriodSeconds": grace_period_seconds(template),
            "containers": [_server_container(rollout, track, template)],
            "volumes": [
                {"name": "models", **dict(template.model_volume)},
                {"name": "model-config", "configMap": {"name": configmap_name(rollout, track)}},
                *user_volumes,
            ],
        },
    }


def digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()[:16]


def deployment(namespace: str, rollout: str, track: str, replicas: int, version: str,
               template: PodTemplate, owner: Mapping[str, Any], model_revision: str | None = None) -> dict[str, Any]:
    labels = track_labels(rollout, track)
    pod = pod_template_spec(rollout, track, template, model_revision)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": deployment_name(rollout, track),
            "namespace": namespace,
            "labels": {**labels, "asr.rollout.dev/version": version},
            # What the pod template was built from: a change (also one that only removes a
            # field) makes `patch_for` replace the template instead of merging into it.
            "annotations": {TEMPLATE_DIGEST: digest(pod)},
            "ownerReferences": owner_references(owner),
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"asr.rollout.dev/rollout": rollout, "asr.rollout.dev/track": track}},
            "template": pod,
        },
    }


def disruption_budget(namespace: str, rollout: str, track: str, max_unavailable: int | str,
                      owner: Mapping[str, Any]) -> dict[str, Any]:
    """One PodDisruptionBudget per track: node drains evict at most `max_unavailable` ready pods
    of the track at a time; a pod that is not ready (still loading, or broken) never blocks a drain."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": deployment_name(rollout, track), "namespace": namespace,
                     "labels": track_labels(rollout, track), "ownerReferences": owner_references(owner)},
        "spec": {"maxUnavailable": max_unavailable,
                 "selector": {"matchLabels": {"asr.rollout.dev/rollout": rollout, "asr.rollout.dev/track": track}},
                 "unhealthyPodEvictionPolicy": "AlwaysAllow"},
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


def patch_for(live: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any] | None:
    """The JSON merge patch that brings `live` to `desired`; None when it already is.

    A merge patch merges objects, so a field that left the desired pod template (a nodeSelector
    key, an affinity term, a pod annotation) would stay. When a Deployment's pod template changed
    (its digest annotation differs), the patch therefore also deletes (null) every template field
    the live object has and the desired one lacks; the API server puts its defaults back. Any
    other drift (replicas, someone's edit) is patched with the desired values only."""
    if contains(live, desired):
        return None
    patch = copy.deepcopy(dict(desired))
    if desired.get("kind") == "Deployment":
        live_digest = ((live.get("metadata") or {}).get("annotations") or {}).get(TEMPLATE_DIGEST)
        if live_digest != desired["metadata"]["annotations"][TEMPLATE_DIGEST]:
            patch["spec"]["template"] = _replacing((live.get("spec") or {}).get("template"),
                                                   desired["spec"]["template"])
    return patch


def _replacing(live: Any, desired: Any) -> Any:
    if not isinstance(desired, Mapping) or not isinstance(live, Mapping):
        return copy.deepcopy(desired)
    out = {key: _replacing(live.get(key), value) for key, value in desired.items()}
    out.update({key: None for key in live if key not in desired})
    return out


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
