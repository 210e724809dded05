"""The quality gate in the real inference server and the real `asr-model golden` tool:
golden sets run at load before READY, the CER ceiling refuses a version (the old one keeps
serving), periodic re-runs, `/v1/golden`, `/v1/models` and the `asr_golden_*` metrics."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from asr_sandbox import ConfigMapDir, ServerProcess, model_config
from tests.golden.conftest import MODEL, GoldenModels, asr_model

POD_ENV = {"ASR_NAMESPACE": "speech", "ASR_ROLLOUT": "meeting-zh", "ASR_TRACK": "stable", "POD_NAME": "pod-0"}


def metrics(server: ServerProcess) -> str:
    with urllib.request.urlopen(server.url + "/metrics", timeout=10) as resp:
        return resp.read().decode()


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of the one series of `name` whose labels include `labels` (None: absent)."""
    found = []
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if all(got.get(k) == v for k, v in labels.items()):
            found.append(float(line.rsplit(" ", 1)[1]))
    assert len(found) <= 1, f"{name}{labels} matches {len(found)} series"
    return found[0] if found else None


def reload_error(proc: ServerProcess) -> dict[str, Any] | None:
    """The server's last refused reload (`last_reload_error` of /v1/models), if any."""
    _, body = proc.get_json("/v1/models")
    error: dict[str, Any] | None = body.get("last_reload_error")
    return error


