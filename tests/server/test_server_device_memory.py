"""Device selection and memory-aware swaps against real server processes and the tiny real
model directories: a CUDA request without CUDA never turns the server ready, and a hot reload
that would not fit beside the serving version is refused (insufficient_memory), the old version
serving. The memory cap (--memory-limit-bytes) stands in for a small pod; nothing is mocked."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from asr_sandbox import ConfigMapDir, ServerProcess, model_config
from tests.server.test_server_reload import wait_for_reload_error

torch = pytest.importorskip("torch")
NO_CUDA = not torch.cuda.is_available()
needs_no_cuda = pytest.mark.skipif(not NO_CUDA, reason="this machine has CUDA, so a CUDA request loads; "
                                   "tests/server/test_server_gpu.py covers that path")


def samples(server: ServerProcess, name: str) -> list[tuple[dict[str, str], float]]:
    text = urllib.request.urlopen(server.url + "/metrics", timeout=10).read().decode()
    return [(dict(s.labels), s.value) for family in text_string_to_metric_families(text)
            for s in family.samples if s.name == name]


def reload_reasons(server: ServerProcess) -> dict[str, float]:
    return {labels["reason"]: value for labels, value in samples(server, "asr_model_reloads_total")
            if labels["result"] == "failure"}


@needs_no_cuda
def test_asr_device_cuda_without_cuda_never_turns_ready(tmp_path: Path, models_root: Path) -> None:
    """The operator's contract: ASR_DEVICE=cuda on a pod without a usable GPU fails the load with
    reason `device` (before: a warning, a CPU fallback and a Ready pod holding a GPU it never used)."""
    cm = ConfigMapDir(tmp_path / "configmap")
    cm.swap(model_config("v1"))
    server = ServerProcess(cm.path, models_root, tmp_path / "server.log", env={"ASR_DEVICE": "cuda"})
    server.start(wait_ready=False)
    try:
        body = wait_for_reload_error(server, "v1", "device")
        assert "no CUDA device is available" in body["last_reload_error"]["message"]
        assert "ASR_DEVICE" in body["last_reload_error"]["message"]
        assert body["serving"] is None and body["versions"] == {"v1": "FAILED"}
        status, ready = server.get_json("/readyz")
        assert status == 503 and ready["ready"] is False
        assert reload_reasons(server) == {"device": 1.0}
        assert "(device): device cuda was asked for" in server.log_path.read_text()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def capped_server(tmp_path_factory: pytest.TempPathFactory, models_root: Path, server_starter):
    """v1 on CPU with a 64 MiB memory cap: far below what torch + FunASR already hold, so the
    first version loads (nothing to load beside) and no second version fits."""
    tmp = tmp_path_factory.mktemp("capped")
    server, cm = server_starter(tmp, models_root, model_config("v1"),
                                extra_args=["--watch-interval", "0.1"],
                                env={"ASR_MEMORY_LIMIT_BYTES": str(64 * 1024 * 1024)})
    yield server, cm
    server.stop()


def test_capped_server_reports_its_headroom_and_need(capped_server: tuple[ServerProcess, ConfigMapDir]) -> None:
    server, _ = capped_server
    _, body = server.get_json("/v1/models")
    memory: dict[str, Any] = body["memory"]
    assert body["serving"]["device"] == "cpu" and memory["device"] == "cpu"
    assert memory["limit_bytes"] == 64 * 1024 * 1024 and memory["headroom_source"].startswith("--memory-limit-bytes")
    assert memory["used_bytes"] > memory["limit_bytes"] and memory["headroom_bytes"] == 0
    assert memory["need_version"] == "v1" and memory["need_bytes"] > 0 and memory["can_load_beside"] is False
    assert samples(server, "asr_memory_headroom_bytes")[0][1] == 0
    assert samples(server, "asr_model_can_load_beside")[0][1] == 0
    assert {labels["version"] for labels, _ in samples(server, "asr_model_memory_bytes")} == {"v1"}
    assert samples(server, "asr_gpu_memory_used_bytes") == [] or not NO_CUDA  # CUDA-only series


@needs_no_cuda
def test_hot_reload_to_options_device_cuda_is_refused_while_v1_serves(
        capped_server: tuple[ServerProcess, ConfigMapDir]) -> None:
    server, cm = capped_server
    cm.swap(model_config("v2", options={"device": "cuda"}))
    body = wait_for_reload_error(server, "v2", "device")
    assert "options.device" in body["last_reload_error"]["message"]
    assert body["serving"]["version"] == "v1"
    assert server.get_json("/readyz")[0] == 200


def test_hot_reload_without_headroom_is_refused_with_the_numbers_while_v1_serves(
        capped_server: tuple[ServerProcess, ConfigMapDir], audio) -> None:
    server, cm = capped_server
    before = reload_reasons(server).get("insufficient_memory", 0)
    cm.swap(model_config("v2"))
    body = wait_for_reload_error(server, "v2", "insufficient_memory")
    message = body["last_reload_error"]["message"]
    memory = body["memory"]
    assert memory["need_version"] == "v2" and memory["can_load_beside"] is False
    assert f"({memory['need_bytes']} bytes" in message and "(0 bytes) are free (--memory-limit-bytes" in message
    assert "beside v1" in message and "stableUpdate" in message
    assert body["serving"]["version"] == "v1" and body["versions"] == {"v1": "READY", "v2": "FAILED"}
    assert reload_reasons(server)["insufficient_memory"] == before + 1
    versions = {labels["version"] for labels, _ in samples(server, "asr_model_memory_bytes")}
    assert versions == {"v1", "v2"}
    # v1 still answers, and nothing was loaded: the log never shows a v2 load starting
    request = urllib.request.Request(server.url + "/v1/audio/transcriptions", method="POST")
    boundary = "xyz"
    request.data = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nparaformer-tiny\r\n"
                    f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n"
                    "Content-Type: audio/wav\r\n\r\n").encode() + audio("short.wav") + f"\r\n--{boundary}--\r\n".encode()
    request.add_header("Content-Type", f"multipart/form-data; boundary={boundary}")
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.status == 200 and response.headers["X-Model-Version"] == "v1"
    time.sleep(0.3)
    assert "loading version v2" not in server.log_path.read_text()
