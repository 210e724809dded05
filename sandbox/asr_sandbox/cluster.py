"""`make demo` against a real cluster (`--kubeconfig`): apply the example rollouts there.

The sandbox parts (API emulator, node agent, gateway, local Prometheus, traffic) are skipped:
the cluster has its own. The operator must be installed (Helm chart `deploy/helm/asr-rollout`),
and the examples' namespaces, model volume, HTTPRoute and Prometheus must exist there.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]


def default_examples() -> list[Path]:
    return sorted((REPO_ROOT / "examples").glob("rollout-*.yaml"))


def documents(files: list[Path]) -> Iterator[dict[str, Any]]:
    for path in files:
        with open(path, encoding="utf-8") as f:
            yield from (doc for doc in yaml.safe_load_all(f) if doc)


def apply_examples(kubeconfig: Path, files: list[Path]) -> Iterator[str]:
    """Create each object, or merge-patch it when it exists (a small `kubectl apply`)."""
    from kubernetes import config, dynamic
    from kubernetes.client import api_client
    from kubernetes.dynamic.exceptions import NotFoundError

    config.load_kube_config(config_file=str(kubeconfig))
    client = dynamic.DynamicClient(api_client.ApiClient())
    for obj in documents(files):
        meta = obj.get("metadata") or {}
        resource = client.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
        namespace = meta.get("namespace") or "default"
        try:
            resource.get(name=meta["name"], namespace=namespace)
        except NotFoundError:
            resource.create(body=obj, namespace=namespace)
            yield f"created {obj['kind']} {namespace}/{meta['name']}"
        else:
            resource.patch(body=obj, name=meta["name"], namespace=namespace,
                           content_type="application/merge-patch+json")
            yield f"updated {obj['kind']} {namespace}/{meta['name']}"
