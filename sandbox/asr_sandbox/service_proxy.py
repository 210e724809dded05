"""A sandbox stand-in for cluster DNS + kube-proxy (MOCKED: nothing here exists in a cluster).

In a cluster a stable pod reaches the canary through its Service's DNS name
(`http://R-canary.NS.svc:8000`, what the operator writes into the stable ConfigMap's `shadow:`
key). In the sandbox every pod is a process on 127.0.0.1 with a port of its own and there is no
cluster DNS, so the node agent gives the pods `HTTP_PROXY` pointing here (the server's copier
honours it: aiohttp with `trust_env=True`), and this plain HTTP forward proxy resolves
`NAME.NS.svc[.cluster.local][:PORT]` to the ready endpoints of the rollout's Service NAME (the
node agent's endpoints of that track, round robin) and forwards the request there. Any other
host gets a 502: the proxy reaches the sandbox's Services and nothing else.
"""
from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
import aiohttp.web

from asr_sandbox.loop_thread import LoopThread
from asr_sandbox.node_agent import Endpoint

log = logging.getLogger("asr_sandbox.service_proxy")
_HOP_HEADERS = {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "proxy-connection",
                "proxy-authorization"}


@dataclass(frozen=True)
class ServiceName:
    name: str
    namespace: str


def parse_service_host(host: str) -> ServiceName | None:
    """`NAME.NS.svc`, `NAME.NS.svc.cluster.local` (a port, if any, stripped) -> the Service;
    anything else (an IP, an outside name, a bare name) -> None."""
    host = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    parts = host.lower().rstrip(".").split(".")
    if parts[2:] in (["svc"], ["svc", "cluster", "local"]) and len(parts) >= 3 and all(parts[:2]):
        return ServiceName(parts[0], parts[1])
    return None


def service_track(service: ServiceName, namespace: str, rollout: str) -> str | None:
    """The track whose pods back `service` (`R-stable`, `R-canary` in the rollout's namespace)."""
    if service.namespace != namespace:
        return None
    for track in ("stable", "canary"):
        if service.name == f"{rollout}-{track}":
            return track
    return None


class ServiceProxy:
    """`start()`, then point clients' HTTP_PROXY at `url`; `forwarded` counts requests by track."""

    def __init__(self, namespace: str, rollout: str, endpoints: Callable[[str | None], list[Endpoint]]) -> None:
        self.namespace = namespace
        self.rollout = rollout
        self.endpoints = endpoints
        self.port = 0
        self.forwarded: dict[str, int] = {}
        self.forward_log: collections.deque[tuple[float, str]] = collections.deque(maxlen=20000)  # (time, track)
        self.refused = 0
        self._next = itertools.count()
        self._background = LoopThread("service-proxy")
        self._runner: aiohttp.web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def resolve(self, host: str) -> tuple[str | None, list[Endpoint]]:
        service = parse_service_host(host)
        track = service_track(service, self.namespace, self.rollout) if service else None
        return track, (self.endpoints(track) if track else [])

    async def handle(self, request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        assert self._session is not None
        host = request.url.host if request.url.is_absolute() and request.url.host else request.host
        track, ready = self.resolve(host or "")
        if track is None:
            self.refused += 1
            return aiohttp.web.Response(status=502, text=f"sandbox service proxy: {host!r} is not a Service "
                                                          f"of rollout {self.namespace}/{self.rollout}\n")
        if not ready:
            return aiohttp.web.Response(status=503, text=f"sandbox service proxy: no ready endpoint behind {host}\n")
        endpoint = ready[next(self._next) % len(ready)]
        self.forward_log.append((time.time(), track))
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        try:
            async with self._session.request(request.method, endpoint.url + request.rel_url.path_qs, data=body,
                                             headers=headers) as upstream:
                payload = await upstream.read()
                out = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_HEADERS}
                self.forwarded[track] = self.forwarded.get(track, 0) + 1
                return aiohttp.web.Response(body=payload, status=upstream.status, headers=out)
        except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as error:
            log.info("service proxy: %s (%s) unreachable: %s", host, endpoint.pod, error)
            return aiohttp.web.Response(status=502, text=f"sandbox service proxy: {endpoint.pod} unreachable\n")

    def start(self) -> "ServiceProxy":
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

    def stop(self) -> None:
        async def _stop() -> None:
            if self._runner is not None:
                await self._runner.cleanup()
            if self._session is not None:
                await self._session.close()
        self._background.stop(_stop())

    def __enter__(self) -> "ServiceProxy":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
