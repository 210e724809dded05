"""The Helm chart: lint, render (default and a non-default set), validate every manifest.

Rendering uses the real Helm v4 SDK (helm-python-sdk, offline); built-in kinds are checked
with kubernetes-validate against the Kubernetes JSON schemas; custom resources the chart
renders (kopf peerings) and the example rollouts against their CRD's openAPIV3Schema.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml

from asr_sandbox.crd_schema import apply_defaults, to_json_schema
from tests.deploy.chart_render import (
    CHART_DIR, NON_DEFAULT_VALUES, RELEASE_NAMESPACE, REPO_ROOT, VALUE_SETS, of_kind, render, render_notes,
)

# Oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest schemas we have.
KUBE_VERSIONS = ["1.26.0", kubernetes_validate.latest_version() + ".0"]
# Kinds whose CRDs come from elsewhere (prometheus-operator): checked by their own tests
# (promtool for the rules) and by the structural checks below.
THIRD_PARTY_KINDS = {"PrometheusRule", "ServiceMonitor", "PodMonitor"}
STANDARD_LABELS = ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
                   "app.kubernetes.io/managed-by", "helm.sh/chart")


def chart_crds() -> dict[tuple[str, str], dict[str, Any]]:
    """(group, kind) -> CRD, for every CRD in the chart's crds/."""
    crds = {}
    for path in sorted((CHART_DIR / "crds").glob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            crds[crd["spec"]["group"], crd["spec"]["names"]["kind"]] = crd
    return crds


def crd_validation_errors(obj: dict[str, Any]) -> list[str]:
    group, version = obj["apiVersion"].split("/")
    crd = chart_crds()[group, obj["kind"]]
    schema = next(v for v in crd["spec"]["versions"] if v["name"] == version)["schema"]["openAPIV3Schema"]
    validator = jsonschema.Draft202012Validator(to_json_schema(schema))
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(apply_defaults(schema, obj))]


@pytest.fixture(scope="module", params=list(VALUE_SETS))
def value_set(request: pytest.FixtureRequest) -> dict[str, Any]:
    return VALUE_SETS[request.param]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def rendered(value_set: dict[str, Any]) -> list[dict[str, Any]]:
    return render(value_set)


# --- lint and validation ---------------------------------------------------------------------


def test_lint_finds_no_errors_or_warnings(value_set: dict[str, Any]) -> None:
    report = helm.lint(CHART_DIR, value_set, strict=True, namespace=RELEASE_NAMESPACE)
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == [], report


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_every_builtin_manifest_is_valid_kubernetes(rendered: list[dict[str, Any]], kube_version: str) -> None:
    checked = 0
    for obj in rendered:
        if obj["kind"] in THIRD_PARTY_KINDS or obj["apiVersion"].startswith("kopf.dev/"):
            continue
        kubernetes_validate.validate(obj, kube_version, strict=True)  # raises with the field path
        checked += 1
    assert checked >= 6


def test_crds_are_valid_kubernetes() -> None:
    crds = chart_crds()
    assert set(crds) == {("asr.rollout.dev", "ASRModelRollout"), ("kopf.dev", "ClusterKopfPeering"),
                         ("kopf.dev", "KopfPeering")}
    for crd in crds.values():
        kubernetes_validate.validate(crd, KUBE_VERSIONS[-1], strict=True)


def test_rendered_custom_resources_match_their_crds(rendered: list[dict[str, Any]]) -> None:
    peerings = [obj for obj in rendered if obj["apiVersion"].startswith("kopf.dev/")]
    assert peerings, "peering is on by default: a ClusterKopfPeering or KopfPerings must render"
    for obj in peerings:
        assert crd_validation_errors(obj) == []


def test_third_party_resources_have_their_required_shape(value_set: dict[str, Any]) -> None:
    objects = render(NON_DEFAULT_VALUES)
    for obj in objects:
        if obj["kind"] in THIRD_PARTY_KINDS:
            assert obj["apiVersion"] == "monitoring.coreos.com/v1"
    (service_monitor,) = of_kind(objects, "ServiceMonitor")
    (metrics_service,) = [s for s in of_kind(objects, "Service") if s["metadata"]["name"].endswith("-metrics")]
    # The ServiceMonitor must select the metrics Service and name a port it has.
    assert service_monitor["spec"]["selector"]["matchLabels"].items() <= metrics_service["metadata"]["labels"].items()
    assert service_monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in metrics_service["spec"]["ports"]}
    (pod_monitor,) = of_kind(objects, "PodMonitor")
    # Inference pods carry these labels (docs/contracts.md, "Labels on pods").
    assert pod_monitor["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/name": "asr-inference-server", "app.kubernetes.io/managed-by": "asr-rollout"}
    assert pod_monitor["spec"]["namespaceSelector"] == {"matchNames": ["speech", "asr-lab"]}


