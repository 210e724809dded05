"""`python -m inference_server` / `asr-inference-server`: run the server until SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable

from inference_server.settings import ServerSettings, parse_args


def configure_logging(level: str) -> None:
    # Before funasr is imported: it configures the root logger on import otherwise.
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        force=True)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_quiet_library_chatter)
    for noisy in ("funasr", "modelscope", "jieba"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _quiet_library_chatter(record: logging.LogRecord) -> bool:
    """FunASR logs every load step with `logging.info` on the root logger; keep its warnings only."""
    return record.name != "root" or record.levelno >= logging.WARNING


async def serve(settings: ServerSettings) -> int:
    from aiohttp import web

    from inference_server.app import ServerState, build_app
    from inference_server.metrics import ServerMetrics, pod_labels_from_env
    from inference_server.model_slot import ConfigWatcher, ModelSlot
    from inference_server.scheduler import BatchPolicy, InferenceScheduler

    log = logging.getLogger("inference_server")
    metrics = ServerMetrics(pod_labels_from_env())
    slot = ModelSlot(settings.model_config, settings.models_root, metrics, load_nice=settings.load_nice,
                     device=settings.device, memory_limit_bytes=settings.memory_limit_bytes)
    state = ServerState(settings=settings, metrics=metrics, slot=slot,
                        scheduler=InferenceScheduler(metrics, settings.max_queue, settings.request_timeout_s,
                                                     batch=BatchPolicy(settings.batch_max_size,
                                                                       settings.batch_wait_ms / 1000)))
    runner = web.AppRunner(build_app(state), handle_signals=False, shutdown_timeout=settings.drain_timeout_s,
                           access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port)
    await site.start()
    # Liveness answers while the first version loads; readiness waits for it.
    for address in runner.addresses:
        # Printed whatever the log level: with --port 0 this names the port the OS picked.
        print(f"asr-inference-server listening on {address[0]}:{address[1]}", file=sys.stderr, flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    # Imported here, once, so a version's load time is the load itself, not the import (seconds).
    from inference_server.model_loader import import_runtime
    from inference_server.threads import run_on_own_thread

    await run_on_own_thread("asr-import", import_runtime)
    watcher = ConfigWatcher(slot, settings.watch_interval_s, apply=state.config_gate.offer_file)
    watcher.prime()
    outcome = await state.config_gate.offer_file()
    if outcome.result != "success":
        log.error("initial model load failed; not ready, watching %s for a fix", settings.model_config)
    watcher.start()
    from inference_server.golden_eval import GoldenMonitor

    golden_monitor = GoldenMonitor(lambda: slot.current, state.scheduler.run,
                                   lambda m, r: slot.golden_metrics.publish(m.name, m.version, r))
    golden_monitor.start()
    from inference_server.shadow import ShadowCopier

    state.shadow = ShadowCopier(state.shadow_metrics, settings.model_config, settings.watch_interval_s)
    state.shadow.refresh()
    state.shadow.start()

    await stop.wait()
    log.info("SIGTERM: not ready any more, draining %d request(s)", state.inflight)
    state.draining = True
    await watcher.stop()
    await golden_monitor.stop()
    await state.shadow.stop()
    await site.stop()  # stop accepting connections
    deadline = loop.time() + settings.drain_timeout_s
    while state.inflight > 0 and loop.time() < deadline:
        await asyncio.sleep(0.05)
    await runner.cleanup()
    await slot.close()
    state.scheduler.close()
    log.info("drained; exiting")
    return 0


def quiet_openmp_waits(env: dict[str, str] | os._Environ[str] = os.environ) -> None:
    """Make torch's OpenMP helper threads sleep at barriers instead of spinning, unless the
    operator chose otherwise (OMP_WAIT_POLICY=ACTIVE). Must run before torch is imported:
    libgomp reads it once, when it loads.

    The torch team (ncpu threads, one per core) is never alone on its cores: the event loop
    reads and decodes uploads beside it, and on a shared node other pods run too. A spinning
    helper then burns the core the descheduled teammate or the event loop needs, and every one
    of a generate()'s hundreds of barriers waits a scheduler time slice. Measured on 2 shared
    cores, production-sized model, 8 clients: 2.79 requests/s passive vs 1.22 spinning, and a
    lower p50 for a lone client too (docs/demo.md, make bench-server)."""
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop where it is installed (a server dependency on Linux), as production aiohttp and
    uvicorn deployments run: it took ~0.1 ms off every request's loop work. None: asyncio's own."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def main(argv: list[str] | None = None) -> int:
    quiet_openmp_waits()
    settings = parse_args(argv)
    configure_logging(settings.log_level)
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        return runner.run(serve(settings))


if __name__ == "__main__":
    sys.exit(main())
