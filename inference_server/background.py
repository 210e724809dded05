"""A loop that runs as one asyncio task beside the server: the config watcher and the periodic
golden-set monitor. `start()` needs a running event loop; `stop()` cancels and waits for it."""
from __future__ import annotations

import asyncio


class BackgroundLoop:
    """Subclasses write `_loop()`, which runs until cancelled."""

    _task: asyncio.Task[None] | None = None

    async def _loop(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
