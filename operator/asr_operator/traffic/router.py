"""The traffic-routing interface every provider implements (Flagger's pkg/router pattern)."""
from __future__ import annotations

import abc
from typing import Any


class RouterError(Exception):
    """The route cannot be read or written; the message says what to fix."""


class RouteMissing(RouterError):
    """The route (or its API) does not exist: no traffic can reach the canary through it, so
    everything else a rollout owns can still be written safely."""


class TrafficRouter(abc.ABC):
    #: True when the provider can only approximate the requested weight.
    approximate: bool = False

    @abc.abstractmethod
    async def set_weight(self, weight: int, owner: dict[str, Any]) -> None:
        """Send `weight` percent of traffic to the canary track (idempotent: an absolute value)."""

    @abc.abstractmethod
    async def current_weight(self) -> int | None:
        """The canary weight in effect now, or None when it cannot be told."""
