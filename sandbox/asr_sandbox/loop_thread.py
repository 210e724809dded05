"""An asyncio event loop in a daemon thread: how the emulator, the gateway and the tests' fake
pods serve aiohttp on 127.0.0.1 while synchronous code (tests, the demo) starts and stops them."""
from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class LoopThread:
    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        """Run `coro` on the loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=timeout)

    def start(self, setup: Coroutine[Any, Any, None]) -> None:
        """Start the thread, then run `setup` (bind the server) on its loop."""
        self._thread.start()
        self.run(setup)

    def stop(self, teardown: Coroutine[Any, Any, None]) -> None:
        """Run `teardown` on the loop, then stop the loop and the thread (also if it failed)."""
        try:
            self.run(teardown)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=10)
            if not self._thread.is_alive():
                self.loop.close()
