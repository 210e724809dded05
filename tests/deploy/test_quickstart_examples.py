"""The README's quick start holds together: the rollout (examples/quickstart-rollout.yaml) is valid
for the CRD and the operator, its HTTPRoute (examples/gateway.yaml) is one the operator's Gateway
API router can steer, attached to the Gateway of the GatewayClass in the same file, and the model
volume and path are the ones the pull Job (examples/model-pull-job.yaml) fills."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from asr_operator.children import SERVER_PORT
from asr_operator.spec import parse_spec
from asr_operator.traffic.gateway_api import weighted_rules
from asr_sandbox.crd_schema import describe, validation_errors

REPO = Path(__file__).resolve().parents[2]


def _docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((REPO / "examples" / name).read_text(encoding="utf-8")) if d]


def _one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [d for d in docs if d["kind"] == kind]
    return found


def test_the_quickstart_rollout_is_valid_for_the_crd_and_the_operator() -> None:
    (rollout,) = _docs("quickstart-rollout.yaml")
    assert [describe(e) for e in validation_errors(rollout)] == []
    spec = parse_spec(rollout["spec"])  # raises InvalidSpec with every problem
    assert spec.traffic.provider == "gatewayAPI" and spec.analysis is not None and spec.analysis.metrics


def test_the_route_is_one_the_operator_can_steer() -> None:
    (rollout,) = _docs("quickstart-rollout.yaml")
    gateway_docs = _docs("gateway.yaml")
    route = _one(gateway_docs, "HTTPRoute")
    gateway = _one(gateway_docs, "Gateway")
    gateway_class = _one(gateway_docs, "GatewayClass")
    name, namespace = rollout["metadata"]["name"], rollout["metadata"]["namespace"]
    assert route["metadata"]["name"] == rollout["spec"]["traffic"]["gatewayAPI"]["httpRoute"]
    assert route["metadata"]["namespace"] == gateway["metadata"]["namespace"] == namespace
    assert [ref["name"] for ref in route["spec"]["parentRefs"]] == [gateway["metadata"]["name"]]
    assert gateway["spec"]["gatewayClassName"] == gateway_class["metadata"]["name"]
    refs = route["spec"]["rules"][0]["backendRefs"]
    assert {ref["port"] for ref in refs} == {SERVER_PORT}
    # The operator's own pure routing step sets the split on exactly these two backendRefs.
    rules = weighted_rules(route["spec"]["rules"], f"{name}-stable", f"{name}-canary", 20)
    assert {ref["name"]: ref["weight"] for ref in rules[0]["backendRefs"]} == {
        f"{name}-stable": 80, f"{name}-canary": 20}


def test_the_model_comes_from_the_pull_job() -> None:
    (rollout,) = _docs("quickstart-rollout.yaml")
    pull = _docs("model-pull-job.yaml")
    claim = _one(pull, "PersistentVolumeClaim")
    job = _one(pull, "Job")
    assert claim["metadata"]["namespace"] == rollout["metadata"]["namespace"]
    assert rollout["spec"]["modelVolume"]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--to") + 1] == "/models/" + rollout["spec"]["model"]["path"]
