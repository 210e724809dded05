"""examples/model-pull-job.yaml: valid Kubernetes, its command a valid `asr-model pull`, and the
path it fills the one the example rollout serves from the same PVC."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from inference_server import model_pull

REPO = Path(__file__).resolve().parents[2]
KUBE_VERSIONS = ["1.26.0", kubernetes_validate.latest_version() + ".0"]


@pytest.fixture(scope="module")
def docs() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((REPO / "examples" / "model-pull-job.yaml").read_text()) if d]


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_manifests_are_valid_kubernetes(docs: list[dict[str, Any]], kube_version: str) -> None:
    assert [d["kind"] for d in docs] == ["PersistentVolumeClaim", "Job"]
    for doc in docs:
        kubernetes_validate.validate(doc, kube_version, strict=True)


def test_job_runs_asr_model_pull_into_the_example_rollouts_path(docs: list[dict[str, Any]]) -> None:
    pvc, job = docs
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["command"] == ["asr-model"]
    parser = argparse.ArgumentParser(prog="asr-model", exit_on_error=False)
    model_pull.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(container["args"])  # the CLI's own parser accepts the Job's arguments
    rollout = yaml.safe_load((REPO / "examples" / "rollout-gateway-api.yaml").read_text())
    assert args.target == Path("/models") / rollout["spec"]["model"]["path"]
    claim = rollout["spec"]["modelVolume"]["persistentVolumeClaim"]["claimName"]
    assert pvc["metadata"]["name"] == claim and pvc["metadata"]["namespace"] == rollout["metadata"]["namespace"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    models = [m for m in container["volumeMounts"] if m["mountPath"] == "/models"]
    assert models and volumes[models[0]["name"]]["persistentVolumeClaim"]["claimName"] == claim
    assert not models[0].get("readOnly")  # the one writer of the volume
    # the image's non-root user, and somewhere writable for ModelScope's cache on a read-only root
    assert pod["securityContext"]["runAsUser"] == 10001 and container["securityContext"]["readOnlyRootFilesystem"]
    env = {e["name"]: e["value"] for e in container["env"]}
    mounts = [m["mountPath"] for m in container["volumeMounts"]]
    assert any(env["MODELSCOPE_CACHE"].startswith(m + "/") for m in mounts)
