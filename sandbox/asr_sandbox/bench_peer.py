"""Our server side by side with FunASR's own server (`funasr-server`, FunASR 1.4.16), the peer a
FunASR user would run instead: same venv, same local model directory, same audio, same client.

Same work on both sides: ASR only. The peer is started with `--model-path DIR`, which loads the
directory alone (FunASR's FALLBACK_CONFIGS has no entry for a custom path: no VAD model, no
punctuation model); ours gets a model config without `vad_path` (no VAD; it has no punctuation).
Both decode the 10 s clip in one piece. Threads: ours runs `ncpu: 2` (its default, = the cores
here). The peer has no thread flag; FunASR's default is 4 torch threads, which on 2 cores
oversubscribes them. The "tuned" peer is given `ncpu: 2` the only way its flags allow: a copy of
the model directory whose config.yaml says `ncpu: 2` (AutoModel merges config.yaml under its own
kwargs). The default peer runs as installed, for information; so does the tuned peer with
OMP_WAIT_POLICY=PASSIVE in its environment (what our server sets for itself; the peer has no
flag for it, a user could export it).

All servers run at once and are measured in alternating rounds (the order rotating), so the
noise of a shared machine hits every side alike; ratios are taken over the pooled rounds.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from asr_sandbox.processes import ManagedProcess, free_port

C8 = 8


class PeerServer:
    """`python -m funasr.bin.server --model-path DIR --device cpu` on 127.0.0.1. The model loads
    before uvicorn binds, so a 200 from /health means it is ready."""

    def __init__(self, model_dir: Path, log_path: Path, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
        self.process = ManagedProcess(
            [sys.executable, "-m", "funasr.bin.server", "--host", "127.0.0.1", "--port", str(self.port),
             "--device", "cpu", "--model-path", str(model_dir)], log_path, env=env)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 240.0) -> "PeerServer":
        try:
            import fastapi  # noqa: F401
            import uvicorn  # noqa: F401
        except ImportError:
            raise SystemExit("funasr-server needs fastapi, uvicorn and python-multipart: "
                             "pip install -e '.[bench]'") from None
        self.process.start()
        deadline = time.monotonic() + timeout_s
        while True:
            if not self.process.running:
                raise RuntimeError(f"funasr-server exited; log:\n{self.process.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=5) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"funasr-server not up within {timeout_s:.0f} s; log:\n{self.process.log_tail()}")
            time.sleep(0.2)

    def stop(self) -> None:
        self.process.stop()


def tuned_model_dir(model_dir: Path, dest: Path, ncpu: int) -> Path:
    """A copy of `model_dir` (files linked, config.yaml rewritten with `ncpu`): the thread count
    funasr-server's flags cannot set."""
    dest.mkdir(parents=True, exist_ok=True)
    for item in model_dir.iterdir():
        if item.name != "config.yaml" and item.is_file():
            target = dest / item.name
            if not target.exists():
                target.symlink_to(item.resolve())
    config = yaml.safe_load((model_dir / "config.yaml").read_text())
    config["ncpu"] = ncpu
    (dest / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return dest


@dataclass
class Side:
    """One server under test and what was measured on it."""

    name: str
    url: str
    c1: list[float] = field(default_factory=list)
    c8: list[float] = field(default_factory=list)
    c8_wall: float = 0.0
    c8_requests: int = 0
    failures: int = 0
    text: str | None = None

    @property
    def throughput(self) -> float:
        return self.c8_requests / self.c8_wall if self.c8_wall else 0.0

    def p(self, which: str, q: float) -> float:
        import numpy as np

        return float(np.percentile(np.asarray(getattr(self, which)), q))


async def post(session: aiohttp.ClientSession, url: str, body: bytes, content_type: str) -> tuple[int, float, Any]:
    """(status, seconds, body); status 0 when the connection failed (counted as a failure)."""
    started = time.perf_counter()
    try:
        async with session.post(url + "/v1/audio/transcriptions", data=body,
                                headers={"Content-Type": content_type}) as r:
            payload = await r.json(content_type=None) if r.status == 200 else await r.text()
            return r.status, time.perf_counter() - started, payload
    except aiohttp.ClientError as exc:
        return 0, time.perf_counter() - started, repr(exc)


def fresh_session() -> aiohttp.ClientSession:
    """A new connection pool for each side's phase: uvicorn drops keep-alive connections idle for
    5 s (while the other sides run), and reusing one it has just closed resets the request."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=C8 * 2))


async def c1_phase(side: Side, body: bytes, ctype: str, requests: int, gap_s: float = 0.03) -> None:
    """One client, `requests` in a row, `gap_s` apart (torch's OpenMP threads spin for a while
    after a call; the gap keeps one request off the tail of the last)."""
    async with fresh_session() as session:
        await post(session, side.url, body, ctype)  # opens the connection; not measured
        await c1_loop(session, side, body, ctype, requests, gap_s)


async def c1_loop(session: aiohttp.ClientSession, side: Side, body: bytes, ctype: str, requests: int,
                      gap_s: float) -> None:
    for _ in range(requests):
        await asyncio.sleep(gap_s)
        status, seconds, payload = await post(session, side.url, body, ctype)
        if status != 200:
            side.failures += 1
            continue
        side.c1.append(seconds)
        check_text(side, payload)


async def c8_phase(side: Side, body: bytes, ctype: str, per_client: int) -> None:
    """C8 clients, each `per_client` requests back to back; throughput = requests / wall time."""
    async with fresh_session() as session:
        await c8_loop(session, side, body, ctype, per_client)


async def c8_loop(session: aiohttp.ClientSession, side: Side, body: bytes, ctype: str, per_client: int) -> None:
    async def client() -> None:
        for _ in range(per_client):
            status, seconds, payload = await post(session, side.url, body, ctype)
            if status != 200:
                side.failures += 1
                continue
            side.c8.append(seconds)
            check_text(side, payload)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(C8)))
    side.c8_wall += time.perf_counter() - started
    side.c8_requests += C8 * per_client


def check_text(side: Side, payload: Any) -> None:
    text = payload.get("text") if isinstance(payload, dict) else None
    if not isinstance(text, str):
        raise RuntimeError(f"{side.name} answered without a text field: {str(payload)[:200]}")
    if side.text is None:
        side.text = text
    elif text != side.text:  # batching or load must never change a transcript
        raise RuntimeError(f"{side.name} returned a different transcript for the same clip under load")


async def alternate(sides: list[Side], body: bytes, ctype: str, rounds: int, c1_requests: int,
                    c8_per_client: int, c8_sides: set[str]) -> None:
    """`rounds` rounds; in each, every side's c1 phase then every c8 side's c8 phase, the order of
    the sides rotating from round to round."""
    async with fresh_session() as session:
        for side in sides:  # warm every path (first requests allocate)
            for _ in range(3):
                status, _, payload = await post(session, side.url, body, ctype)
                if status != 200:
                    raise RuntimeError(f"{side.name} answered {status} on warm-up: {str(payload)[:300]}")
    for r in range(rounds):
        order = sides[r % len(sides):] + sides[:r % len(sides)]
        for side in order:
            await c1_phase(side, body, ctype, c1_requests)
        for side in order:
            if side.name in c8_sides:
                await asyncio.sleep(0.2)
                await c8_phase(side, body, ctype, c8_per_client)


def same_transcript(sides: list[Side]) -> bool:
    texts = {s.text for s in sides}
    return len(texts) == 1 and None not in texts


async def compare(*, suffix: str, model_dir: Path, start_ours: Callable[[str, list[str]], Any],
                  tmp: Path, wav: bytes, rounds: int, c1_requests: int, c8_per_client: int,
                  emit: Callable[..., None], encoded_form: Callable[[bytes], Awaitable[tuple[bytes, str]]],
                  batching_line: bool = True) -> None:
    """Start ours (batching on, and off), the tuned peer and the default peer on `model_dir`,
    alternate them, and emit the peer_* lines (names ending in `suffix`)."""
    tuned_dir = tuned_model_dir(model_dir, tmp / f"peer-tuned{suffix}" / "model", ncpu=2)
    started: list[Any] = []
    try:
        ours = start_ours(f"ours{suffix}", [])
        started.append(ours)
        ours_off = start_ours(f"ours-nobatch{suffix}", ["--batch-wait-ms", "0"]) if batching_line else None
        if ours_off is not None:
            started.append(ours_off)
        tuned = PeerServer(tuned_dir, tmp / f"peer-tuned{suffix}.log").start()
        started.append(tuned)
        default = PeerServer(model_dir, tmp / f"peer-default{suffix}.log").start()
        started.append(default)
        # For information: the tuned peer also given, through its environment (no flag of its
        # own), the OpenMP wait policy our server sets itself (inference_server/__main__.py).
        passive = PeerServer(tuned_dir, tmp / f"peer-tuned-passive{suffix}.log",
                             env={"OMP_WAIT_POLICY": "PASSIVE"}).start()
        started.append(passive)
        sides = [Side("ours", ours.url), Side("peer_tuned", tuned.url), Side("peer_default", default.url),
                 Side("peer_tuned_passive", passive.url)]
        if ours_off is not None:
            sides.insert(1, Side("ours_nobatch", ours_off.url))
        body, ctype = await encoded_form(wav)
        await alternate(sides, body, ctype, rounds, c1_requests, c8_per_client,
                        c8_sides={"ours", "peer_tuned", "peer_default", "peer_tuned_passive"})
    finally:
        for server in reversed(started):
            server.stop()
    by = {s.name: s for s in sides}
    o, t, d, tp = by["ours"], by["peer_tuned"], by["peer_default"], by["peer_tuned_passive"]
    if not same_transcript([o, t, d, tp]):
        raise RuntimeError(f"the servers disagree on the clip's transcript: ours {o.text!r}, "
                           f"tuned peer {t.text!r}, default peer {d.text!r}")
    failures = {s.name: s.failures for s in sides}
    common = dict(rounds=rounds, clip_s=10.0, same_transcript=True, failures=failures,
                  peer="funasr-server 1.4.16 --model-path DIR --device cpu (no VAD, no punctuation), "
                       "tuned: ncpu 2 in config.yaml; default: FunASR's 4 threads",
                  ours="no VAD, ncpu 2, batching on (defaults: 8 inputs, 5 ms), OMP_WAIT_POLICY=PASSIVE (its default)",
                  peer_tuned_passive="the tuned peer with OMP_WAIT_POLICY=PASSIVE in its environment (information)")
    emit(f"peer_latency_ratio_c1{suffix}", o.p("c1", 50) / t.p("c1", 50), "<= 0.9",
         ours_p50_s=round(o.p("c1", 50), 4), peer_tuned_p50_s=round(t.p("c1", 50), 4),
         peer_default_p50_s=round(d.p("c1", 50), 4),
         vs_default_peer=round(o.p("c1", 50) / d.p("c1", 50), 4), peer_tuned_passive_p50_s=round(tp.p("c1", 50), 4),
         vs_peer_tuned_passive=round(o.p("c1", 50) / tp.p("c1", 50), 4), requests_per_side=len(o.c1), **common)
    emit(f"peer_throughput_ratio_c8{suffix}", o.throughput / t.throughput, ">= 1.5",
         ours_rps=round(o.throughput, 3), peer_tuned_rps=round(t.throughput, 3),
         peer_default_rps=round(d.throughput, 3), vs_default_peer=round(o.throughput / d.throughput, 4),
         peer_tuned_passive_rps=round(tp.throughput, 3), vs_peer_tuned_passive=round(o.throughput / tp.throughput, 4),
         requests_per_side=o.c8_requests, clients=C8, **common)
    emit(f"peer_p99_ratio_c8{suffix}", o.p("c8", 99) / t.p("c8", 99), "< 1",
         ours_p99_s=round(o.p("c8", 99), 4), peer_tuned_p99_s=round(t.p("c8", 99), 4),
         peer_default_p99_s=round(d.p("c8", 99), 4), vs_default_peer=round(o.p("c8", 99) / d.p("c8", 99), 4),
         peer_tuned_passive_p99_s=round(tp.p("c8", 99), 4), vs_peer_tuned_passive=round(o.p("c8", 99) / tp.p("c8", 99), 4),
         clients=C8, **common)
    if "ours_nobatch" in by:
        off = by["ours_nobatch"]
        emit(f"batching_c1_p50_ratio{suffix}", o.p("c1", 50) / off.p("c1", 50), "<= 1.05",
             batching_on_p50_s=round(o.p("c1", 50), 4), batching_off_p50_s=round(off.p("c1", 50), 4),
             requests_per_side=len(o.c1), rounds=rounds)
