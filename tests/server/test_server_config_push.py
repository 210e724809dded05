"""The revision rule between the mounted config file and the operator's push (`PUT
/admin/config`): the pure rule, then a real server process with a ConfigMap-like folder, where
an older revision arriving late through the file is ignored and a newer one still converges."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from asr_sandbox import ServerProcess, model_config
from inference_server.config import ConfigError, parse_model_config
from inference_server.config_revision import APPLY, CURRENT, STALE, admit

TOKEN = "push-s3cret"


# --- the pure rule -----------------------------------------------------------------------------

@pytest.mark.parametrize("newest, revision, verdict, after", [
    (None, 5, APPLY, 5),        # the first revision seen
    (5, 6, APPLY, 6),           # newer: served
    (6, 5, STALE, 6),           # a late copy of an older revision: ignored
    (6, 6, CURRENT, 6),         # the other source's copy of the one taken
    (6, None, APPLY, 6),        # no revision (hand-written file): served, as before revisions
    (None, None, APPLY, None),
])
def test_newer_revision_wins_whichever_source_brings_it(newest: int | None, revision: int | None,
                                                         verdict: str, after: int | None) -> None:
    admission = admit(newest, revision)
    assert (admission.verdict, admission.newest) == (verdict, after)


def test_revision_is_validated_and_does_not_make_another_model() -> None:
    base = {"name": "m", "version": "v1", "path": "m/v1"}
    a = parse_model_config(yaml.safe_dump({**base, "revision": 3}))
    b = parse_model_config(yaml.safe_dump({**base, "revision": 4}))
    assert (a.revision, b.revision) == (3, 4)
    assert a == b  # the same model: a new revision of it loads nothing
    for bad in (-1, "7", True, 1.5):
        with pytest.raises(ConfigError, match="revision"):
            parse_model_config(yaml.safe_dump({**base, "revision": bad}))


# --- a real server process ---------------------------------------------------------------------

def put_config(server: ServerProcess, config: dict[str, Any], token: str | None = TOKEN,
               wait_s: float = 60) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(f"{server.url}/admin/config?wait={wait_s}", method="PUT",
                                     data=yaml.safe_dump(config).encode(),
                                     headers={"Content-Type": "application/yaml"})
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=wait_s + 10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def serving(server: ServerProcess) -> dict[str, Any]:
    _, body = server.get_json("/v1/models")
    return body["serving"] or {}


def settle(server: ServerProcess, seconds: float = 1.5) -> None:
    """Give the file watcher (0.1 s interval here) many looks at the folder."""
    time.sleep(seconds)
    server.get_json("/healthz")


@pytest.fixture(scope="module")
def push_server(tmp_path_factory: pytest.TempPathFactory, models_root: Path, server_starter):
    tmp = tmp_path_factory.mktemp("config-push")
    server, cm = server_starter(tmp, models_root, model_config("v1", revision=10),
                                extra_args=["--watch-interval", "0.1"], env={"ASR_ADMIN_TOKEN": TOKEN})
    yield server, cm
    server.stop()


def test_push_is_refused_without_the_token_or_a_revision(push_server) -> None:
    server, _ = push_server
    assert put_config(server, model_config("v2", revision=11), token=None)[0] == 401
    assert put_config(server, model_config("v2", revision=11), token="wrong")[0] == 401
    status, body = put_config(server, model_config("v2"))
    assert status == 400 and "revision" in body["error"]["message"]
    status, body = put_config(server, {"name": "x"})
    assert status == 400 and body["error"]["type"] == "invalid_config"
    assert serving(server)["version"] == "v1"


def test_late_older_file_copy_never_undoes_a_newer_push(push_server) -> None:
    server, cm = push_server
    assert (serving(server)["version"], serving(server)["revision"]) == ("v1", 10)
    # The operator writes revision 12 (v2) and pushes it: served at once, before the kubelet copies it.
    status, body = put_config(server, model_config("v2", revision=12))
    assert (status, body["result"], body["version"]) == (200, "success", "v2"), body
    assert serving(server)["revision"] == 12
    # The kubelet's copy of an older write (revision 11, v1) lands late: ignored.
    cm.swap(model_config("v1", revision=11))
    settle(server)
    assert (serving(server)["version"], serving(server)["revision"]) == ("v2", 12)
    # A late push of that older revision is ignored too, and says so.
    status, body = put_config(server, model_config("v1", revision=11))
    assert (status, body["result"], body["revision"]) == (200, "ignored", 12), body
    # The kubelet's copy of revision 12 itself: nothing to do.
    cm.swap(model_config("v2", revision=12))
    settle(server)
    assert serving(server)["version"] == "v2"
    _, models = server.get_json("/v1/models")
    assert models["swaps"] == 2  # v1 at start, v2 by the push: no reload since


def test_a_pod_that_missed_the_push_converges_through_the_file(push_server) -> None:
    server, cm = push_server
    before = serving(server)["revision"]
    cm.swap(model_config("v1", revision=before + 5))  # a newer write whose push this pod missed
    server.wait_serving("v1")
    assert serving(server)["revision"] == before + 5
    # ... and from then on an older push is ignored as well.
    status, body = put_config(server, model_config("v2", revision=before + 1))
    assert body["result"] == "ignored" and serving(server)["version"] == "v1"


def test_push_without_waiting_is_accepted_and_loads_after_the_answer(push_server) -> None:
    server, _ = push_server
    revision = serving(server)["revision"] + 1
    status, body = put_config(server, model_config("v2", revision=revision), wait_s=0)
    assert status in (200, 202) and body["revision"] == revision, body
    server.wait_serving("v2")
    assert serving(server)["revision"] == revision
