"""The config push's pure decisions (asr_operator.config_push): which revision a ConfigMap write
carries, which pods are pushed to at which address, the token Secret, and counting what pods serve."""
from __future__ import annotations

import base64

import pytest
import yaml

from asr_operator import children, config_push
from asr_operator.spec import ModelRef

NOW_MS = 1_800_000_000_000
MODEL = ModelRef(name="paraformer-zh", version="v2", path="paraformer-zh/v2")
DESIRED = children.model_config(MODEL)


def test_first_write_gets_a_revision_from_the_clock() -> None:
    assert config_push.plan_revision(None, DESIRED, NOW_MS) == (NOW_MS, True)


def test_unchanged_content_keeps_its_revision_and_pushes_nothing() -> None:
    live = {**DESIRED, "revision": 42}
    assert config_push.plan_revision(live, DESIRED, NOW_MS) == (42, False)


def test_a_change_always_moves_the_revision_forward() -> None:
    old = {**children.model_config(ModelRef(name="paraformer-zh", version="v1", path="paraformer-zh/v1")),
           "revision": NOW_MS + 5_000}  # written by an operator whose clock ran ahead
    revision, changed = config_push.plan_revision(old, DESIRED, NOW_MS)
    assert changed and revision == NOW_MS + 5_001  # never backwards, whatever this clock says
    revision, changed = config_push.plan_revision({**old, "revision": 7}, DESIRED, NOW_MS)
    assert changed and revision == NOW_MS  # a ConfigMap made again keeps running pods' revisions behind it


def test_a_configmap_without_revision_is_rewritten_with_one() -> None:
    # Written by an operator from before revisions: same model, but the pods need a revision to order pushes.
    assert config_push.plan_revision(dict(DESIRED), DESIRED, NOW_MS) == (NOW_MS, True)


def test_configmap_carries_the_revision_in_model_yaml() -> None:
    owner = {"metadata": {"name": "r", "uid": "u"}}
    cm = children.configmap("ns", "r", "stable", MODEL, owner, revision=9)
    data = yaml.safe_load(cm["data"][children.CONFIG_KEY])
    assert data["revision"] == 9 and config_push.live_config(cm) == data


def _pod(ip: str | None, port: int | None = None, **meta: str) -> dict[str, object]:
    ports = [{"name": "http", "containerPort": port}] if port else []
    return {"metadata": {"name": "p", **meta}, "spec": {"containers": [{"name": "c", "ports": ports}]},
            "status": {"podIP": ip, "phase": "Running"} if ip else {"phase": "Pending"}}


@pytest.mark.parametrize("pod, address", [
    (_pod("10.0.0.7", 8000), "http://10.0.0.7:8000"),
    (_pod("10.0.0.7"), "http://10.0.0.7:8000"),               # no declared port: the contract's 8000
    (_pod("127.0.0.1", 41735), "http://127.0.0.1:41735"),     # the sandbox: a local process per pod
    (_pod("fd00::5", 8000), "http://[fd00::5]:8000"),
    (_pod(None, 8000), None),                                 # not scheduled / no IP yet
    (_pod("10.0.0.7", 8000, deletionTimestamp="2026-01-01T00:00:00Z"), None),  # terminating
])
def test_pod_address_from_pod_ip_and_http_port(pod: dict[str, object], address: str | None) -> None:
    assert config_push.pod_address(pod) == address


def test_admin_secret_holds_the_token_and_the_pods_read_it_optionally() -> None:
    owner = {"metadata": {"name": "r", "uid": "u"}}
    secret = config_push.admin_secret("ns", "r", "t0ken", owner)
    assert secret["metadata"]["name"] == children.admin_secret_name("r") == "r-admin-token"
    assert base64.b64decode(secret["data"]["token"]).decode() == "t0ken"
    assert config_push.token_of(secret) == "t0ken" and config_push.token_of(None) is None
    assert secret["metadata"]["ownerReferences"][0]["uid"] == "u"
    from asr_operator.spec import PodTemplate
    deployment = children.deployment("ns", "r", "stable", 1, "v2", PodTemplate(image="img"), owner)
    env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["ASR_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "r-admin-token", "key": "token",
                                                                    "optional": True}


def test_served_counts_need_every_pod_to_answer() -> None:
    v2 = {"serving": {"version": "v2"}}
    assert config_push.served_counts([v2, v2]) == {"v2": 2}
    assert config_push.served_counts([v2, {"serving": None}]) == {"v2": 1, "": 1}
    assert config_push.served_counts([v2, None]) is None
