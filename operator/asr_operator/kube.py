"""The thin Kubernetes I/O adapter: a small async REST client over aiohttp.

It uses the same credentials kopf logged in with (`login_info`: the `kubernetes` client's config
loading, as kubectl logs in), so one connection story serves the operator and the CLI. Rules this module keeps for a real API server:
status is written only through the `/status` subresource, `spec` of a rollout is never written,
and listing filters by labels on the client side too (the emulator ignores selectors).
"""
from __future__ import annotations

import asyncio
import base64
import datetime
import json
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
        self.method = method
        self.path = path
        self.detail = message
        super().__init__(f"{method} {path}: HTTP {status}: {message}")


def status_message(text: str) -> str:
    """The `message` of a Kubernetes Status body (what a person needs), else the raw text."""
    try:
        body = json.loads(text)
    except ValueError:
        return text
    return str(body.get("message") or text) if isinstance(body, dict) else text


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
        # insecure-skip-tls-verify skips checking the server, not presenting our certificate
        # (an exec plugin or kubeconfig may authenticate by client certificate).
        if not (info.certificate_path or info.certificate_data):
            return False
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
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
                raise KubeError(response.status, status_message(text)[:500], method, path)
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

    async def list(self, collection_path: str, labels: Mapping[str, str] | None = None,
                   field_selector: str | None = None) -> list[dict[str, Any]]:
        params = []
        if labels:
            params.append("labelSelector=" + ",".join(f"{key}={value}" for key, value in labels.items()))
        if field_selector:
            params.append(f"fieldSelector={field_selector}")
        query = ("?" + "&".join(params)) if params else ""
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


SERVICE_ACCOUNT_NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def login_info(kubeconfig: str | None = None, context: str | None = None) -> kopf.ConnectionInfo:
    """Log in as kubectl does, through the `kubernetes` client's own config loading: it runs
    `exec` credential plugins (EKS, GKE, AKS), reads token files, client certificates and
    auth providers, and merges every file in KUBECONFIG. In a pod (no kubeconfig or context
    asked for) the service account; else `kubeconfig` (or KUBECONFIG, or ~/.kube/config) with
    `context` (or the file's current context). Called again on a 401: exec tokens expire.

    This is kopf.login_via_client's way, with two differences that the CLI needs: a fresh
    client Configuration per call (never the client library's process-wide default), and the
    kubeconfig file, context and the context's namespace chosen by the caller."""
    import kubernetes.client
    import kubernetes.config

    configuration = kubernetes.client.Configuration()
    if kubeconfig is None and context is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        try:
            kubernetes.config.load_incluster_config(client_configuration=configuration)
            return connection_from_configuration(configuration, _service_account_namespace())
        except kubernetes.config.ConfigException:
            configuration = kubernetes.client.Configuration()  # not really in a pod: try a kubeconfig
    # The client reads KUBECONFIG once, at import: read it now (it may have changed since).
    kubeconfig = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
    try:
        kubernetes.config.load_kube_config(config_file=kubeconfig, context=context,
                                           client_configuration=configuration, persist_config=False)
        contexts, current = kubernetes.config.list_kube_config_contexts(config_file=kubeconfig)
    except (kubernetes.config.ConfigException, OSError, ValueError) as error:
        raise kopf.LoginError(login_error_message(error, kubeconfig, context)) from None
    chosen = next((item for item in contexts if item.get("name") == context), None) if context else current
    namespace = ((chosen or {}).get("context") or {}).get("namespace")
    return connection_from_configuration(configuration, namespace)


def login_error_message(error: Exception, kubeconfig: str | None, context: str | None) -> str:
    where = kubeconfig or "~/.kube/config"
    text = str(error)
    if context and ("Expected object with name" in text or "context" in text.lower()):
        return (f"context {context!r} is not in the kubeconfig {where}; list them with: "
                "kubectl config get-contexts")
    return (f"no usable Kubernetes credentials in the kubeconfig {where} ({text}); "
            "pass --kubeconfig FILE, set KUBECONFIG, or run inside a cluster")


def connection_from_configuration(configuration: Any, namespace: str | None) -> kopf.ConnectionInfo:
    """The client's loaded Configuration as kopf's ConnectionInfo (what KubeApi and kopf use).
    The token is read through get_api_key_with_prefix: it runs the client's refresh hook (an
    expired exec or service-account token is fetched again). kubernetes>=36 keeps it under
    `BearerToken`, older releases under `authorization`."""
    header = (configuration.get_api_key_with_prefix("BearerToken")
              or configuration.get_api_key_with_prefix("authorization"))
    scheme, token = split_authorization(header)
    return kopf.ConnectionInfo(
        server=configuration.host,
        ca_path=configuration.ssl_ca_cert or None,  # the client writes inline CA data to a temp file
        insecure=not configuration.verify_ssl,
        username=configuration.username or None,
        password=configuration.password or None,
        scheme=scheme,
        token=token,
        certificate_path=configuration.cert_file or None,  # exec plugins may return a client cert
        private_key_path=configuration.key_file or None,
        default_namespace=namespace or None,
    )


def split_authorization(header: str | None) -> tuple[str | None, str | None]:
    """`Bearer abc` -> ("Bearer", "abc"); a bare token -> (None, "abc") (RFC 7235)."""
    parts = header.split(" ", 1) if header else []
    if not parts:
        return None, None
    if len(parts) == 1:
        return None, parts[0]
    return parts[0], parts[1]


def _service_account_namespace() -> str | None:
    try:
        with open(SERVICE_ACCOUNT_NAMESPACE_FILE, encoding="utf-8") as handle:
            return handle.read().strip() or None
    except OSError:
        return None
