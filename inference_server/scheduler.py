"""Admission and execution of inference jobs: a bounded queue in front of one worker thread.

One worker serves every version in FIFO order: during a hot swap, jobs admitted to the old
version run before those for the new one instead of beside them (two torch thread teams on
the same cores would slow both). A job holds a lease on the version it was admitted to, so
the old version is released only when its last job has finished.

The job itself brings its outcome back to the request's loop with one `call_soon_threadsafe`,
instead of `asyncio.wrap_future` + `shield` + `wait_for`: that chain took four event-loop passes
to resume the request (~0.2 ms of a small model's ~35 ms request).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from inference_server.errors import APIError, overloaded
from inference_server.metrics import ServerMetrics
from inference_server.model_loader import LoadedModel

T = TypeVar("T")


def should_admit(waiting: int, max_queue: int) -> bool:
    """Pure admission rule: accept while fewer than `max_queue` jobs wait for a worker."""
    return waiting < max_queue


class InferenceScheduler:
    def __init__(self, metrics: ServerMetrics, max_queue: int, timeout_s: float, retry_after_s: int = 1) -> None:
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="asr-worker")
        self.metrics = metrics
        self.max_queue = max_queue
        self.timeout_s = timeout_s
        self.retry_after_s = retry_after_s
        # Jobs submitted and not finished. With one worker the oldest one runs and the rest
        # wait; counting this way needs no event-loop wake-up when a job starts (a wake-up
        # there would contend for the GIL with the job that just started).
        self.pending = 0
        metrics.queue_depth.labels(**metrics.pod).set_function(lambda: self.waiting)  # read when scraped

    @property
    def running(self) -> int:
        return min(self.pending, 1)

    @property
    def waiting(self) -> int:
        return max(self.pending - 1, 0)

    def admit(self) -> None:
        """Raise 503 + Retry-After when the queue is full; handlers call it before reading uploads."""
        if not should_admit(self.waiting, self.max_queue):
            raise overloaded(self.retry_after_s)

    async def run(self, model: LoadedModel, fn: Callable[[], T], timeout_s: float | None = None) -> T:
        """Run `fn` on the worker thread; the caller must hold a lease on `model`.

        A second lease is taken for the job itself and dropped only when the thread finishes,
        even if the request gave up waiting (timeout), so the model outlives its last job."""
        self.admit()
        # No torch thread count to set here: FunASR sets it from the model's ncpu at the start
        # of every generate() (model_loader.set_threads).
        loop = asyncio.get_running_loop()
        result: asyncio.Future[T] = loop.create_future()
        model.acquire()
        self.pending += 1

        def finished() -> None:  # on the loop, once the job is over (or will never run)
            model.release()
            self.pending -= 1

        def deliver(value: Any, error: BaseException | None) -> None:  # on the loop
            finished()
            if result.done():  # the request timed out or was cancelled: nobody waits
                return
            if error is not None:
                result.set_exception(error)
            else:
                result.set_result(value)

        def job() -> None:  # on the worker thread
            value: Any = None
            error: BaseException | None = None
            try:
                value = fn()
            except BaseException as exc:  # handed to the request, which answers a 5xx
                error = exc
            try:
                loop.call_soon_threadsafe(deliver, value, error)
            except RuntimeError:  # the loop has closed: the server is gone, nobody waits
                pass

        try:
            cfut = self.worker.submit(job)
        except RuntimeError:  # worker shut down: the server is exiting
            finished()
            raise APIError(503, "the server is shutting down; retry", type="server_shutting_down",
                           headers={"Retry-After": "1"}) from None
        limit = self.timeout_s if timeout_s is None else timeout_s
        try:
            async with asyncio.timeout(limit):
                return await result
        except TimeoutError:
            if cfut.cancel():  # it had not started: no deliver() will come, so finish here
                finished()
            # else it is running: it finishes alone and deliver() drops its lease then
            raise APIError(504, f"inference did not finish within {limit:.0f} s", type="timeout",
                           code="request_timeout") from None

    def close(self) -> None:
        self.worker.shutdown(wait=True)