def test_example_rollouts_match_the_crd() -> None:
    examples = [p for p in sorted((REPO_ROOT / "examples").rglob("*.yaml"))]
    rollouts = [(path, doc) for path in examples for doc in yaml.safe_load_all(path.read_text(encoding="utf-8"))
                if doc and doc.get("kind") == "ASRModelRollout"]
    assert len(rollouts) >= 3
    for path, obj in rollouts:
        assert crd_validation_errors(obj) == [], path.relative_to(REPO_ROOT)


def test_chart_crd_is_the_projects_crd() -> None:
    source = REPO_ROOT / "deploy" / "crds" / "asrmodelrollouts.yaml"
    copy = CHART_DIR / "crds" / "asrmodelrollouts.yaml"
    assert copy.read_bytes() == source.read_bytes(), (
        "the chart's CRD differs from deploy/crds/asrmodelrollouts.yaml: "
        "run `make sync-chart-crd`")


# --- what the objects say ----------------------------------------------------------------------


def test_every_object_has_the_standard_labels(rendered: list[dict[str, Any]]) -> None:
    for obj in rendered:
        labels = obj["metadata"].get("labels", {})
        missing = [key for key in STANDARD_LABELS if key not in labels]
        assert not missing, f"{obj['kind']} {obj['metadata']['name']} lacks {missing}"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"


def test_operator_pod_is_locked_down(rendered: list[dict[str, Any]]) -> None:
    (deployment,) = of_kind(rendered, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] > 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "privileged": False,
        "capabilities": {"drop": ["ALL"]}}
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert {"cpu", "memory"} <= set(container["resources"]["limits"])
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "alert-webhook"}
    # The only writable path is an emptyDir.
    assert [m["mountPath"] for m in container["volumeMounts"]] == ["/tmp"]
    assert pod["volumes"] == [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}]
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["ASR_ALERT_WEBHOOK_TOKEN"]["valueFrom"]["secretKeyRef"]["key"] == "token"
    # The flags the operator's CLI defines (docs/contracts.md, "Operator process").
    allowed = re.compile(r"^--(metrics-port=\d+|webhook-port=\d+|disable-scanning|standalone|verbose|namespace=[a-z0-9-]+)$")
    assert all(allowed.match(arg) for arg in container["args"]), container["args"]


def test_default_values_run_cluster_wide_with_peering() -> None:
    objects = render()
    (deployment,) = of_kind(objects, "Deployment")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert not any(a.startswith("--namespace") for a in args) and "--standalone" not in args
    assert [o["kind"] for o in objects if o["kind"] in ("ClusterRole", "ClusterRoleBinding")] == [
        "ClusterRole", "ClusterRoleBinding"]
    assert of_kind(objects, "Role") == [] and of_kind(objects, "RoleBinding") == []
    (peering,) = of_kind(objects, "ClusterKopfPeering")
    assert peering["metadata"]["name"] == "asr-rollout"
    assert not of_kind(objects, "PrometheusRule") and not of_kind(objects, "ServiceMonitor")
    assert not of_kind(objects, "ConfigMap")  # the dashboard is off by default


def test_namespaced_mode_two_replicas_alerts_on() -> None:
    objects = render(NON_DEFAULT_VALUES)
    (deployment,) = of_kind(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert [a for a in args if a.startswith("--namespace")] == ["--namespace=speech", "--namespace=asr-lab"]
    assert "--standalone" not in args and "--verbose" in args
    assert not of_kind(objects, "ClusterRole") and not of_kind(objects, "ClusterRoleBinding")
    assert sorted(r["metadata"]["namespace"] for r in of_kind(objects, "Role")) == ["asr-lab", "speech"]
    for binding in of_kind(objects, "RoleBinding"):
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "asr-asr-rollout",
                                        "namespace": RELEASE_NAMESPACE}]
    assert sorted(p["metadata"]["namespace"] for p in of_kind(objects, "KopfPeering")) == ["asr-lab", "speech"]
    assert len(of_kind(objects, "PrometheusRule")) == 1
    (secret,) = of_kind(objects, "Secret")
    assert secret["data"]["token"] == "bm90LWEtcmVhbC10b2tlbg=="  # base64 of the given token


