"""A tiny kopf operator that proves the emulator harness before the real operator exists.

On an ASRModelRollout it creates the stable ConfigMap `R-stable-model` (owned by the rollout),
writes `status` through kopf's patch (which goes to `/status` because the CRD has the status
subresource), posts an Event, and on a change of `spec.model.version` rewrites the ConfigMap.
Run: `python -m kopf run --standalone -n NS tests/support/tiny_operator.py` with KUBECONFIG set.
"""
from __future__ import annotations

import os
from typing import Any

import kopf
import requests
import yaml

GROUP, VERSION, PLURAL = "asr.rollout.dev", "v1alpha1", "asrmodelrollouts"


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.scanning.disabled = True  # the emulator has no CRD/namespace scanning to offer
    settings.peering.standalone = True
    settings.persistence.finalizer = "tiny.asr.rollout.dev/finalizer"


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    return kopf.login_with_kubeconfig(**kwargs)


def _server() -> str:
    with open(os.environ["KUBECONFIG"], encoding="utf-8") as f:
        return str(yaml.safe_load(f)["clusters"][0]["cluster"]["server"])


def _config_map(body: kopf.Body) -> dict[str, Any]:
    model = body["spec"]["model"]
    cm = {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": f"{body['metadata']['name']}-stable-model",
                     "labels": {"asr.rollout.dev/rollout": body["metadata"]["name"],
                                "asr.rollout.dev/track": "stable"}},
        "data": {"model.yaml": yaml.safe_dump({"name": model["name"], "version": model["version"],
                                               "path": model["path"]})},
    }
    kopf.adopt(cm, owner=body)
    return cm


@kopf.on.create(GROUP, VERSION, PLURAL)
def create(body: kopf.Body, namespace: str | None, patch: kopf.Patch, **_: Any) -> None:
    cm = _config_map(body)
    response = requests.post(f"{_server()}/api/v1/namespaces/{namespace}/configmaps", json=cm, timeout=10)
    if response.status_code not in (201, 409):
        raise kopf.TemporaryError(f"ConfigMap create: {response.status_code} {response.text}", delay=1)
    kopf.info(body, reason="Created", message=f"stable ConfigMap for {body['spec']['model']['version']}")
    patch.status["phase"] = "Progressing"
    patch.status["stableVersion"] = body["spec"]["model"]["version"]
    patch.status["observedGeneration"] = body["metadata"]["generation"]


@kopf.on.update(GROUP, VERSION, PLURAL, field="spec.model.version")
def version_changed(body: kopf.Body, namespace: str | None, new: Any, patch: kopf.Patch, **_: Any) -> None:
    cm = _config_map(body)
    url = f"{_server()}/api/v1/namespaces/{namespace}/configmaps/{cm['metadata']['name']}"
    response = requests.patch(url, json={"data": cm["data"]}, timeout=10,
                              headers={"Content-Type": "application/merge-patch+json"})
    response.raise_for_status()
    patch.status["stableVersion"] = new
    patch.status["observedGeneration"] = body["metadata"]["generation"]


@kopf.on.delete(GROUP, VERSION, PLURAL)
def delete(body: kopf.Body, **_: Any) -> None:
    # Having a deletion handler makes kopf put its finalizer on every rollout (a JSON patch).
    kopf.info(body, reason="Deleting", message="released")
