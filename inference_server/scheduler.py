"""Admission and execution of inference jobs: a bounded queue in front of one worker thread,
which decodes the recognition inputs waiting in it together (dynamic batching).

One worker serves every version in FIFO order: during a hot swap, jobs admitted to the old
version run before those for the new one instead of beside them (two torch thread teams on
the same cores would slow both). A request holds a lease on the version it was admitted to
until its last job has finished, so the old version is released only then.

Two kinds of job share the queue. A *call* (`run`: VAD, a stream's segment, a golden set) runs
alone. A *recognition input* (`transcribe`: one clip, or one VAD piece of a long one) may run
in one `generate()` with other inputs waiting behind it: those of the same version and the same
decoding options (`batch_key`), up to `max_size`. When fewer are queued, the worker waits up to
`wait_s` for more, but only while requests are on their way to the queue (`arriving()`: an
upload being read and decoded): a lone client never waits (docs/contracts.md,
--batch-wait-ms).

The job itself brings its outcome back to the request's loop with one `call_soon_threadsafe`
(one per batch), instead of `asyncio.wrap_future` + `shield` + `wait_for`: that chain took four
event-loop passes to resume the request (~0.2 ms of a small model's ~35 ms request).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from inference_server import pipeline
from inference_server.errors import APIError, overloaded
from inference_server.formats import Transcript
from inference_server.metrics import ServerMetrics
from inference_server.model_loader import LoadedModel

T = TypeVar("T")


def should_admit(waiting: int, max_queue: int) -> bool:
    """Pure admission rule: accept while fewer than `max_queue` jobs wait for a worker."""
    return waiting < max_queue


@dataclass(frozen=True)
class BatchPolicy:
    """How many recognition inputs one generate() may take, and how long to wait for them.
    `wait_s` 0 (or `max_size` 1) turns batching off: every input runs alone, as before."""

    max_size: int = 8
    wait_s: float = 0.005

    @property
    def enabled(self) -> bool:
        return self.max_size > 1 and self.wait_s > 0

    @property
    def limit(self) -> int:
        return self.max_size if self.enabled else 1


def select_batch(keys: Sequence[Hashable], head: Hashable, room: int) -> list[int]:
    """Pure: positions in the queue (`keys`, oldest first) that may join a batch led by an input
    with key `head`, at most `room` of them. Only equal keys join: one version, one set of
    decoding options; a call (key None) never does."""
    if head is None or room <= 0:
        return []
    out: list[int] = []
    for i, key in enumerate(keys):
        if key == head:
            out.append(i)
            if len(out) == room:
                break
    return out


def should_wait_for_more(size: int, policy: BatchPolicy, arriving: int, waited_s: float) -> bool:
    """Pure: keep a batch open while it has room, requests are on their way to the queue (read
    or decoded, not queued yet), and the batch wait has not run out. With nobody on the way
    the batch runs at once, so a single client pays nothing for batching."""
    return policy.enabled and size < policy.max_size and arriving > 0 and waited_s < policy.wait_s


class _Ticket:
    """One admitted request: its lease on a version and its jobs that have not finished.
    Touched on the event loop only (deliveries come back there)."""

    __slots__ = ("model", "outstanding", "closed", "on_done")

    def __init__(self, model: LoadedModel, on_done: Callable[[], None]) -> None:
        self.model = model
        self.outstanding = 0
        self.closed = False
        self.on_done = on_done

    def settle(self) -> None:
        if self.closed and self.outstanding == 0:
            self.on_done()


class _Job:
    __slots__ = ("ticket", "fn", "audio", "key", "options", "loop", "done", "enqueued", "started", "cancelled")

    def __init__(self, ticket: _Ticket, loop: asyncio.AbstractEventLoop,
                 done: Callable[[Any, BaseException | None], None], fn: Callable[[], Any] | None = None,
                 audio: np.ndarray | None = None, options: tuple[tuple[str, Any], ...] = ()) -> None:
        self.ticket = ticket
        self.fn = fn
        self.audio = audio
        self.options = options
        # Inputs batch only with inputs of the same version object and the same options.
        self.key: Hashable = None if fn is not None else (id(ticket.model), options)
        self.loop = loop
        self.done = done
        self.enqueued = time.perf_counter()
        self.started = False
        self.cancelled = False


@dataclass
class _Request:
    """The jobs one request has in flight (cancelled together when it times out)."""
    ticket: _Ticket
    jobs: list[_Job] = field(default_factory=list)


class InferenceScheduler:
    def __init__(self, metrics: ServerMetrics, max_queue: int, timeout_s: float, retry_after_s: int = 1,
                 batch: BatchPolicy | None = None) -> None:
        self.metrics = metrics
        self.max_queue = max_queue
        self.timeout_s = timeout_s
        self.retry_after_s = retry_after_s
        self.batch = batch or BatchPolicy()
        # Requests on their way to the queue (see arriving()); written on the loop, read by the
        # worker as a plain int: a stale read costs at most one batch wait.
        self._arriving = 0
        # Admitted requests not finished. Read on the loop for admission and the queue gauge.
        self.pending = 0
        self._running = 0  # requests with a job on the worker now (written by the worker)
        self._queue: deque[_Job] = deque()
        self._cond = threading.Condition()
        self._closing = False
        # Started with the first job, as a pool's thread would be: a server that never serves
        # has no worker (tests/server/test_server_threads.py counts the process's threads).
        self._thread: threading.Thread | None = None
        metrics.queue_depth.labels(**metrics.pod).set_function(lambda: self.waiting)  # read when scraped

    @property
    def running(self) -> int:
        return min(self._running, self.pending)

    @property
    def waiting(self) -> int:
        return max(self.pending - self.running, 0)

    def admit(self) -> None:
        """Raise 503 + Retry-After when the queue is full; handlers call it before reading uploads."""
        if not should_admit(self.waiting, self.max_queue):
            raise overloaded(self.retry_after_s)

    # --- the request side (event loop) -------------------------------------------------------

    @contextlib.contextmanager
    def arriving(self) -> Iterator[None]:
        """Around the work a request does before it queues recognition inputs (reading and
        decoding the upload): while any request is inside, a forming batch may wait for it."""
        self._arriving += 1
        try:
            yield
        finally:
            self._arriving -= 1

    def _open(self, model: LoadedModel) -> _Ticket:
        self.admit()
        model.acquire()
        self.pending += 1

        def done() -> None:
            model.release()
            self.pending -= 1

        return _Ticket(model, done)

    async def _submit(self, ticket: _Ticket, jobs: list[_Job], results: list[Any],
                      finished: asyncio.Future[None]) -> None:
        if not jobs:
            finished.set_result(None)
            return
        with self._cond:
            if self._closing:
                raise APIError(503, "the server is shutting down; retry", type="server_shutting_down",
                               headers={"Retry-After": "1"})
            ticket.outstanding += len(jobs)
            self._queue.extend(jobs)
            self._cond.notify()
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="asr-worker", daemon=True)
                self._thread.start()
        await finished

    def _jobs(self, ticket: _Ticket, count: int, make: Callable[[Callable[[Any, BaseException | None], None], int], _Job]
              ) -> tuple[list[_Job], list[Any], asyncio.Future[None]]:
        """`count` jobs whose outcomes fill `results` in order; `finished` resolves once all are
        in (with the first error, if any)."""
        loop = asyncio.get_running_loop()
        finished: asyncio.Future[None] = loop.create_future()
        results: list[Any] = [None] * count
        left = [count]
        errors: list[BaseException] = []

        def on_done(index: int) -> Callable[[Any, BaseException | None], None]:
            def deliver(value: Any, error: BaseException | None) -> None:  # on the loop
                ticket.outstanding -= 1
                left[0] -= 1
                if error is not None:
                    errors.append(error)
                else:
                    results[index] = value
                if left[0] == 0 and not finished.done():
                    if errors:
                        finished.set_exception(errors[0])
                    else:
                        finished.set_result(None)
                ticket.settle()
            return deliver

        return [make(on_done(i), i) for i in range(count)], results, finished

    def _cancel_queued(self, jobs: list[_Job]) -> None:
        """Take the jobs that have not started out of the queue (a request that gave up);
        those running finish alone and drop their ticket's lease when they do."""
        with self._cond:
            for job in jobs:
                if not job.started and not job.cancelled:
                    job.cancelled = True
                    job.ticket.outstanding -= 1
            self._queue = deque(j for j in self._queue if not j.cancelled)

    def _timeout_error(self, limit: float) -> APIError:
        return APIError(504, f"inference did not finish within {limit:.0f} s", type="timeout",
                        code="request_timeout")

    @contextlib.asynccontextmanager
    async def _request(self, model: LoadedModel, timeout_s: float | None) -> AsyncIterator[_Request]:
        """One request's jobs: its ticket (a second lease on `model` until the last job is over,
        even if the request gave up waiting), its time limit, and on timeout the jobs not started
        taken out of the queue and a 504."""
        request = _Request(self._open(model))
        limit = self.timeout_s if timeout_s is None else timeout_s
        try:
            async with asyncio.timeout(limit):
                yield request
        except TimeoutError:
            self._cancel_queued(request.jobs)
            raise self._timeout_error(limit) from None
        finally:
            request.ticket.closed = True
            request.ticket.settle()

    async def run(self, model: LoadedModel, fn: Callable[[], T], timeout_s: float | None = None) -> T:
        """Run `fn` alone on the worker thread; the caller must hold a lease on `model`."""
        loop = asyncio.get_running_loop()
        async with self._request(model, timeout_s) as request:
            ticket = request.ticket
            request.jobs, results, finished = self._jobs(ticket, 1, lambda done, _: _Job(ticket, loop, done, fn=fn))
            await self._submit(ticket, request.jobs, results, finished)
        return results[0]

    async def transcribe(self, model: LoadedModel, audio: np.ndarray, options: tuple[tuple[str, Any], ...] = (),
                         timeout_s: float | None = None) -> Transcript:
        """VAD (a call, when the version has a VAD model), then recognition of the clip's pieces
        as batchable inputs; the transcript is assembled here with each piece's own offsets."""
        loop = asyncio.get_running_loop()
        async with self._request(model, timeout_s) as request:
            ticket = request.ticket
            if model.vad is not None:
                request.jobs, results, finished = self._jobs(
                    ticket, 1, lambda done, _: _Job(ticket, loop, done, fn=lambda: pipeline.plan_spans(model, audio)))
                # Not counted as arriving: a batch forming while this waits in the queue
                # behind it would wait for pieces that cannot come before it has run.
                await self._submit(ticket, request.jobs, results, finished)
                spans = results[0]
            else:
                spans = pipeline.plan_spans(model, audio)  # no model call: the clip in windows
            pieces = pipeline.cut(audio, spans)
            request.jobs, texts, finished = self._jobs(
                ticket, len(pieces), lambda done, i: _Job(ticket, loop, done, audio=pieces[i], options=options))
            await self._submit(ticket, request.jobs, texts, finished)
        return pipeline.assemble(audio, spans, texts)

    # --- the worker thread ------------------------------------------------------------------

    def _next_batch(self) -> list[_Job] | None:
        """Block for the next job; a recognition input takes the compatible inputs queued behind
        it (and, while requests are on their way, those arriving within the batch wait)."""
        with self._cond:
            while not self._queue and not self._closing:
                self._cond.wait()
            if not self._queue:
                return None
            head = self._queue.popleft()
            batch = [head]
            limit = self.batch.limit
            started = time.perf_counter()
            while True:
                picked = select_batch([j.key for j in self._queue], head.key, limit - len(batch))
                if picked:
                    chosen = set(picked)
                    batch += [self._queue[i] for i in picked]
                    self._queue = deque(j for i, j in enumerate(self._queue) if i not in chosen)
                waited = time.perf_counter() - started
                if head.key is None or not should_wait_for_more(len(batch), self.batch, self._arriving, waited):
                    break
                self._cond.wait(self.batch.wait_s - waited)
            for job in batch:
                job.started = True
            self._running = len({id(j.ticket) for j in batch})
            return batch

    def _work(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            now = time.perf_counter()
            for job in batch:
                self.metrics.observe_queue_wait(now - job.enqueued)
            if batch[0].fn is not None:
                outcomes = [_call(batch[0].fn)]
            else:
                outcomes = self._recognise(batch)
            self._running = 0
            by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Job, Any, BaseException | None]]] = {}
            for job, (value, error) in zip(batch, outcomes):
                by_loop.setdefault(job.loop, []).append((job, value, error))
            for loop, items in by_loop.items():
                try:
                    loop.call_soon_threadsafe(_deliver_all, items)
                except RuntimeError:  # the loop has closed: the server is gone, nobody waits
                    pass

    def _recognise(self, batch: list[_Job]) -> list[tuple[Any, BaseException | None]]:
        """One generate() over the batch's inputs. If it fails, each input runs again alone, so
        one bad input fails only its own request."""
        model = batch[0].ticket.model
        options = dict(batch[0].options)
        audios = [job.audio for job in batch if job.audio is not None]
        try:
            texts = pipeline.recognise_batch(model, audios, options, on_generate=self.metrics.observe_batch)
            return [(text, None) for text in texts]
        except Exception as exc:
            if len(batch) == 1:
                return [(None, exc)]
        return [_call(_alone(model, audio, options, self.metrics.observe_batch)) for audio in audios]

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join()


def _call(fn: Callable[[], Any]) -> tuple[Any, BaseException | None]:
    try:
        return fn(), None
    except BaseException as exc:  # handed to the request, which answers a 5xx
        return None, exc


def _alone(model: LoadedModel, audio: np.ndarray, options: dict[str, Any],
           on_generate: Callable[[int], None]) -> Callable[[], str]:
    return lambda: pipeline.recognise_batch(model, [audio], options, on_generate=on_generate)[0]


def _deliver_all(items: list[tuple[_Job, Any, BaseException | None]]) -> None:  # on the loop
    for job, value, error in items:
        job.done(value, error)