def wait_until(probe, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def server(golden_models: GoldenModels, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[tuple[ServerProcess, ConfigMapDir]]:
    tmp = tmp_path_factory.mktemp("golden-server")
    cm = ConfigMapDir(tmp / "configmap")
    cm.swap(model_config("v1", vad=False))
    proc = ServerProcess(cm.path, golden_models.root, tmp / "server.log", env=POD_ENV)
    proc.start()
    try:
        yield proc, cm
    finally:
        proc.stop()


def test_golden_set_runs_at_load_and_is_exported(server: tuple[ServerProcess, ConfigMapDir],
                                                 golden_models: GoldenModels) -> None:
    proc, _ = server
    status, models = proc.get_json("/v1/models")
    assert status == 200
    golden = models["serving"]["golden"]
    assert golden["cer"] == 0.0 and golden["items"] == 2 and golden["has_references"]
    assert golden["wer"] is None  # the tiny model writes CJK characters: no space-delimited refs

    status, body = proc.get_json("/v1/golden")
    assert status == 200 and body["model_version"] == "v1"
    assert {i["audio"]: i["hypothesis"] for i in body["items"]} == golden_models.references
    assert all(i["cer"] == 0.0 for i in body["items"])

    text = metrics(proc)
    assert sample(text, "asr_golden_cer", version="v1", track="stable", pod="pod-0", model=MODEL) == 0.0
    for item in body["items"]:
        assert sample(text, "asr_golden_transcript_info", version="v1", file=item["audio"],
                      digest=item["digest"]) == 1.0


def test_other_weights_score_high_and_same_weights_score_zero(server: tuple[ServerProcess, ConfigMapDir]) -> None:
    proc, cm = server
    cm.swap(model_config("v2", vad=False))
    proc.wait_serving("v2", timeout_s=120)
    text = metrics(proc)
    cer_v2 = sample(text, "asr_golden_cer", version="v2")
    assert cer_v2 is not None and cer_v2 > 0.5   # random weights: nearly every character differs
    assert sample(text, "asr_golden_cer", version="v1") is None  # the replaced version's series is gone

    cm.swap(model_config("v2-same", vad=False))
    proc.wait_serving("v2-same", timeout_s=120)
    assert sample(metrics(proc), "asr_golden_cer", version="v2-same") == 0.0


def test_ceiling_refuses_a_version_and_the_old_one_keeps_serving(server: tuple[ServerProcess, ConfigMapDir]) -> None:
    proc, cm = server
    cm.swap(model_config("v2-same", vad=False))
    proc.wait_serving("v2-same", timeout_s=120)
    cm.swap(model_config("v2", vad=False, options={"golden_cer_max": 0.05}))

    error = wait_until(lambda: (e := reload_error(proc)) and e["version"] == "v2" and e, 120, "the v2 load to fail")
    assert error["reason"] == "golden"
    measured = re.search(r"golden-set CER (\d\.\d{4}) is over the ceiling golden_cer_max 0.05", error["message"])
    assert measured, error["message"]
    assert float(measured.group(1)) > 0.5
    _, body = proc.get_json("/v1/models")
    assert body["serving"]["version"] == "v2-same"     # never turned ready; the old one serves
    assert body["versions"]["v2"] == "FAILED"
    status, _ = proc.get_json("/readyz")
    assert status == 200
    text = metrics(proc)
    assert sample(text, "asr_model_reloads_total", result="failure", reason="golden") == 1.0
    assert sample(text, "asr_golden_cer", version="v2") is None

    # the same version under a ceiling it meets turns ready
    cm.swap(model_config("v1", vad=False, options={"golden_cer_max": 0.05}))
    proc.wait_serving("v1", timeout_s=120)


def test_periodic_reevaluation(server: tuple[ServerProcess, ConfigMapDir]) -> None:
    proc, cm = server
    cm.swap(model_config("v2-same", vad=False, options={"golden_interval_s": 0.5}))
    proc.wait_serving("v2-same", timeout_s=120)
    first = sample(metrics(proc), "asr_golden_evaluated_timestamp_seconds", version="v2-same")
    assert first is not None
    later = wait_until(lambda: (v := sample(metrics(proc), "asr_golden_evaluated_timestamp_seconds",
                                             version="v2-same")) and v > first and v, 60, "a re-run")
    assert later > first
    assert sample(metrics(proc), "asr_golden_cer", version="v2-same") == 0.0


def test_invalid_golden_options_are_refused_with_the_reason(server: tuple[ServerProcess, ConfigMapDir]) -> None:
    proc, cm = server
    cm.swap(model_config("v2", vad=False, options={"golden_cer_max": 5}))

    error = wait_until(lambda: (e := reload_error(proc)) and "golden_cer_max must be a number from 0 to 1"
                       in e["message"] and e, 30, "the invalid config to be refused")
    assert error["reason"] == "invalid_config"


def test_version_without_golden_set(server: tuple[ServerProcess, ConfigMapDir]) -> None:
    proc, cm = server
    # a ceiling with nothing to measure is refused, not waved through
    cm.swap(model_config("plain", vad=False, options={"golden_cer_max": 0.1}))

    error = wait_until(lambda: (e := reload_error(proc)) and e["version"] == "plain" and e, 120,
                       "the plain version with a ceiling to be refused")
    assert error["reason"] == "golden" and "ships no golden/ set" in error["message"]
    # without a ceiling it serves; there is simply no golden result
    cm.swap(model_config("plain", vad=False))
    proc.wait_serving("plain", timeout_s=120)
    _, body = proc.get_json("/v1/models")
    assert body["serving"]["golden"] is None
    status, error_body = proc.get_json("/v1/golden")
    assert status == 404 and "ships no golden set" in error_body["error"]["message"]
    assert sample(metrics(proc), "asr_golden_cer", version="plain") is None


def test_tool_check_reports_cer_and_enforces_max(golden_models: GoldenModels) -> None:
    ok = asr_model("golden", "check", golden_models.version_dir("v2-same"), "--max-cer", "0")
    assert json.loads(ok.stdout)["cer"] == 0.0
    bad = asr_model("golden", "check", golden_models.version_dir("v2"), "--max-cer", "0.05", check=False)
    assert bad.returncode == 1
    assert json.loads(bad.stdout)["cer"] > 0.5
    assert "is over --max-cer 0.05" in bad.stderr


def test_golden_files_are_covered_by_the_manifest(golden_models: GoldenModels, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "v1"
    shutil.copytree(golden_models.version_dir("v1"), copy)
    assert "golden/manifest.jsonl" in (copy / "MANIFEST.sha256").read_text()
    assert asr_model("verify", copy).returncode == 0
    manifest = copy / "golden" / "manifest.jsonl"
    manifest.write_text(manifest.read_text().replace('"text": "', '"text": "x'), encoding="utf-8")
    tampered = asr_model("verify", copy, check=False)
    assert tampered.returncode == 1 and "golden/manifest.jsonl" in tampered.stderr
    # and `golden create` refuses to bless a tampered directory with a fresh manifest
    again = asr_model("golden", "create", copy, "--audio", *golden_models.clips, "--no-refs", check=False)
    assert again.returncode == 2 and "checksum mismatch" in again.stderr


def test_tool_create_errors_say_what_to_fix(golden_models: GoldenModels, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "v2"
    shutil.copytree(golden_models.version_dir("v2"), copy)
    refs = tmp_path / "refs.tsv"
    refs.write_text("short.wav\tsomething\n", encoding="utf-8")
    missing = asr_model("golden", "create", copy, "--audio", *golden_models.clips, "--refs", refs, check=False)
    assert missing.returncode == 2 and "no reference for speech_gap.wav" in missing.stderr
    not_audio = tmp_path / "notes.wav"
    not_audio.write_text("not audio")
    bad = asr_model("golden", "create", copy, "--audio", not_audio, "--no-refs", check=False)
    assert bad.returncode == 2 and "notes.wav" in bad.stderr
