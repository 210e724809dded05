"""Pure parts of device selection and memory-aware swaps: which device a version loads on, how a
load failure on a device is named, the headroom sources and the load-beside decision."""

from __future__ import annotations

from pathlib import Path

import pytest

from inference_server.config import ConfigError, ModelConfig, parse_model_config
from inference_server.device import DeviceError, classify_load_failure, resolve_device, wanted_device
from inference_server.memory import (
    NEED_FACTOR, Headroom, Need, cgroup_memory_limit, cpu_headroom, decide_swap, estimate_need, files_size,
)
from inference_server.model_loader import LoadError, select_device
from inference_server.settings import parse_args


@pytest.mark.parametrize("server, option, expected", [
    ("auto", None, ("auto", "server")),
    ("auto", "cuda:1", ("cuda:1", "options.device")),   # a server started by hand: the model config decides
    ("auto", "auto", ("auto", "server")),
    ("cuda", "cpu", ("cuda", "server")),                 # the pod asked for a GPU: the pod's setting wins
    ("cpu", "cuda", ("cpu", "server")),
])
def test_server_device_wins_over_options_device_unless_auto(server: str, option: str | None,
                                                            expected: tuple[str, str]) -> None:
    assert wanted_device(server, option) == expected


@pytest.mark.parametrize("wanted, available, count, expected", [
    ("auto", False, 0, "cpu"),
    ("auto", True, 2, "cuda:0"),
    ("cpu", True, 1, "cpu"),
    ("cuda", True, 1, "cuda:0"),
    ("cuda:1", True, 2, "cuda:1"),
])
def test_resolve_device(wanted: str, available: bool, count: int, expected: str) -> None:
    assert resolve_device(wanted, available, count) == expected


def test_cuda_without_cuda_is_an_error_not_a_cpu_fallback() -> None:
    with pytest.raises(DeviceError, match="no CUDA device is available.*not serving on CPU"):
        resolve_device("cuda", False, 0)
    with pytest.raises(DeviceError, match="only 1 CUDA device"):
        resolve_device("cuda:3", True, 1)
    with pytest.raises(DeviceError, match="not one of"):
        resolve_device("tpu", True, 1)


def test_select_device_names_the_setting_and_fails_with_reason_device(monkeypatch: pytest.MonkeyPatch) -> None:
    import inference_server.model_loader as loader

    monkeypatch.setattr(loader, "cuda_state", lambda: (False, 0))  # this machine may have CUDA: pin "none"
    config = ModelConfig("m", "v1", "m/v1", options={"device": "cuda"})
    with pytest.raises(LoadError) as raised:
        select_device(config, "auto")
    assert raised.value.stage == "device" and "options.device" in str(raised.value)
    with pytest.raises(LoadError, match="ASR_DEVICE"):
        select_device(ModelConfig("m", "v1", "m/v1"), "cuda")
    assert select_device(ModelConfig("m", "v1", "m/v1"), "auto") == "cpu"


def test_device_flag_env_and_options_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    base = ["--model-config", "m.yaml"]
    assert parse_args(base).device == "auto"
    monkeypatch.setenv("ASR_DEVICE", "cuda")
    monkeypatch.setenv("ASR_MEMORY_LIMIT_BYTES", "1000")
    settings = parse_args(base)
    assert (settings.device, settings.memory_limit_bytes) == ("cuda", 1000)
    assert parse_args(base + ["--device", "cpu"]).device == "cpu"
    with pytest.raises(SystemExit):
        parse_args(base + ["--device", "gpu"])
    with pytest.raises(ConfigError, match="options.device 'gpu' is not one of"):
        parse_model_config("name: m\nversion: v1\npath: m/v1\noptions: {device: gpu}\n")


class OutOfMemoryError(RuntimeError):
    """Stands in for torch.cuda.OutOfMemoryError, which a CPU build of torch cannot raise."""


@pytest.mark.parametrize("exc, reason", [
    (OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), "insufficient_memory"),
    (RuntimeError("CUDA error: no kernel image is available for execution on the device"), "device"),
    (RuntimeError("cuDNN error: CUDNN_STATUS_NOT_INITIALIZED"), "device"),
    (ValueError("size mismatch for encoder.weight"), None),
])
def test_load_failures_on_a_device_are_named(exc: BaseException, reason: str | None) -> None:
    assert classify_load_failure(exc) == reason


def test_decide_swap() -> None:
    need = Need(300, "files")
    assert decide_swap(Headroom(None, "no cgroup"), need, "v2", "v1").can_load_beside
    assert decide_swap(Headroom(300, "cap"), need, "v2", "v1").can_load_beside
    refused = decide_swap(Headroom(299, "cgroup v2 memory.max"), need, "v2", "v1")
    assert not refused.can_load_beside
    assert "v2 needs about" in refused.message and "(300 bytes" in refused.message
    assert "(299 bytes) are free (cgroup v2 memory.max)" in refused.message and "beside v1" in refused.message


def test_need_is_files_times_factor_unless_a_load_measured_more(tmp_path: Path) -> None:
    (tmp_path / "golden").mkdir()
    (tmp_path / "model.pt").write_bytes(b"x" * 1000)
    (tmp_path / "golden" / "clip.wav").write_bytes(b"x" * 5000)  # audio, never loaded as weights
    assert files_size(tmp_path) == 1000
    assert estimate_need([tmp_path], None) == Need(int(1000 * NEED_FACTOR), "files")
    assert estimate_need([tmp_path], 10) == Need(int(1000 * NEED_FACTOR), "files")
    assert estimate_need([tmp_path], 50_000) == Need(50_000, "measured")


def test_cgroup_limits_v2_v1_and_none(tmp_path: Path) -> None:
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "memory.max").write_text("max\n")
    assert cgroup_memory_limit(v2) == (None, "cgroup v2 memory.max")
    (v2 / "memory.max").write_text("2147483648\n")
    assert cgroup_memory_limit(v2) == (2147483648, "cgroup v2 memory.max")
    v1 = tmp_path / "v1"
    (v1 / "memory").mkdir(parents=True)
    (v1 / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    assert cgroup_memory_limit(v1)[0] is None
    (v1 / "memory" / "memory.limit_in_bytes").write_text("1073741824\n")
    assert cgroup_memory_limit(v1) == (1073741824, "cgroup v1 memory.limit_in_bytes")
    assert cgroup_memory_limit(tmp_path / "none")[0] is None

    # CPU headroom: the lower of the cgroup limit and the cap, minus RSS; never below 0
    assert cpu_headroom(None, v1, rss=100).bytes == 1073741824 - 100
    assert cpu_headroom(1000, v1, rss=100).bytes == 900
    assert cpu_headroom(50, v1, rss=100).bytes == 0
    assert cpu_headroom(None, tmp_path / "none", rss=100).bytes is None
    assert cpu_headroom(1000, tmp_path / "none", rss=100).bytes == 900


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA: gpu-check runs for real")
def test_gpu_check_without_cuda_prints_one_skipped_line_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from asr_sandbox.gpu_check import main

    assert main([]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1
    line = json.loads(lines[0])
    assert line["skipped"] is True and "no CUDA device" in line["reason"]
