"""A traffic generator: real audio files (`.assets/audio/*.wav`) sent through the gateway at a
bounded rate for a bounded time, every request's outcome recorded: status, the model version
that answered (the server's `X-Model-Version` header), the track and pod it was routed to, and
the latency. A request that got no HTTP answer at all is recorded with status 0: a lost request.
"""
from __future__ import annotations

import asyncio
import itertools
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp


@dataclass(frozen=True)
class RequestRecord:
    started: float  # time.time()
    latency_s: float
    status: int  # 0: no answer (connection failed, timed out): lost
    version: str | None  # X-Model-Version of the answer (absent on errors the server raised)
    track: str | None  # X-Routed-Track set by the gateway
    pod: str | None
    clip: str
    error: str = ""

    @property
    def lost(self) -> bool:
        return self.status == 0

    @property
    def failed(self) -> bool:
        return self.status == 0 or self.status >= 500


class TrafficGenerator:
    """`start()` sends `rate` requests per second (at most `concurrency` in flight) until
    `stop()` or `max_seconds`; `records` grows as answers arrive."""

    def __init__(self, url: str, clips: list[Path], rate: float = 3.0, concurrency: int = 8,
                 max_seconds: float = 900.0, timeout_s: float = 60.0) -> None:
        if not clips:
            raise ValueError("no audio clips to send: build them with `make assets`")
        if rate <= 0:
            raise ValueError(f"rate must be positive, got {rate}")
        self.url = url.rstrip("/") + "/v1/audio/transcriptions"
        self.clips = [(clip.stem, clip.read_bytes()) for clip in clips]
        self.rate = rate
        self.concurrency = concurrency
        self.max_seconds = max_seconds
        self.timeout_s = timeout_s
        self.records: list[RequestRecord] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="traffic", daemon=True)

    def start(self) -> "TrafficGenerator":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(self.timeout_s + 10)

    async def _run(self) -> None:
        limit = asyncio.Semaphore(self.concurrency)
        started = time.monotonic()
        pending: set[asyncio.Task[None]] = set()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s)) as session:
            for n in itertools.count():
                if self._stop.is_set() or time.monotonic() - started > self.max_seconds:
                    break
                await limit.acquire()
                name, data = self.clips[n % len(self.clips)]
                task = asyncio.create_task(self._one(session, name, data, limit))
                pending.add(task)
                task.add_done_callback(pending.discard)
                # Open-loop pacing from the start time: a slow answer does not slow the sender.
                delay = started + (n + 1) / self.rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            await asyncio.gather(*pending, return_exceptions=True)

    async def _one(self, session: aiohttp.ClientSession, name: str, data: bytes, limit: asyncio.Semaphore) -> None:
        form = aiohttp.FormData()
        form.add_field("file", data, filename=f"{name}.wav", content_type="audio/wav")
        form.add_field("model", "paraformer-tiny")
        began, t0 = time.time(), time.perf_counter()
        try:
            async with session.post(self.url, data=form) as response:
                await response.read()
                self.records.append(RequestRecord(
                    began, time.perf_counter() - t0, response.status, response.headers.get("X-Model-Version"),
                    response.headers.get("X-Routed-Track"), response.headers.get("X-Routed-Pod"), name))
        except (aiohttp.ClientError, asyncio.TimeoutError) as error:
            self.records.append(RequestRecord(began, time.perf_counter() - t0, 0, None, None, None, name,
                                              f"{type(error).__name__}: {error}"))
        finally:
            limit.release()

    def __enter__(self) -> "TrafficGenerator":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
