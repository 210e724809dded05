"""Blocking torch work off the event loop, on a thread that exits when the work is done.

Loads (and the release of a replaced version) run on a new thread each time, not on a pool.
A load runs generate() (warm-up, golden set), and OpenMP keeps the team of helper threads a
thread started for as long as that thread lives. libgomp counts the threads of every live team
in the process; once they outnumber the CPUs it makes all teams sleep at their barriers instead
of spinning. On 2 cores one long-lived loader team made every request served after the first
load ~15% slower (about 90 futex sleeps per generate on the worker), for the server's lifetime.
A thread that exits takes its team with it. The serving worker (scheduler.py) is the one
long-lived thread that runs torch.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


def _reniced(nice: int, fn: Callable[..., T], *args: Any) -> T:
    """Run `fn` with this thread's nice value raised by `nice`. On Linux a nice value belongs to
    one thread, and this one exits afterwards, so nothing else is lowered."""
    if nice > 0 and sys.platform == "linux":
        tid = threading.get_native_id()
        try:
            os.setpriority(os.PRIO_PROCESS, tid, min(os.getpriority(os.PRIO_PROCESS, tid) + nice, 19))
        except OSError:  # a sandbox that forbids it: the work runs at normal priority
            pass
    return fn(*args)


async def run_on_own_thread(name: str, fn: Callable[..., T], *args: Any, nice: int = 0) -> T:
    """Run `fn(*args)` on a new thread named `name` and await its result; the thread exits after.
    `nice` > 0 lowers that thread's CPU priority (Linux), so the serving worker keeps its cores."""
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
    try:
        return await asyncio.get_running_loop().run_in_executor(executor, _reniced, nice, fn, *args)
    finally:
        executor.shutdown(wait=False)  # the thread ends once fn returns, even if we were cancelled
