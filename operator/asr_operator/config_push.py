"""The fast path of a model config change: right after writing a track's ConfigMap, the operator
pushes the same config to each of that track's pods (`PUT /admin/config` on port `http`).

Why: a ConfigMap mounted as a volume reaches a running pod only at the kubelet's next sync of
that pod, up to its sync period (60 s) plus jitter later; after a promotion that is how long
every user stays on a version an alert just condemned. The push takes a second. The ConfigMap
stays the source of truth: a pod started later reads it, a pod the push missed converges when
the kubelet's copy arrives, and the monotonic `revision` in the config (written here, compared by
the server: `inference_server.config_revision`) makes sure a late kubelet copy of an older
config never undoes a newer push.

The push is authenticated with a per-rollout token the operator creates once in the Secret
`R-admin-token` (key `token`; owned by the rollout, so it goes with it) and hands to the pods as
env `ASR_ADMIN_TOKEN`. It never fails a tick: a pod that cannot be reached is logged and left to
the file.

Decisions (the revision, which pods, at which address) are the pure functions below.
"""
from __future__ import annotations

import asyncio
import base64
import logging
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import yaml

from . import children, kube
from .children import admin_secret_name

log = logging.getLogger("asr_operator.config_push")

TOKEN_KEY = "token"
PUSH_TIMEOUT_S = 3.0


# --- pure decisions ----------------------------------------------------------------------------

