"""Memory headroom: can the next version load beside the serving one?

A hot reload holds two versions at once. Where the device has room for one model only, trying
anyway ends in an out-of-memory kill (CPU: the cgroup OOM killer takes the whole pod) or a CUDA
OOM halfway through a load. The server therefore compares what it has free (`headroom`) with
what the new version needs, refuses a load that cannot fit (reason `insufficient_memory`, the old
version serving), and reports both numbers so the operator can choose a rolling update instead.

Headroom sources: CUDA: `torch.cuda.mem_get_info` (free on the device); CPU: the cgroup memory
limit (v2 `memory.max`, v1 `memory.limit_in_bytes`) minus this process's RSS; no limit: unknown,
treated as unbounded. `--memory-limit-bytes` / `ASR_MEMORY_LIMIT_BYTES` caps the memory the
server may use (CPU: its RSS; CUDA: what torch has reserved) below what the system allows.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MiB = 1024 * 1024
# Loading a checkpoint holds the file's tensors and the model's parameters at once (torch.load,
# then load_state_dict copies them), and a warm-up adds activations: 2x the files is the
# estimate until a load of that version has been measured.
NEED_FACTOR = 2.0
# cgroup v1 reports "no limit" as a huge page-aligned number rather than "max".
_V1_UNLIMITED = 1 << 60
_WEIGHT_SKIP_DIRS = {"golden"}  # golden-set audio ships with a version but is never loaded as weights


@dataclass(frozen=True)
class Headroom:
    """Bytes free for another version; None: no limit known (unbounded)."""

    bytes: int | None
    source: str                 # how it was measured, for messages and /v1/models
    limit_bytes: int | None = None
    used_bytes: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"headroom_bytes": self.bytes, "headroom_source": self.source,
                "limit_bytes": self.limit_bytes, "used_bytes": self.used_bytes}


@dataclass(frozen=True)
class Need:
    bytes: int
    source: str                 # "files" (size x NEED_FACTOR) or "measured" (an earlier load)


@dataclass(frozen=True)
class SwapVerdict:
    can_load_beside: bool
    message: str


def decide_swap(headroom: Headroom, need: Need, new_version: str, serving_version: str | None) -> SwapVerdict:
    """Whether `new_version` may be loaded beside the serving one. Unknown headroom (no limit
    anywhere) does not refuse: there is nothing to compare with, and refusing every swap on a
    machine without limits would be worse than today's behaviour."""
    if headroom.bytes is None:
        return SwapVerdict(True, f"no memory limit known ({headroom.source}); loading beside")
    if need.bytes <= headroom.bytes:
        return SwapVerdict(True, f"{_mib(need.bytes)} needed, {_mib(headroom.bytes)} free")
    beside = f" beside {serving_version}" if serving_version else ""
    return SwapVerdict(False, (
        f"version {new_version} needs about {_mib(need.bytes)} ({need.bytes} bytes, {_need_text(need)}) to load"
        f"{beside}, but only {_mib(headroom.bytes)} ({headroom.bytes} bytes) are free ({headroom.source}); "
        "refused instead of running out of memory, the old version keeps serving. Give the pod more "
        "memory, or let Kubernetes replace the pods (spec.strategy.stableUpdate: rolling or auto)"))


def _mib(n: int) -> str:
    return f"{n / MiB:.1f} MiB"


def _need_text(need: Need) -> str:
    if need.source == "measured":
        return "measured at an earlier load"
    return f"{NEED_FACTOR:g}x its files"


def files_size(directory: Path) -> int:
    """Bytes of a model directory's files (golden-set audio excluded)."""
    total = 0
    for root, dirs, files in os.walk(directory):
        dirs[:] = [d for d in dirs if d not in _WEIGHT_SKIP_DIRS]
        for name in files:
            try:
                total += (Path(root) / name).stat().st_size
            except OSError:
                continue
    return total


def estimate_need(directories: list[Path], measured: int | None) -> Need:
    """What a version needs: the larger of its files x NEED_FACTOR and what an earlier load of
    the same files measured (the file estimate is a floor: an RSS delta can hide reused memory)."""
    from_files = int(sum(files_size(d) for d in directories) * NEED_FACTOR)
    if measured is not None and measured > from_files:
        return Need(measured, "measured")
    return Need(from_files, "files")


def cgroup_memory_limit(root: Path = Path("/sys/fs/cgroup")) -> tuple[int | None, str]:
    """(limit bytes or None, which file said so). cgroup v2 first, then v1."""
    v2 = root / "memory.max"
    if v2.is_file():
        text = v2.read_text().strip()
        return (None if text == "max" else int(text)), "cgroup v2 memory.max"
    v1 = root / "memory" / "memory.limit_in_bytes"
    if v1.is_file():
        value = int(v1.read_text().strip())
        return (None if value >= _V1_UNLIMITED else value), "cgroup v1 memory.limit_in_bytes"
    return None, "no cgroup memory controller"


def process_rss() -> int:
    """Resident set size of this process in bytes (Linux /proc)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def cpu_headroom(cap_bytes: int | None, cgroup_root: Path = Path("/sys/fs/cgroup"),
                 rss: int | None = None) -> Headroom:
    limit, source = cgroup_memory_limit(cgroup_root)
    if cap_bytes is not None and (limit is None or cap_bytes < limit):
        limit, source = cap_bytes, "--memory-limit-bytes"
    used = process_rss() if rss is None else rss
    if limit is None:
        return Headroom(None, f"{source}: no limit", None, used)
    return Headroom(max(limit - used, 0), f"{source} {_mib(limit)} - RSS {_mib(used)}", limit, used)


def cuda_headroom(device: str, cap_bytes: int | None) -> Headroom:
    import torch

    free, total = torch.cuda.mem_get_info(device)
    reserved = int(torch.cuda.memory_reserved(device))
    headroom, source, limit = int(free), f"torch.cuda.mem_get_info({device}) free of {_mib(int(total))}", int(total)
    if cap_bytes is not None and cap_bytes - reserved < headroom:
        headroom = max(cap_bytes - reserved, 0)
        source, limit = f"--memory-limit-bytes {_mib(cap_bytes)} - torch reserved {_mib(reserved)}", cap_bytes
    return Headroom(headroom, source, limit, reserved)


def measure_headroom(device: str, cap_bytes: int | None) -> Headroom:
    if device.startswith("cuda"):
        return cuda_headroom(device, cap_bytes)
    return cpu_headroom(cap_bytes)


class LoadMeter:
    """What one load took: CUDA: the peak allocated on the device over the load; CPU: the RSS
    growth (a lower bound, which estimate_need never lets undercut the file estimate)."""

    def __init__(self, device: str) -> None:
        self.device = device
        self._before = 0

    def __enter__(self) -> "LoadMeter":
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._before = int(torch.cuda.memory_allocated(self.device))
        else:
            self._before = process_rss()
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def used(self) -> int:
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize(self.device)
            return max(int(torch.cuda.max_memory_allocated(self.device)) - self._before, 0)
        return max(process_rss() - self._before, 0)
