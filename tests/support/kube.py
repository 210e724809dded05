"""A small synchronous Kubernetes REST client for tests: create/get/list/patch/delete over real
HTTP against the emulator or a real API server (bearer token, its self-signed certificate not
verified), plus polling helpers."""
from __future__ import annotations

import time
from typing import Any, Callable, TypeVar

import requests
import urllib3

urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)  # tests' own clusters only

T = TypeVar("T")

# kind -> (apiVersion, plural) for the objects tests create by manifest.
KINDS: dict[str, tuple[str, str]] = {
    "ASRModelRollout": ("asr.rollout.dev/v1alpha1", "asrmodelrollouts"),
    "Namespace": ("v1", "namespaces"),
    "ConfigMap": ("v1", "configmaps"),
    "ServiceAccount": ("v1", "serviceaccounts"),
    "Role": ("rbac.authorization.k8s.io/v1", "roles"),
    "RoleBinding": ("rbac.authorization.k8s.io/v1", "rolebindings"),
    "ClusterRole": ("rbac.authorization.k8s.io/v1", "clusterroles"),
    "ClusterRoleBinding": ("rbac.authorization.k8s.io/v1", "clusterrolebindings"),
    "Secret": ("v1", "secrets"),
    "Service": ("v1", "services"),
    "Pod": ("v1", "pods"),
    "Event": ("v1", "events"),
    "Deployment": ("apps/v1", "deployments"),
    "HTTPRoute": ("gateway.networking.k8s.io/v1", "httproutes"),
    "PriorityClass": ("scheduling.k8s.io/v1", "priorityclasses"),
}


class ApiError(RuntimeError):
    def __init__(self, status: int, body: Any) -> None:
        self.status = status
        self.body = body
        message = body.get("message") if isinstance(body, dict) else body
        super().__init__(f"HTTP {status}: {message}")


def _url(base: str, api_version: str, plural: str, namespace: str | None, name: str | None,
         subresource: str | None = None) -> str:
    prefix = f"{base}/api/{api_version}" if "/" not in api_version else f"{base}/apis/{api_version}"
    parts = [prefix]
    if namespace is not None:
        parts.append(f"namespaces/{namespace}")
    parts.append(plural)
    if name is not None:
        parts.append(name)
    if subresource is not None:
        parts.append(subresource)
    return "/".join(parts)


class KubeClient:
    def __init__(self, base_url: str, timeout: float = 10.0, token: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.session = requests.Session()
        self.timeout = timeout
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"
        # A test cluster's self-signed certificate. Per request: requests lets REQUESTS_CA_BUNDLE
        # in the environment override a session's `verify`.
        self.verify = False

    def ensure_namespace(self, namespace: str) -> None:
        """A real API server needs the Namespace object (the emulator does not care)."""
        try:
            self.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
        except ApiError as error:
            if error.status != 409:
                raise

    def ensure_priority_class(self, name: str, value: int = 1000) -> None:
        """A cluster admin's part: a real API server refuses pods naming a missing PriorityClass."""
        try:
            self.create({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
                         "metadata": {"name": name}, "value": value})
        except ApiError as error:
            if error.status != 409:
                raise

    def _call(self, method: str, url: str, **kwargs: Any) -> Any:
        response = self.session.request(method, url, timeout=self.timeout, verify=self.verify, **kwargs)
        try:
            body = response.json()
        except ValueError:
            body = response.text
        if response.status_code >= 400:
            raise ApiError(response.status_code, body)
        return body

    def create(self, obj: dict[str, Any], namespace: str | None = None) -> dict[str, Any]:
        api_version, plural = KINDS[obj["kind"]]
        ns = namespace or obj.get("metadata", {}).get("namespace")
        if obj["kind"] in ("Namespace", "ClusterRole", "ClusterRoleBinding"):
            ns = None
        return self._call("POST", _url(self.base_url, api_version, plural, ns, None), json=obj)

    def get(self, api_version: str, plural: str, namespace: str | None, name: str) -> dict[str, Any]:
        return self._call("GET", _url(self.base_url, api_version, plural, namespace, name))

    def get_or_none(self, api_version: str, plural: str, namespace: str | None,
                    name: str) -> dict[str, Any] | None:
        try:
            return self.get(api_version, plural, namespace, name)
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    def list(self, api_version: str, plural: str, namespace: str | None = None,
             label_selector: str | None = None) -> list[dict[str, Any]]:
        params = {"labelSelector": label_selector} if label_selector else {}
        body = self._call("GET", _url(self.base_url, api_version, plural, namespace, None), params=params)
        return body["items"]

    def patch(self, api_version: str, plural: str, namespace: str | None, name: str,
              patch: Any, subresource: str | None = None,
              content_type: str = "application/merge-patch+json") -> dict[str, Any]:
        return self._call(
            "PATCH", _url(self.base_url, api_version, plural, namespace, name, subresource),
            json=patch, headers={"Content-Type": content_type})

    def delete(self, api_version: str, plural: str, namespace: str | None, name: str) -> Any:
        return self._call("DELETE", _url(self.base_url, api_version, plural, namespace, name))

    # --- rollouts ------------------------------------------------------------------------------

    def rollout(self, namespace: str, name: str) -> dict[str, Any]:
        return self.get("asr.rollout.dev/v1alpha1", "asrmodelrollouts", namespace, name)

    def annotate_rollout(self, namespace: str, name: str, annotations: dict[str, str | None]) -> None:
        self.patch("asr.rollout.dev/v1alpha1", "asrmodelrollouts", namespace, name,
                   {"metadata": {"annotations": annotations}})


def wait_for(probe: Callable[[], T | None], timeout: float, what: str, interval: float = 0.2,
             context: Callable[[], str] | None = None) -> T:
    """Poll `probe` until it returns something truthy; fail with `what`, the last value seen and
    `context()` (e.g. the tail of the operator's log, read when the wait fails)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = probe()
        except (requests.RequestException, ApiError) as e:
            last = e
        else:
            if last:
                return last
        if time.monotonic() > deadline:
            extra = f"\n--- context ---\n{context()}" if context is not None else ""
            raise AssertionError(
                f"timed out after {timeout:.0f}s waiting for {what}; last seen: {last!r}{extra}")
        time.sleep(interval)
