"""CUDA paths: placement, release and the GPU memory metric. Skipped, visibly, without a GPU."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                                  reason="no CUDA device on this machine")]


def test_version_on_cuda_is_released_back_to_the_baseline(models_root: Path) -> None:
    from inference_server.config import ModelConfig
    from inference_server.metrics import ServerMetrics
    from inference_server.model_loader import load_version

    config = ModelConfig("paraformer-tiny", "v1", "paraformer-tiny/v1", options={"device": "cuda"})
    torch.cuda.synchronize()
    baseline = torch.cuda.memory_allocated()
    model = load_version(config, models_root)
    assert next(model.asr.model.parameters()).is_cuda
    loaded = torch.cuda.memory_allocated()
    assert loaded > baseline
    metrics = ServerMetrics({})
    metrics.update_gpu_memory()
    assert metrics.registry.get_sample_value(
        "asr_gpu_memory_allocated_bytes", {**metrics.pod, "device": "cuda:0"}) == loaded
    model.close()
    del model
    gc.collect()
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() - baseline <= 0.02 * (loaded - baseline)


def test_gpu_memory_used_and_total_per_device_and_a_capped_headroom(models_root: Path) -> None:
    from inference_server.config import ModelConfig
    from inference_server.memory import cuda_headroom
    from inference_server.metrics import ServerMetrics
    from inference_server.model_loader import load_version

    model = load_version(ModelConfig("paraformer-tiny", "v1", "paraformer-tiny/v1"), models_root, server_device="cuda")
    try:
        assert model.device == "cuda:0" and model.memory_bytes > 0  # the load's peak on the device
        metrics = ServerMetrics({})
        metrics.update_gpu_memory()
        free, total = torch.cuda.mem_get_info(0)
        labels = {**metrics.pod, "device": "cuda:0"}
        assert metrics.registry.get_sample_value("asr_gpu_memory_total_bytes", labels) == total
        used = metrics.registry.get_sample_value("asr_gpu_memory_used_bytes", labels)
        assert used is not None and 0 < used <= total
        reserved = torch.cuda.memory_reserved(0)
        assert cuda_headroom("cuda:0", None).bytes == free
        capped = cuda_headroom("cuda:0", reserved + 1000)
        assert capped.bytes == 1000 and capped.source.startswith("--memory-limit-bytes")
    finally:
        model.close()
