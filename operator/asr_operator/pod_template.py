"""The pod template a rollout takes (`spec.server.podTemplate`) and the parts the operator owns.

The shape is Kubernetes' own PodTemplateSpec, partial (as KServe's predictor and Argo Rollouts'
template take one): `metadata` (labels, annotations) and a `spec` with the pod fields a user
needs to place and run GPU pods. The server container is addressed by its name
(`containers: [{name: inference-server, ...}]`) and takes only what the operator does not set.
Everything here is checked before anything is written: a field the operator owns, or one it
does not take, is an InvalidSpec naming the field and what to write instead.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

SERVER_CONTAINER = "inference-server"
SERVER_PORT = 8000
MODELS_ROOT = "/models"
CONFIG_DIR = "/etc/asr/model"
OPERATOR_VOLUMES = ("models", "model-config")
DEFAULT_ACCELERATOR = "nvidia.com/gpu"
# The server image's user (Dockerfile.server: `useradd --uid 10001`, group 10001).
SERVER_UID = 10001
SERVER_GID = 10001

# Labels the operator puts on every pod (docs/contracts.md); the selector uses the last two.
OPERATOR_LABEL_KEYS = ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/managed-by",
                       "asr.rollout.dev/rollout", "asr.rollout.dev/track")
RESERVED_PREFIX = "asr.rollout.dev/"

# Env the operator sets, or that would move what it relies on (port, paths, drain).
OPERATOR_ENV = {
    "ASR_NAMESPACE": "the operator sets it (downward API)",
    "ASR_ROLLOUT": "the operator sets it to the rollout's name",
    "ASR_TRACK": "the operator sets it to the pod's track",
    "POD_NAME": "the operator sets it (downward API)",
    "ASR_MODEL_CONFIG": "the operator mounts the model config and passes --model-config",
    "ASR_MODELS_ROOT": "the operator mounts spec.modelVolume at /models and passes --models-root",
    "ASR_PORT": "the probes, Services and routes use port 8000",
    "ASR_HOST": "the kubelet's probes need the server on every interface",
    "ASR_DRAIN_TIMEOUT_S": "set spec.server.drainTimeout instead (it also sizes the grace period)",
    "ASR_ADMIN_TOKEN": "the operator's config push authenticates with it (a per-rollout Secret)",
}
DEVICE_ENV = "ASR_DEVICE"  # set to `cuda` by the operator when the pod requests the accelerator

# What `podTemplate.spec` takes, with the kind of value each holds.
POD_SPEC_FIELDS: dict[str, str] = {
    "nodeSelector": "labels",
    "tolerations": "list",
    "affinity": "object",
    "topologySpreadConstraints": "list",
    "priorityClassName": "string",
    "imagePullSecrets": "list",
    "serviceAccountName": "string",
    "automountServiceAccountToken": "bool",
    "runtimeClassName": "string",
    "schedulerName": "string",
    "securityContext": "object",
    "hostAliases": "list",
    "dnsConfig": "object",
    "volumes": "list",
    "containers": "list",
}
# Pod spec fields the operator sets itself: what to write instead.
POD_SPEC_OWNED = {
    "terminationGracePeriodSeconds": "the operator sets it from spec.server.preStopDelay + drainTimeout",
    "restartPolicy": "a Deployment's pods always restart",
    "initContainers": "not supported: the server container is the pod's only container",
    "ephemeralContainers": "not supported",
}
CONTAINER_FIELDS: dict[str, str] = {
    "name": "string",
    "securityContext": "object",
    "volumeMounts": "list",
    "envFrom": "list",
    "imagePullPolicy": "string",
}
CONTAINER_OWNED = {
    "image": "write spec.server.image",
    "resources": "write spec.server.resources",
    "env": "write spec.server.env",
    "args": "the operator passes the server's arguments",
    "command": "the image's entrypoint runs the server",
    "ports": "the server listens on port 8000 (named http)",
    "readinessProbe": "the operator sets the probes (spec.server.startupTimeout sizes the startup probe)",
    "livenessProbe": "the operator sets the probes (spec.server.startupTimeout sizes the startup probe)",
    "startupProbe": "the operator sets it; size it with spec.server.startupTimeout",
    "lifecycle": "the operator sets the preStop hook; size it with spec.server.preStopDelay",
}
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_QUALIFIED_NAME = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")

Fail = Callable[[str, str], None]


def _kind_ok(kind: str, value: Any) -> bool:
    if kind == "labels":
        return isinstance(value, Mapping) and all(isinstance(v, str) for v in value.values())
    if kind == "list":
        return isinstance(value, list) and all(isinstance(item, Mapping) for item in value)
    if kind == "object":
        return isinstance(value, Mapping)
    if kind == "string":
        return isinstance(value, str) and bool(value)
    if kind == "bool":
        return isinstance(value, bool)
    raise AssertionError(kind)


_KIND_TEXT = {"labels": "an object of string values", "list": "a list of objects", "object": "an object",
              "string": "a non-empty string", "bool": "true or false"}


def check_pod_template(raw: Any, path: str, fail: Fail) -> dict[str, Any]:
    """The checked pod template (the user's, as written), or {} when absent or broken."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        fail(path, "must be an object like {metadata: {labels: {}}, spec: {tolerations: []}}")
        return {}
    before = _Counter(fail)
    for key in sorted(set(raw) - {"metadata", "spec"}):
        before.fail(f"{path}.{key}", "unknown field; a pod template has metadata and spec")
    metadata = _check_metadata(raw.get("metadata"), f"{path}.metadata", before.fail)
    spec = _check_pod_spec(raw.get("spec"), f"{path}.spec", before.fail)
    if before.count:
        return {}
    out: dict[str, Any] = {}
    if metadata:
        out["metadata"] = metadata
    if spec:
        out["spec"] = spec
    return out


class _Counter:
    def __init__(self, fail: Fail) -> None:
        self._fail = fail
        self.count = 0

    def fail(self, path: str, message: str) -> None:
        self.count += 1
        self._fail(path, message)


def _check_metadata(raw: Any, path: str, fail: Fail) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        fail(path, "must be an object with labels and/or annotations")
        return {}
    for key in sorted(set(raw) - {"labels", "annotations"}):
        fail(f"{path}.{key}", "not taken; a pod template's metadata takes labels and annotations")
    out: dict[str, Any] = {}
    for field in ("labels", "annotations"):
        items = raw.get(field)
        if items is None:
            continue
        if not isinstance(items, Mapping) or not all(isinstance(v, str) for v in items.values()):
            fail(f"{path}.{field}", "must be an object of string values")
            continue
        for key, value in items.items():
            where = f"{path}.{field}[{key}]"
            if key in OPERATOR_LABEL_KEYS or str(key).startswith(RESERVED_PREFIX):
                fail(where, "set by the operator (its selector and metric labels); remove it")
            elif not _QUALIFIED_NAME.match(str(key)) or len(str(key).rsplit("/", 1)[-1]) > 63:
                fail(where, "is not a valid key: [prefix/]name, name at most 63 characters of "
                            "letters, digits, '-', '_', '.'")
            elif field == "labels" and (len(value) > 63 or not _LABEL_VALUE.match(value)):
                fail(where, f"{value!r} is not a valid label value: at most 63 letters, digits, "
                            "'-', '_', '.', starting and ending with a letter or digit")
        if items:
            out[field] = {str(k): str(v) for k, v in items.items()}
    return out


def _check_pod_spec(raw: Any, path: str, fail: Fail) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        fail(path, "must be an object (a partial core/v1 PodSpec)")
        return {}
    out: dict[str, Any] = {}
    for key, value in raw.items():
        where = f"{path}.{key}"
        if key in POD_SPEC_OWNED:
            fail(where, POD_SPEC_OWNED[key])
        elif key not in POD_SPEC_FIELDS:
            fail(where, f"not taken by the operator; the pod template takes {', '.join(sorted(POD_SPEC_FIELDS))}")
        elif not _kind_ok(POD_SPEC_FIELDS[key], value):
            fail(where, f"must be {_KIND_TEXT[POD_SPEC_FIELDS[key]]}")
        else:
            out[key] = value
    volumes = _check_volumes(out.get("volumes"), f"{path}.volumes", fail)
    if "containers" in out:
        _check_containers(out["containers"], f"{path}.containers", set(volumes), fail)
    _check_root(out.get("securityContext") or {}, server_container({"spec": out}).get("securityContext") or {},
                path, fail)
    return {key: value for key, value in out.items() if value not in ({}, [])}


def _check_root(pod: Mapping[str, Any], container: Mapping[str, Any], path: str, fail: Fail) -> None:
    """runAsUser 0 under the default runAsNonRoot would never start: say so now."""
    non_root = container.get("runAsNonRoot", pod.get("runAsNonRoot", True))
    for where, context in ((f"{path}.containers[0].securityContext", container), (f"{path}.securityContext", pod)):
        if context.get("runAsUser") == 0 and non_root is not False:
            fail(f"{where}.runAsUser", "0 is root, and the pods run as non-root by default; also set "
                                       "runAsNonRoot: false to run as root")
            return
        if "runAsUser" in context:
            return


def _check_volumes(raw: list[Any] | None, path: str, fail: Fail) -> list[str]:
    names: list[str] = []
    for index, volume in enumerate(raw or []):
        name = volume.get("name")
        where = f"{path}[{index}]"
        if not isinstance(name, str) or not _DNS_LABEL.match(name):
            fail(f"{where}.name", "is required: a DNS label (lowercase letters, digits, '-')")
        elif name in OPERATOR_VOLUMES:
            fail(f"{where}.name", f"{name!r} is the operator's volume (the model volume and its config); "
                                  "pick another name")
        elif name in names:
            fail(f"{where}.name", f"{name!r} is already used by another volume")
        else:
            names.append(name)
        if len(volume) < 2:
            fail(where, "needs a volume source besides its name, e.g. emptyDir: {}")
    return names


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _check_containers(raw: list[Any], path: str, volumes: set[str], fail: Fail) -> None:
    if len(raw) != 1:
        fail(path, f"takes one entry, the server container {{name: {SERVER_CONTAINER}, ...}}; sidecars are "
                   "not supported")
    for index, container in enumerate(raw):
        where = f"{path}[{index}]"
        if container.get("name") != SERVER_CONTAINER:
            fail(f"{where}.name", f"{container.get('name')!r}: the server container is named {SERVER_CONTAINER!r} "
                                  "(its name cannot change; sidecars are not supported)")
        for key, value in container.items():
            if key in CONTAINER_OWNED:
                fail(f"{where}.{key}", CONTAINER_OWNED[key])
            elif key not in CONTAINER_FIELDS:
                fail(f"{where}.{key}", f"not taken; the server container takes "
                                       f"{', '.join(sorted(set(CONTAINER_FIELDS) - {'name'}))}")
            elif not _kind_ok(CONTAINER_FIELDS[key], value):
                fail(f"{where}.{key}", f"must be {_KIND_TEXT[CONTAINER_FIELDS[key]]}")
        for mount_index, mount in enumerate(container.get("volumeMounts") or []):
            if not isinstance(mount, Mapping):
                continue
            at = f"{where}.volumeMounts[{mount_index}]"
            name, mount_path = mount.get("name"), mount.get("mountPath")
            if name in OPERATOR_VOLUMES:
                fail(f"{at}.name", f"{name!r} is mounted by the operator; mount a volume of your own")
            elif name not in volumes:
                fail(f"{at}.name", f"{name!r} is not a volume of podTemplate.spec.volumes")
            if not isinstance(mount_path, str) or not mount_path.startswith("/"):
                fail(f"{at}.mountPath", "is required: an absolute path")
            elif _under(mount_path, MODELS_ROOT) or _under(mount_path, CONFIG_DIR):
                fail(f"{at}.mountPath", f"{mount_path!r} is inside the operator's mounts ({MODELS_ROOT}, "
                                        f"{CONFIG_DIR}); mount elsewhere")


def server_container(pod: Mapping[str, Any]) -> dict[str, Any]:
    """The user's part of the server container (the podTemplate's only container), or {}."""
    containers = (pod.get("spec") or {}).get("containers") or []
    return dict(containers[0]) if containers else {}


def requests_accelerator(resources: Mapping[str, Any], accelerator: str) -> bool:
    """Whether the container asks for at least one unit of the accelerator resource."""
    for part in ("limits", "requests"):
        value = (resources.get(part) or {}).get(accelerator) if isinstance(resources.get(part), Mapping) else None
        if value is None:
            continue
        try:
            if float(str(value).strip() or 0) > 0:
                return True
        except ValueError:
            return True  # a quantity like "1k": the API server judges it; it is a request
    return False
