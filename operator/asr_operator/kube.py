"""The thin Kubernetes I/O adapter: a small async REST client over aiohttp.

It uses the same credentials kopf logged in with (kubeconfig or service account), so one
connection story serves the operator and the CLI. Rules this module keeps for a real API server:
status is written only through the `/status` subresource, `spec` of a rollout is never written,
and listing filters by labels on the client side too (the emulator ignores selectors).
"""
from __future__ import annotations

import asyncio
import base64
import datetime
import os
import ssl
import tempfile
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
import kopf

GROUP = "asr.rollout.dev"
VERSION = "v1alpha1"
PLURAL = "asrmodelrollouts"
KIND = "ASRModelRollout"
API_VERSION = f"{GROUP}/{VERSION}"


class KubeError(Exception):
    def __init__(self, status: int, message: str, method: str = "", path: str = ""):
        self.status = status
        super().__init__(f"{method} {path}: HTTP {status}: {message}")


def rollout_path(namespace: str, name: str, subresource: str = "") -> str:
    tail = f"/{subresource}" if subresource else ""
    return f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/{name}{tail}"


def configmap_path(namespace: str, name: str = "") -> str:
    return f"/api/v1/namespaces/{namespace}/configmaps" + (f"/{name}" if name else "")


def service_path(namespace: str, name: str = "") -> str:
    return f"/api/v1/namespaces/{namespace}/services" + (f"/{name}" if name else "")


def deployment_path(namespace: str, name: str = "") -> str:
    return f"/apis/apps/v1/namespaces/{namespace}/deployments" + (f"/{name}" if name else "")


def pdb_path(namespace: str, name: str = "") -> str:
    return f"/apis/policy/v1/namespaces/{namespace}/poddisruptionbudgets" + (f"/{name}" if name else "")


def httproute_path(namespace: str, name: str) -> str:
    return f"/apis/gateway.networking.k8s.io/v1/namespaces/{namespace}/httproutes/{name}"


def _ssl_context(info: kopf.ConnectionInfo) -> ssl.SSLContext | bool:
    if not info.server.startswith("https"):
        return False
    if info.insecure:
        return False
    cadata = None
    if info.ca_data:
        raw = info.ca_data.encode() if isinstance(info.ca_data, str) else info.ca_data
        cadata = base64.b64decode(raw).decode()
    context = ssl.create_default_context(
        cafile=os.fspath(info.ca_path) if info.ca_path else None, cadata=cadata)
    if info.certificate_path or info.certificate_data:
        cert_path, key_path = _client_cert_files(info)
        context.load_cert_chain(certfile=cert_path, keyfile=key_path)
    return context


def _client_cert_files(info: kopf.ConnectionInfo) -> tuple[str, str | None]:
    """ssl loads client certificates from files only: write inline data to private temp files."""
    def as_file(path: Any, data: Any) -> str | None:
        if path:
            return str(os.fspath(path))
        if not data:
            return None
        raw = data.encode() if isinstance(data, str) else data
        handle = tempfile.NamedTemporaryFile(delete=False, prefix="asr-operator-", suffix=".pem")
        with handle:
            handle.write(base64.b64decode(raw))
        return handle.name
    cert = as_file(info.certificate_path, info.certificate_data)
    assert cert is not None
    return cert, as_file(info.private_key_path, info.private_key_data)


