"""A local gateway on 127.0.0.1: routes each request to the stable or the canary pods by the
HTTPRoute's backendRef weights (read from the API emulator, as a Gateway API implementation
reads them from the cluster), or, for `traffic.replicaRatio`, over all ready pods of both
tracks (the combined Service). The real request is forwarded and the real answer returned,
with `X-Routed-Track` and `X-Routed-Pod` added so a client can see where it went.

Every weight the gateway applies is recorded with its time (`weight_log`): "100 % of traffic
back on stable" is the moment the canary weight it routes by becomes 0.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import aiohttp.web

from asr_sandbox.loop_thread import LoopThread
from asr_sandbox.node_agent import Endpoint

log = logging.getLogger("asr_sandbox.gateway")
_HOP_HEADERS = {"host", "content-length", "transfer-encoding", "connection", "keep-alive"}


def canary_weight(route: dict[str, Any] | None, stable: str, canary: str) -> int | None:
    """Canary percent from the first rule naming the rollout's Services (None: no such rule)."""
    for rule in ((route or {}).get("spec") or {}).get("rules") or []:
        weights = {ref.get("name"): int(ref.get("weight", 1)) for ref in rule.get("backendRefs") or []
                   if ref.get("name") in (stable, canary)}
        if weights:
            total = sum(weights.values())
            return 0 if total == 0 else round(100 * weights.get(canary, 0) / total)
    return None


class WeightedChooser:
    """Deterministic weighted choice (smooth credit): over any run of requests the canary share
    tracks the weight to within one request, which a random draw would not at low rates."""

    def __init__(self) -> None:
        self._credit = 0.0

    def choose(self, weight: int) -> str:
        self._credit += max(0, min(weight, 100)) / 100.0
        if self._credit >= 1.0 - 1e-9:
            self._credit -= 1.0
            return "canary"
        return "stable"


@dataclass(frozen=True)
class WeightChange:
    at: float  # time.time()
    weight: int


class Gateway:
    def __init__(self, api_url: str, namespace: str, rollout: str, endpoints: Callable[[str | None], list[Endpoint]],
                 http_route: str | None, refresh_s: float = 0.2) -> None:
        self.api_url = api_url.rstrip("/")
        self.namespace = namespace
        self.rollout = rollout
        self.endpoints = endpoints
        self.http_route = http_route
        self.refresh_s = refresh_s
        self.port = 0
        self.weight = 0
        self.weight_log: list[WeightChange] = []
        self.forward_errors = 0
        self._chooser = WeightedChooser()
        self._round_robin = itertools.count()
        self._background = LoopThread("gateway")
        self._runner: aiohttp.web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._refresher: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # --- routing --------------------------------------------------------------------------

    async def _refresh_loop(self) -> None:
        assert self._session is not None
        path = (f"{self.api_url}/apis/gateway.networking.k8s.io/v1/namespaces/{self.namespace}"
                f"/httproutes/{self.http_route}")
        while True:
            try:
                async with self._session.get(path, timeout=aiohttp.ClientTimeout(total=2)) as response:
                    route = await response.json() if response.status == 200 else None
                weight = canary_weight(route, f"{self.rollout}-stable", f"{self.rollout}-canary")
                if weight is not None:
                    self._set_weight(weight)
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as error:
                log.debug("gateway: route unreadable: %s", error)
            await asyncio.sleep(self.refresh_s)

    def _set_weight(self, weight: int) -> None:
        if weight != self.weight or not self.weight_log:
            self.weight = weight
            self.weight_log.append(WeightChange(time.time(), weight))

    def pick(self) -> list[Endpoint]:
        """Endpoints to try, in order: the chosen track's pod first, then the others."""
        if self.http_route is None:  # replicaRatio: one Service over both tracks
            everyone = self.endpoints(None)
            start = next(self._round_robin)
            return everyone[start % len(everyone):] + everyone[:start % len(everyone)] if everyone else []
        track = self._chooser.choose(self.weight)
        chosen = self.endpoints(track)
        other = self.endpoints("canary" if track == "stable" else "stable")
        if chosen:
            start = next(self._round_robin) % len(chosen)
            chosen = chosen[start:] + chosen[:start]
        return chosen + other

    async def handle(self, request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        assert self._session is not None
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        candidates = self.pick()
        if not candidates:
            return aiohttp.web.json_response(
                {"error": {"message": "no ready pod behind the gateway", "type": "gateway_error"}}, status=503)
        for endpoint in candidates[:2]:  # a pod that went away between pick and connect: next one
            try:
                async with self._session.request(request.method, endpoint.url + request.path_qs, data=body,
                                                 headers=headers) as upstream:
                    payload = await upstream.read()
                    out = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_HEADERS}
                    out.update({"X-Routed-Track": endpoint.track, "X-Routed-Pod": endpoint.pod})
                    return aiohttp.web.Response(body=payload, status=upstream.status, headers=out)
            except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as error:
                self.forward_errors += 1
                log.info("gateway: %s unreachable (%s); trying the next pod", endpoint.pod, error)
        return aiohttp.web.json_response(
            {"error": {"message": "every pod tried was unreachable", "type": "gateway_error"}}, status=502)

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> "Gateway":
        self._background.start(self._start())
        return self

    async def _start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120))
        app = aiohttp.web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self._runner = aiohttp.web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = aiohttp.web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        if self.http_route is not None:
            self._refresher = asyncio.get_running_loop().create_task(self._refresh_loop())

    def stop(self) -> None:
        async def _stop() -> None:
            if self._refresher is not None:
                self._refresher.cancel()
            if self._runner is not None:
                await self._runner.cleanup()
            if self._session is not None:
                await self._session.close()
        self._background.stop(_stop())

    def __enter__(self) -> "Gateway":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
