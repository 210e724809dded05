"""The Argo CD health check (deploy/argocd/asrmodelrollout-health.lua) in a real Lua 5.1
runtime (lupa), the Lua version of Argo CD's gopher-lua sandbox: `obj` is the rollout as a Lua
table, the script's return value is the health Argo CD shows."""
from __future__ import annotations

from typing import Any

import pytest
import yaml
from lupa import lua51

from tests.deploy.chart_render import REPO_ROOT

ARGOCD_DIR = REPO_ROOT / "deploy" / "argocd"
LUA = (ARGOCD_DIR / "asrmodelrollout-health.lua").read_text(encoding="utf-8")


def health(obj: dict[str, Any]) -> dict[str, str]:
    runtime = lua51.LuaRuntime(unpack_returned_tuples=True)
    runtime.globals().obj = runtime.table_from(obj, recursive=True)
    # Argo CD runs the script as a chunk with `obj` set and takes what it returns: same here.
    result = runtime.execute(LUA)
    return dict(result.items())


def rollout(phase: str | None = None, *, generation: int = 3, observed: int | None = 3,
            **status: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "asr.rollout.dev/v1alpha1", "kind": "ASRModelRollout",
        "metadata": {"name": "meeting-zh", "namespace": "speech", "generation": generation},
        "spec": {"model": {"name": "paraformer-zh", "version": "v1.2.0", "path": "paraformer-zh/v1.2.0"}},
    }
    if phase is not None:
        obj["status"] = dict(status, phase=phase)
        if observed is not None:
            obj["status"]["observedGeneration"] = observed
    return obj


@pytest.mark.parametrize("phase", ["Pending", "Progressing", "Promoting", "RollingBack"])
def test_moving_phases_are_progressing(phase: str) -> None:
    result = health(rollout(phase, canaryVersion="v1.2.0", canaryWeight=25, currentStep=2))
    assert result == {"status": "Progressing", "message": f"{phase}: canary v1.2.0 at 25%, step 2"}


def test_succeeded_is_healthy() -> None:
    assert health(rollout("Succeeded", stableVersion="v1.2.0")) == {
        "status": "Healthy", "message": "Serving v1.2.0"}


@pytest.mark.parametrize("phase", ["RolledBack", "Failed"])
def test_rolled_back_or_failed_is_degraded(phase: str) -> None:
    result = health(rollout(phase, stableVersion="v1.1.0", failedVersion="v1.2.0",
                            message="error-rate 0.31 > 0.01"))
    assert result == {"status": "Degraded",
                      "message": f"{phase} v1.2.0: error-rate 0.31 > 0.01 (serving v1.1.0)"}


def test_paused_is_suspended() -> None:
    result = health(rollout("Paused", canaryVersion="v1.2.0", canaryWeight=50, message="waiting for promote"))
    assert result == {"status": "Suspended", "message": "Paused at 50% on v1.2.0: waiting for promote"}


def test_invalid_spec_is_degraded_whatever_the_phase() -> None:
    result = health(rollout("Pending", conditions=[
        {"type": "Available", "status": "False"},
        {"type": "InvalidSpec", "status": "True", "reason": "BadPath", "message": "path leaves the volume"}]))
    assert result == {"status": "Degraded", "message": "Invalid spec: path leaves the volume"}


def test_no_status_yet_is_progressing() -> None:
    assert health(rollout(None))["status"] == "Progressing"


def test_status_of_an_older_generation_is_not_healthy() -> None:
    # Right after a GitOps commit bumps spec.model.version: the old Succeeded is stale.
    result = health(rollout("Succeeded", generation=4, observed=3, stableVersion="v1.1.0"))
    assert result == {"status": "Progressing", "message": "Waiting for the operator to observe generation 4"}


def test_argocd_cm_patch_carries_the_same_lua() -> None:
    patch = yaml.safe_load((ARGOCD_DIR / "argocd-cm-patch.yaml").read_text(encoding="utf-8"))
    assert patch["metadata"]["name"] == "argocd-cm"
    assert patch["data"]["resource.customizations.health.asr.rollout.dev_ASRModelRollout"] == LUA
