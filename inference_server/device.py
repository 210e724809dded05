"""Which torch device a model version runs on, and how a device failure is named.

The pod decides the hardware: the operator sets `ASR_DEVICE=cuda` when the pod requests a GPU,
and a pod that asked for a GPU and computes on CPU (or a CUDA error that a CPU fallback would
hide) must never turn Ready. So an explicit CUDA request without CUDA is a load failure with
reason `device`, never a silent fallback.
"""

from __future__ import annotations

import re
from typing import Any

DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


class DeviceError(Exception):
    """The requested device does not exist here; the message says what to change."""


def check_device_name(value: str) -> str | None:
    """None when `value` names a device this server understands, else the problem."""
    if not _DEVICE.match(value):
        return f"device {value!r} is not one of {DEVICE_CHOICES}"
    return None


def wanted_device(server_device: str, option_device: Any) -> tuple[str, str]:
    """(device, where it came from). The server's own setting (`--device` / `ASR_DEVICE`) wins
    over the model config's `options.device`: the operator sets it from what the pod requested,
    and the same model config is served by both tracks and by rollbacks, so it cannot know the
    pod's hardware. `auto` on the server means "not decided by the pod": then `options.device`
    applies where given (a server started by hand), else auto."""
    if server_device != "auto":
        return server_device, "server"
    if option_device not in (None, "", "auto"):
        return str(option_device), "options.device"
    return "auto", "server"


def resolve_device(wanted: str, cuda_available: bool, device_count: int, source: str = "server") -> str:
    """The torch device for `wanted`. Raises DeviceError where CUDA was asked for and is absent."""
    problem = check_device_name(wanted)
    if problem is not None:
        raise DeviceError(f"{problem} (from {_SOURCE_TEXT.get(source, source)})")
    if wanted == "auto":
        return "cuda:0" if cuda_available and device_count > 0 else "cpu"
    if wanted == "cpu":
        return "cpu"
    index = int(wanted.partition(":")[2] or 0)
    if not cuda_available or device_count == 0:
        raise DeviceError(
            f"device {wanted} was asked for ({_SOURCE_TEXT.get(source, source)}) but no CUDA device is "
            "available here (torch.cuda.is_available() is False: no GPU, no driver, or a CPU-only torch "
            "build); not serving on CPU instead. Give the pod a GPU (resources.limits nvidia.com/gpu) and a "
            "CUDA image, or set the device to cpu/auto")
    if index >= device_count:
        raise DeviceError(f"device {wanted} was asked for ({_SOURCE_TEXT.get(source, source)}) but only "
                          f"{device_count} CUDA device(s) exist here (cuda:0..cuda:{device_count - 1})")
    return f"cuda:{index}"


_SOURCE_TEXT = {"server": "--device / ASR_DEVICE", "options.device": "the model config's options.device"}


def cuda_state() -> tuple[bool, int]:
    """(is_available, device_count) from torch; (False, 0) where torch has no CUDA."""
    try:
        import torch
    except ImportError:
        return False, 0
    if not torch.cuda.is_available():
        return False, 0
    return True, int(torch.cuda.device_count())


def classify_load_failure(exc: BaseException) -> str | None:
    """The reload reason for an exception raised while building or warming a version on a
    device: `insufficient_memory` for an out-of-memory error, `device` for any other CUDA error
    (driver, kernel image, device-side assert), None for everything else (the stage's own
    reason applies). Matched by name and message so it needs no CUDA build of torch."""
    name = type(exc).__name__
    text = str(exc)
    if name == "OutOfMemoryError" or "CUDA out of memory" in text:
        return "insufficient_memory"
    if name in ("AcceleratorError", "CudaError") or "CUDA" in text or "cuDNN" in text or "NCCL" in text:
        return "device"
    return None