def live_config(configmap: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The model config a live ConfigMap holds, as a mapping (None: absent or unreadable)."""
    text = ((configmap or {}).get("data") or {}).get(children.CONFIG_KEY)
    if not text:
        return None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return None
    return data if isinstance(data, dict) else None


def plan_revision(live: Mapping[str, Any] | None, desired: Mapping[str, Any], now_ms: int) -> tuple[int, bool]:
    """(revision to write, whether the model config changes).

    Unchanged content keeps the live revision (so the drift check rewrites nothing and pushes
    nothing). A change gets `max(live + 1, now_ms)`: monotonic per ConfigMap, and also across a
    ConfigMap deleted and created again (a running pod remembers the newest revision it took, so
    a counter restarting at 1 would be ignored by it until it restarts); the clock alone would
    not do either, as two writes can fall in one millisecond or a new operator leader's clock
    can lag."""
    live_revision = 0
    if live is not None:
        value = live.get("revision")
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            live_revision = value
        if {k: v for k, v in live.items() if k != "revision"} == dict(desired) and live_revision > 0:
            return live_revision, False
    return max(live_revision + 1, now_ms), True


def pod_address(pod: Mapping[str, Any]) -> str | None:
    """`http://IP:PORT` of a running pod's server: `status.podIP` and its container port named
    `http` (the contract's port 8000 in a cluster; the sandbox's node agent declares each local
    process's own port there). None: not addressable (no IP yet, or terminating)."""
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    ip = status.get("podIP")
    if not ip or meta.get("deletionTimestamp") or status.get("phase") in ("Succeeded", "Failed"):
        return None
    port = children.SERVER_PORT
    for container in (pod.get("spec") or {}).get("containers") or []:
        for item in container.get("ports") or []:
            if item.get("name") == "http" and item.get("containerPort"):
                port = int(item["containerPort"])
    host = f"[{ip}]" if ":" in str(ip) else str(ip)
    return f"http://{host}:{port}"


def admin_secret(namespace: str, rollout: str, token: str, owner: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": admin_secret_name(rollout), "namespace": namespace,
                     "labels": children.common_labels(rollout),
                     "ownerReferences": children.owner_references(owner)},
        "data": {TOKEN_KEY: base64.b64encode(token.encode()).decode()},
    }


def token_of(secret: Mapping[str, Any] | None) -> str | None:
    value = ((secret or {}).get("data") or {}).get(TOKEN_KEY)
    if not value:
        return None
    try:
        return base64.b64decode(value).decode() or None
    except (ValueError, UnicodeDecodeError):
        return None


def served_counts(answers: Sequence[Mapping[str, Any] | None]) -> dict[str, int] | None:
    """Pods per serving version from each pod's `/v1/models` (None: some pod did not answer,
    so the count is unknown; a pod with nothing ready counts under "")."""
    counts: dict[str, int] = {}
    for answer in answers:
        if answer is None:
            return None
        version = str((answer.get("serving") or {}).get("version") or "")
        counts[version] = counts.get(version, 0) + 1
    return counts


@dataclass(frozen=True)
class PushResult:
    pod: str
    result: str  # accepted | success | unchanged | ignored | failure | unreachable
    message: str = ""


# --- I/O ---------------------------------------------------------------------------------------

class ConfigPusher:
    """Pushes a track's config to its pods; `enabled=False` (`--no-config-push`) leaves every
    change to the kubelet's copy of the ConfigMap."""

    def __init__(self, api: kube.KubeApi, enabled: bool = True, timeout_s: float = PUSH_TIMEOUT_S) -> None:
        self.api = api
        self.enabled = enabled
        self.timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None

    async def _client(self) -> aiohttp.ClientSession:
        # A session of its own: the API session carries the operator's API credentials, which
        # must never be sent to a pod.
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def ensure_token(self, namespace: str, rollout: str, owner: Mapping[str, Any]) -> str | None:
        """The rollout's admin token: read from its Secret, created once if missing (a token is
        never rewritten: running pods hold it in their env)."""
        path = f"/api/v1/namespaces/{namespace}/secrets"
        name = admin_secret_name(rollout)
        secret = await self.api.get(f"{path}/{name}")
        if secret is None:
            try:
                secret = await self.api.create(path, admin_secret(namespace, rollout, secrets.token_hex(32), owner))
            except kube.KubeError as error:
                if error.status != 409:
                    raise
                secret = await self.api.get(f"{path}/{name}")
        token = token_of(secret)
        if token is None:
            log.warning("%s/%s: Secret %s has no '%s' key; config push off until it has one (delete the "
                        "Secret and the operator creates it again)", namespace, rollout, name, TOKEN_KEY)
        return token

    async def _pods(self, namespace: str, rollout: str, track: str) -> list[tuple[str, str]]:
        pods = await self.api.list(f"/api/v1/namespaces/{namespace}/pods",
                                   {"asr.rollout.dev/rollout": rollout, "asr.rollout.dev/track": track})
        found = []
        for pod in pods:
            address = pod_address(pod)
            if address is not None:
                found.append((str((pod.get("metadata") or {}).get("name")), address))
        return found

    async def push(self, namespace: str, rollout: str, track: str, text: str,
                   token: str | None) -> list[PushResult]:
        if not self.enabled or token is None:
            return []
        try:
            pods = await self._pods(namespace, rollout, track)
        except kube.KubeError as error:
            log.warning("%s/%s: cannot list the %s pods to push the config (%s); they read the ConfigMap "
                        "at the kubelet's pace", namespace, rollout, track, error)
            return []
        session = await self._client()

        async def one(pod: str, address: str) -> PushResult:
            try:
                async with session.put(f"{address}/admin/config", params={"wait": "0"}, data=text.encode(),
                                       headers={"Authorization": f"Bearer {token}",
                                                "Content-Type": "application/yaml"}) as response:
                    body = await response.json(content_type=None)
                    if response.status >= 400:
                        message = (body.get("error") or {}).get("message") if isinstance(body, dict) else ""
                        return PushResult(pod, "failure", f"HTTP {response.status}: {message}")
                    return PushResult(pod, str(body.get("result", "accepted")), str(body.get("message", "")))
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as error:
                return PushResult(pod, "unreachable", str(error) or type(error).__name__)

        results = list(await asyncio.gather(*(one(pod, address) for pod, address in pods)))
        for r in results:
            level = logging.INFO if r.result in ("accepted", "success", "unchanged", "ignored") else logging.WARNING
            log.log(level, "%s/%s: pushed the %s config to pod %s: %s %s", namespace, rollout, track, r.pod,
                    r.result, r.message)
        return results

    async def served_versions(self, namespace: str, rollout: str, track: str) -> dict[str, int] | None:
        """Pods per version the track's pods serve, asked of the pods themselves (`/v1/models`):
        no scrape interval in between. None when off, or a pod did not answer."""
        if not self.enabled:
            return None
        try:
            pods = await self._pods(namespace, rollout, track)
        except kube.KubeError:
            return None
        session = await self._client()

        async def one(address: str) -> Mapping[str, Any] | None:
            try:
                async with session.get(f"{address}/v1/models") as response:
                    body = await response.json(content_type=None)
                    return body if response.status == 200 and isinstance(body, dict) else None
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
                return None

        if not pods:
            return None
        return served_counts(list(await asyncio.gather(*(one(address) for _, address in pods))))