def test_standalone_runs_one_replica_that_never_overlaps() -> None:
    objects = render({"peering": {"enabled": False}})
    (deployment,) = of_kind(objects, "Deployment")
    assert "--standalone" in deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert not [o for o in objects if o["apiVersion"].startswith("kopf.dev/")]


def test_existing_secret_is_used_instead_of_rendering_one() -> None:
    objects = render({"alertWebhook": {"existingSecret": "my-alert-token"}})
    assert of_kind(objects, "Secret") == []
    (deployment,) = of_kind(objects, "Deployment")
    env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["ASR_ALERT_WEBHOOK_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "my-alert-token"


def test_webhook_service_reaches_the_operator_pods(rendered: list[dict[str, Any]]) -> None:
    (deployment,) = of_kind(rendered, "Deployment")
    (service,) = [s for s in of_kind(rendered, "Service") if s["metadata"]["name"].endswith("-alert-webhook")]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    port_names = {p["name"] for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert service["spec"]["ports"][0]["targetPort"] in port_names


def test_notes_tell_the_next_commands() -> None:
    notes = render_notes(NON_DEFAULT_VALUES)
    assert "kubectl -n asr-system rollout status deployment/asr-asr-rollout" in notes
    assert "kubectl get asr" in notes
    assert "speech, asr-lab" in notes
    assert "asr-asr-rollout-alert-webhook.asr-system.svc:8081/alerts" in notes


def test_dashboard_is_valid_json_over_contract_metrics() -> None:
    objects = render(NON_DEFAULT_VALUES)
    (configmap,) = [c for c in of_kind(objects, "ConfigMap") if c["metadata"]["name"].endswith("-dashboard")]
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(configmap["data"]["asr-rollout.json"])
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = {m for e in exprs for m in re.findall(r"\b(asr_[a-z_]+?)(?:_bucket|_count|_sum)?\b(?=\s*[{\[(])", e)}
    contracts = (REPO_ROOT / "docs" / "contracts.md").read_text(encoding="utf-8")
    unknown = sorted(m for m in used if f"`{m}`" not in contracts)
    assert not unknown, f"dashboard uses metrics docs/contracts.md does not define: {unknown}"
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("phase", "weight", "error rate", "latency", "real-time factor", "model versions"):
        assert topic in titles


# --- values.schema.json and template checks reject bad values with a clear message ------------


@pytest.mark.parametrize("values, message", [
    ({"replicaCount": 0}, "/replicaCount"),
    ({"replicaCount": "two"}, "/replicaCount"),
    ({"watchNamespaces": ["Speech_NS"]}, "/watchNamespaces/0"),
    ({"watchNamespaces": ["speech", "speech"]}, "/watchNamespaces"),
    ({"image": {"repository": ""}}, "/image/repository"),
    ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
    ({"imageTag": "v1"}, "'imageTag' not allowed"),
    ({"alertWebhook": {"port": 80}}, "/alertWebhook/port"),
    ({"prometheusRule": {"canary": {"errorRate": 5}}}, "/prometheusRule/canary/errorRate"),
    ({"prometheusRule": {"rateWindow": "five minutes"}}, "/prometheusRule/rateWindow"),
    ({"resources": {"limits": None}}, "limits"),  # null removes a default in Helm
    ({"podLabels": {"team": 7}}, "/podLabels/team"),
])
def test_schema_rejects_bad_values(values: dict[str, Any], message: str) -> None:
    with helm.Chart.load(CHART_DIR) as chart:
        with pytest.raises(helm.HelmError) as caught:
            chart.render(values, name="asr", namespace=RELEASE_NAMESPACE)
    assert "don't meet the specifications of the schema" in str(caught.value)
    assert message in str(caught.value), str(caught.value)


@pytest.mark.parametrize("values, message", [
    ({"replicaCount": 2, "peering": {"enabled": False}}, "replicaCount=2 needs peering.enabled=true"),
    ({"metrics": {"port": 9000}, "alertWebhook": {"port": 9000}}, "give them different ports"),
])
def test_inconsistent_values_fail_with_a_reason(values: dict[str, Any], message: str) -> None:
    with helm.Chart.load(CHART_DIR) as chart:
        with pytest.raises(helm.HelmError, match=re.escape(message)):
            chart.render(values, name="asr", namespace=RELEASE_NAMESPACE)


def test_default_values_pass_the_schema() -> None:
    with helm.Chart.load(CHART_DIR) as chart:
        chart.validate_schema(chart.merge_values({}))
        chart.validate_schema(chart.merge_values(NON_DEFAULT_VALUES))