class KubeApi:
    """JSON over HTTP to the Kubernetes API. Methods return parsed bodies; 404 on get is None."""

    def __init__(self, info: kopf.ConnectionInfo, timeout_seconds: float = 10.0,
                 relogin: Callable[[], kopf.ConnectionInfo] | None = None):
        self._info = info
        self._relogin = relogin  # on 401: read credentials again (service-account tokens rotate)
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._session: aiohttp.ClientSession | None = None
        self._lock = asyncio.Lock()

    @property
    def server(self) -> str:
        return self._info.server.rstrip("/")

    async def _client(self) -> aiohttp.ClientSession:
        async with self._lock:
            if self._session is None or self._session.closed:
                connector = aiohttp.TCPConnector(ssl=_ssl_context(self._info), limit=50)
                self._session = aiohttp.ClientSession(
                    connector=connector, timeout=self._timeout,
                    headers=self._info.as_http_headers(), trust_env=self._info.trust_env)
            return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def request(self, method: str, path: str, body: Any = None,
                      content_type: str = "application/json") -> Any:
        try:
            return await self._request(method, path, body, content_type)
        except KubeError as error:
            if error.status != 401 or self._relogin is None:
                raise
            self._info = self._relogin()
            if self._session is not None:
                await self._session.close()
                self._session = None
            return await self._request(method, path, body, content_type)

    async def _request(self, method: str, path: str, body: Any, content_type: str) -> Any:
        session = await self._client()
        headers = {"Content-Type": content_type} if body is not None else {}
        async with session.request(method, self.server + path, json=body, headers=headers) as response:
            if response.status >= 400:
                text = await response.text()
                raise KubeError(response.status, text[:500], method, path)
            if response.content_type == "application/json":
                return await response.json()
            return await response.text()

    async def get(self, path: str) -> dict[str, Any] | None:
        try:
            result: dict[str, Any] = await self.request("GET", path)
            return result
        except KubeError as error:
            if error.status == 404:
                return None
            raise

    async def create(self, collection_path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("POST", collection_path, dict(body))
        return result

    async def merge_patch(self, path: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = await self.request(
            "PATCH", path, dict(patch), content_type="application/merge-patch+json")
        return result

    async def list(self, collection_path: str, labels: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
        query = ""
        if labels:
            query = "?labelSelector=" + ",".join(f"{key}={value}" for key, value in labels.items())
        result = await self.request("GET", collection_path + query)
        items: list[dict[str, Any]] = list(result.get("items") or [])
        if labels:  # the emulator ignores selectors; a real server already filtered
            items = [item for item in items
                     if all((item.get("metadata", {}).get("labels") or {}).get(k) == v for k, v in labels.items())]
        return items

    # --- the rollout resource -----------------------------------------------------------

    async def get_rollout(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self.get(rollout_path(namespace, name))

    async def patch_rollout_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        """Status goes only through the subresource; a real server ignores it elsewhere."""
        await self.merge_patch(rollout_path(namespace, name, "status"), {"status": dict(status)})

    async def set_annotations(self, namespace: str, name: str, annotations: Mapping[str, str | None]) -> None:
        """Set (or, with None, remove) annotations; never touches spec."""
        await self.merge_patch(rollout_path(namespace, name), {"metadata": {"annotations": dict(annotations)}})

    async def set_annotation(self, namespace: str, name: str, key: str, value: str) -> None:
        """Set one annotation (the alert webhook's write)."""
        await self.set_annotations(namespace, name, {key: value})

    async def remove_annotation_if(self, namespace: str, name: str, key: str, value: str) -> bool:
        """Remove an annotation only while it still holds `value` (a JSON patch `test` op): one
        written meanwhile (a newer alert) stays for the next tick. False when it had changed."""
        pointer = "/metadata/annotations/" + key.replace("~", "~0").replace("/", "~1")
        try:
            await self.request("PATCH", rollout_path(namespace, name),
                               [{"op": "test", "path": pointer, "value": value}, {"op": "remove", "path": pointer}],
                               content_type="application/json-patch+json")
        except KubeError as error:
            if error.status in (409, 422):  # the test failed: it changed, or is gone already
                return False
            raise
        return True

    async def post_event(self, rollout: Mapping[str, Any], event_type: str, reason: str, message: str) -> None:
        meta = rollout.get("metadata", {})
        namespace = meta.get("namespace", "default")
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{meta.get('name')}.{uuid.uuid4().hex[:12]}", "namespace": namespace},
            "involvedObject": {
                "apiVersion": API_VERSION, "kind": KIND, "name": meta.get("name"),
                "namespace": namespace, "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "reason": reason,
            "message": message[:1024],
            "type": event_type,
            "source": {"component": "asr-rollout-operator"},
            "reportingComponent": "asr-rollout-operator",
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        await self.create(f"/api/v1/namespaces/{namespace}/events", event)


def login_info() -> kopf.ConnectionInfo:
    """Credentials the way the operator logs in: service account inside a pod, else KUBECONFIG."""
    settings = kopf.OperatorSettings()
    info = kopf.login_with_service_account(settings=settings) or kopf.login_with_kubeconfig(settings=settings)
    if info is None:
        raise kopf.LoginError(
            "no Kubernetes credentials: run inside a cluster, or set KUBECONFIG (or ~/.kube/config)")
    return info
