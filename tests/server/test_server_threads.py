"""One OpenMP team per server process: loading or replacing a version must leave no second one.

libgomp counts the threads of every live OpenMP team in the process; once they outnumber the
CPUs it makes all teams sleep at their barriers instead of spinning. On a 2-core pod the team a
long-lived loader thread kept after its first load made every later request's generate() ~15%
slower, for as long as the server ran. The check drives the server's own ModelSlot and
InferenceScheduler in a fresh interpreter, so that no other test's threads come and go while it
counts the process's OS threads (OpenMP helpers are not Python threads: /proc shows them)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import asyncio, json, os, sys, time
from pathlib import Path
from asr_sandbox import ConfigMapDir, model_config
from inference_server.config import SERVER_OPTIONS
from inference_server.metrics import ServerMetrics
from inference_server.model_loader import import_runtime, warmup_clip
from inference_server.model_slot import ModelSlot
from inference_server.scheduler import InferenceScheduler

def os_threads():
    return len(os.listdir("/proc/self/task"))

async def settled(expected):
    # a finished load's thread (and its OpenMP team) exits just after its result arrives
    deadline = time.monotonic() + 10
    while os_threads() != expected and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return os_threads()

async def main(models_root, tmp):
    import_runtime()
    cm = ConfigMapDir(tmp / "configmap")
    cm.swap(model_config("v1"))
    metrics = ServerMetrics({})
    slot = ModelSlot(cm.path, models_root, metrics)
    scheduler = InferenceScheduler(metrics, max_queue=4, timeout_s=120)
    counts = {"ncpu": int(SERVER_OPTIONS["ncpu"]), "before": os_threads()}
    most = 0
    async def watch():  # the most threads alive at once while the load runs
        nonlocal most
        while True:
            most = max(most, os_threads())
            await asyncio.sleep(0.005)
    watcher = asyncio.create_task(watch())
    assert (await slot.reload()).result == "success"
    watcher.cancel()
    counts["during_load"] = most
    counts["after_load"] = await settled(counts["before"])
    model = slot.current
    clip = warmup_clip(10.0)
    for _ in range(3):
        await scheduler.run(model, lambda: model.asr.generate(input=clip))
    counts["serving"] = os_threads()   # + the worker thread and its team's helpers
    cm.swap(model_config("v2"))
    assert (await slot.reload()).result == "success"
    await slot.wait_retired()
    counts["after_swap"] = await settled(counts["serving"])
    await scheduler.run(slot.current, lambda: slot.current.asr.generate(input=clip))
    counts["serving_after_swap"] = os_threads()
    print(json.dumps(counts))

asyncio.run(main(Path(sys.argv[1]), Path(sys.argv[2])))
"""


def test_loads_and_swaps_leave_one_openmp_team_in_the_process(models_root: Path, tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "operator"), str(REPO / "sandbox"), str(REPO)]))
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(models_root), str(tmp_path)], capture_output=True,
                         text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    counts = json.loads(out.stdout.strip().splitlines()[-1])
    # the load (construction, warm-up, golden set) ran on one thread of its own, with no
    # OpenMP helpers, and left no thread behind
    assert counts["during_load"] == counts["before"] + 1, counts
    assert counts["after_load"] == counts["before"], counts
    # serving adds the worker and its team's ncpu-1 helpers: the check does see OpenMP threads
    assert counts["serving"] == counts["before"] + 1 + counts["ncpu"] - 1, counts
    # a hot swap (load beside, switch, release the old version) leaves nothing behind either
    assert counts["after_swap"] == counts["serving"] == counts["serving_after_swap"], counts
