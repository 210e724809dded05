"""The GitOps examples (examples/gitops/): they point at files that exist, and GitOps tools
leave alone what the operator writes (the HTTPRoute weights). The example rollouts are checked
against the CRD schema in test_helm_chart.py (every ASRModelRollout under examples/)."""
from __future__ import annotations

from typing import Any

import yaml

from tests.deploy.chart_render import REPO_ROOT

GITOPS = REPO_ROOT / "examples" / "gitops"


def docs(relative: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((GITOPS / relative).read_text(encoding="utf-8")) if d]


def test_kustomization_lists_existing_files() -> None:
    (kustomization,) = docs("apps/speech/kustomization.yaml")
    for resource in kustomization["resources"]:
        assert (GITOPS / "apps" / "speech" / resource).is_file(), resource


def test_rollout_routes_through_the_httproute_in_git() -> None:
    (rollout,) = docs("apps/speech/rollout.yaml")
    (route,) = docs("apps/speech/httproute.yaml")
    assert rollout["spec"]["traffic"]["gatewayAPI"]["httpRoute"] == route["metadata"]["name"]
    name = rollout["metadata"]["name"]
    backends = {ref["name"] for rule in route["spec"]["rules"] for ref in rule["backendRefs"]}
    assert backends == {f"{name}-stable", f"{name}-canary"}  # the Services the operator creates


def test_argocd_ignores_the_weights_the_operator_writes() -> None:
    app, operator_app = docs("argocd/application.yaml")
    assert app["kind"] == operator_app["kind"] == "Application"
    assert (REPO_ROOT / app["spec"]["source"]["path"]).is_dir()
    assert (REPO_ROOT / operator_app["spec"]["source"]["path"] / "Chart.yaml").is_file()
    assert "RespectIgnoreDifferences=true" in app["spec"]["syncPolicy"]["syncOptions"]
    (ignore,) = app["spec"]["ignoreDifferences"]
    assert (ignore["group"], ignore["kind"]) == ("gateway.networking.k8s.io", "HTTPRoute")
    assert ignore["jqPathExpressions"] == [".spec.rules[].backendRefs[].weight"]
    # Argo CD's lookup sees no cluster: the token must come from a managed Secret.
    assert operator_app["spec"]["source"]["helm"]["valuesObject"]["alertWebhook"]["existingSecret"]


def test_flux_applies_the_app_and_never_overwrites_the_route() -> None:
    source, kustomization = docs("flux/sync.yaml")
    assert kustomization["spec"]["sourceRef"] == {"kind": source["kind"], "name": source["metadata"]["name"]}
    assert (REPO_ROOT / kustomization["spec"]["path"]).is_dir()
    (route,) = docs("apps/speech/httproute.yaml")
    assert route["metadata"]["annotations"]["kustomize.toolkit.fluxcd.io/ssa"] == "IfNotPresent"
    (expr,) = kustomization["spec"]["healthCheckExprs"]
    assert "RolledBack" in expr["failed"] and "Succeeded" in expr["current"]
