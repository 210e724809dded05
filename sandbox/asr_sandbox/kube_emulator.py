"""A Kubernetes API emulator for the sandbox (`make demo`) and the tests: kmock's
`KubernetesEmulator`, with the gaps filled that a real client (kopf, the kubernetes library,
kubectl-like helpers) trips over.

What this subclass adds to kmock 0.8 (see ../shared/design.md, "Real components"):
- object metadata stamping: `uid`, `resourceVersion` (one cluster-wide counter), `generation`
  (bumped when anything but metadata/status changes), `creationTimestamp`, `generateName`;
- optimistic concurrency: 409 on a stale `metadata.resourceVersion`, 422 on a failed JSON-patch
  `test` (kopf's finalizer patches start with one), 409 AlreadyExists on create;
- merge patch, JSON patch, strategic merge patch (as merge patch) and PUT;
- the status subresource as a real API server has it: `status` sent to the main resource is
  ignored, and a `/status` patch changes only `status`;
- lists with `kind: XList`, `apiVersion` and a real `resourceVersion`; equality label selectors;
- watches that resume from `resourceVersion` (every change since is sent, none is lost between
  a list and the watch that follows it), honour `timeoutSeconds`, and answer 410 when too old;
- discovery that says `v1` (not `/v1`) for the core group; namespaces (`/api/v1/namespaces`);
- CRD defaults applied on create and update, as the API server does; schema validation is
  optional (off by default, so that tests can hand the operator specs a cluster would refuse);
- a request log (method, path, RBAC verb, resource, subresource, status) for RBAC coverage.

Gaps left as they are (code must be right for a real server anyway): no garbage collection of
owned objects, no Deployment controller (tests set `status.readyReplicas` themselves), no
field selectors, no admission webhooks.
"""
from __future__ import annotations

import asyncio
import copy
import datetime
import json
import re
import secrets
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp.web
import attrs
import kmock
import yaml
from kmock._internal import k8s_dicts, references, rendering

from asr_sandbox import crd_schema
from asr_sandbox.json_patching import PatchError, json_patch, merge_patch
from asr_sandbox.loop_thread import LoopThread


@dataclass(frozen=True)
class LoggedRequest:
    """One API request as RBAC sees it: `verb` on `group`/`resource`[/`subresource`]."""
    method: str
    path: str
    verb: str
    group: str | None
    version: str | None
    resource: str | None
    subresource: str | None
    namespace: str | None
    name: str | None
    status: int

    @property
    def rbac_resource(self) -> str | None:
        if self.resource is None:
            return None
        return f"{self.resource}/{self.subresource}" if self.subresource else self.resource


@dataclass(frozen=True)
class ResourceSpec:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    subresources: tuple[str, ...] = ()
    shortnames: tuple[str, ...] = ()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


MAX_EVENTS = 100_000  # watches resuming from an older resourceVersion get 410 Gone
ALL_VERBS = ("get", "list", "watch", "create", "update", "patch", "delete", "deletecollection")

# The built-in resources the operator, the sandbox and the tests use.
BUILTIN_RESOURCES: tuple[ResourceSpec, ...] = (
    ResourceSpec("", "v1", "namespaces", "Namespace", namespaced=False),
    ResourceSpec("", "v1", "configmaps", "ConfigMap"),
    ResourceSpec("", "v1", "secrets", "Secret"),
    ResourceSpec("", "v1", "services", "Service", subresources=("status",)),
    ResourceSpec("", "v1", "pods", "Pod", subresources=("status",)),
    ResourceSpec("", "v1", "events", "Event"),
    ResourceSpec("", "v1", "serviceaccounts", "ServiceAccount"),
    ResourceSpec("apps", "v1", "deployments", "Deployment", subresources=("status", "scale")),
    ResourceSpec("apps", "v1", "replicasets", "ReplicaSet", subresources=("status", "scale")),
    ResourceSpec("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget", subresources=("status",)),
    ResourceSpec("scheduling.k8s.io", "v1", "priorityclasses", "PriorityClass", namespaced=False),
    ResourceSpec("events.k8s.io", "v1", "events", "Event"),
    ResourceSpec("coordination.k8s.io", "v1", "leases", "Lease"),
    ResourceSpec("gateway.networking.k8s.io", "v1", "httproutes", "HTTPRoute", subresources=("status",)),
    ResourceSpec("apiextensions.k8s.io", "v1", "customresourcedefinitions",
                 "CustomResourceDefinition", namespaced=False, subresources=("status",)),
)

_NAMESPACES_PATH = re.compile(r"^/api/v1/namespaces(?:/(?P<name>[^/]+))?/?$")


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _status(code: int, reason: str, message: str) -> aiohttp.web.Response:
    """A `kind: Status` failure as the API server sends it (clients parse `reason`)."""
    return aiohttp.web.json_response({
        "apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
        "code": code, "reason": reason, "message": message,
    }, status=code)


def _rbac_verb(method: str, has_name: bool, watch: bool) -> str:
    if method == "GET":
        return "watch" if watch else ("get" if has_name else "list")
    return {
        "POST": "create", "PUT": "update", "PATCH": "patch",
        "DELETE": "delete" if has_name else "deletecollection",
    }.get(method, method.lower())


def _spec_part(obj: dict[str, Any]) -> dict[str, Any]:
    """What `metadata.generation` tracks: everything but metadata and status."""
    return {k: v for k, v in obj.items() if k not in ("metadata", "status")}


def matches_label_selector(labels: dict[str, str], selector: str) -> bool:
    """Equality- and existence-based selectors: `a=b`, `a==b`, `a!=b`, `a`, `!a`."""
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key.strip()) == value.strip():
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key.strip()) != value.strip():
                return False
        elif term.startswith("!"):
            if term[1:].strip() in labels:
                return False
        elif term not in labels:
            return False
    return True


@attrs.define(kw_only=True)
class ApiEmulator(kmock.KubernetesEmulator):
    """kmock's emulator with resourceVersions, conflicts, the status subresource and a log."""

    validate_crds: bool = False
    request_log: list[LoggedRequest] = attrs.field(factory=list, init=False)
    _specs: dict[tuple[str, str, str], ResourceSpec] = attrs.field(factory=dict, init=False)
    _crd_schemas: dict[tuple[str, str, str], dict[str, Any]] = attrs.field(factory=dict, init=False)
    _extra_namespaces: set[str] = attrs.field(factory=set, init=False)
    _revision: int = attrs.field(default=0, init=False)
    # Every change as (resourceVersion, resource key, event): watches resume from a version.
    _events: list[tuple[int, tuple[str, str, str], dict[str, Any]]] = attrs.field(factory=list, init=False)
    _watchers: list[tuple[tuple[str, str, str], str | None, "asyncio.Queue[dict[str, Any]]"]] = \
        attrs.field(factory=list, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        for spec in BUILTIN_RESOURCES:
            self.register(spec)

    # --- registration ------------------------------------------------------------------------

    def register(self, spec: ResourceSpec) -> None:
        self._specs[spec.group, spec.version, spec.plural] = spec
        self.resources[references.resource(spec.group, spec.version, spec.plural)] = \
            references.ResourceInfo(
                kind=spec.kind, namespaced=spec.namespaced, singular=spec.kind.lower(),
                verbs=set(ALL_VERBS), shortnames=set(spec.shortnames),
                subresources=set(spec.subresources))

    def register_crd(self, crd: dict[str, Any]) -> None:
        """Serve a CustomResourceDefinition's resource (every served version) and store the CRD."""
        names, group = crd["spec"]["names"], crd["spec"]["group"]
        for version in crd["spec"]["versions"]:
            if not version.get("served", True):
                continue
            spec = ResourceSpec(
                group, version["name"], names["plural"], names["kind"],
                namespaced=crd["spec"]["scope"] == "Namespaced",
                subresources=tuple(version.get("subresources", {})),
                shortnames=tuple(names.get("shortNames", ())))
            self.register(spec)
            self._crd_schemas[group, version["name"], names["plural"]] = \
                version["schema"]["openAPIV3Schema"]
        key = (references.resource("apiextensions.k8s.io", "v1", "customresourcedefinitions"),
               None, crd["metadata"]["name"])
        self.objects[key] = self._stamped_new(copy.deepcopy(crd), None)

    def add_namespace(self, name: str) -> None:
        self._extra_namespaces.add(name)

    # --- the HTTP entry point ----------------------------------------------------------------

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        # kmock cannot parse `/api/v1/namespaces[/NAME]` (it reads `namespaces` as a path prefix).
        match = _NAMESPACES_PATH.match(raw_request.path)
        if match is not None:
            await raw_request.read()
            response = self._serve_namespaces(raw_request.method, match.group("name"))
            self._log(raw_request.method, raw_request.path, dict(raw_request.query),
                      "", "v1", "namespaces", None, None, match.group("name"), response.status)
            return response
        return await super().__call__(raw_request)

    def _serve_namespaces(self, method: str, name: str | None) -> aiohttp.web.Response:
        names = sorted(self.namespaces())
        def item(ns: str) -> dict[str, Any]:
            return {"apiVersion": "v1", "kind": "Namespace",
                    "metadata": {"name": ns, "uid": str(uuid.uuid5(uuid.NAMESPACE_DNS, ns)),
                                 "resourceVersion": "1"},
                    "status": {"phase": "Active"}}
        if method != "GET":
            return _status(405, "MethodNotAllowed", "the emulator serves namespaces read-only;"
                           " use ApiEmulator.add_namespace() or create objects in it")
        if name is None:
            return aiohttp.web.json_response({
                "apiVersion": "v1", "kind": "NamespaceList",
                "metadata": {"resourceVersion": str(self._revision)},
                "items": [item(ns) for ns in names]})
        if name not in names:
            return _status(404, "NotFound", f'namespaces "{name}" not found')
        return aiohttp.web.json_response(item(name))

    def namespaces(self) -> set[str]:
        found = {ns for (_, ns, _), obj in self.objects.items() if ns and not obj.deleted}
        return found | self._extra_namespaces | {"default"}

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        if request.method.value == "GET" and request.params.get("watch") in ("true", "1"):
            return await self._dispatch(request)  # a watch logs itself when it starts
        response = await self._dispatch(request)
        res = request.resource
        self._log(request.method.value, request.url.path, dict(request.params),
                  res.group if res else None, res.version if res else None,
                  res.plural if res else None, request.subresource, request.namespace,
                  request.name, response.status)
        return response

    def _log(self, method: str, path: str, params: dict[str, str], group: str | None,
             version: str | None, plural: str | None, subresource: str | None,
             namespace: str | None, name: str | None, status: int) -> None:
        is_object = plural is not None
        verb = _rbac_verb(method, name is not None, params.get("watch") in ("true", "1")) \
            if is_object else method.lower()
        self.request_log.append(LoggedRequest(
            method=method, path=path, verb=verb, group=group, version=version, resource=plural,
            subresource=subresource, namespace=namespace, name=name, status=status))

    async def _dispatch(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        res = request.resource
        path = request.url.path.rstrip("/")
        if path == "/api/v1":  # kmock says groupVersion "/v1" for the core group
            payload = await self._serve_version(request)
            assert isinstance(payload, dict)
            return aiohttp.web.json_response(dict(payload, groupVersion="v1"))
        if res is None or res.plural is None or res.group is None:
            return await super()._handle(request)  # discovery, /version, non-API paths
        spec = self._specs.get((res.group, res.version or "", res.plural))
        if spec is None:
            return _status(404, "NotFound", f"the server could not find the requested resource"
                           f" ({res.group}/{res.version} {res.plural})")
        if request.subresource not in (None, *spec.subresources):
            return _status(404, "NotFound", f"{res.plural} has no subresource {request.subresource!r}")
        method = request.method.value
        if method == "GET" and request.params.get("watch") in ("true", "1"):
            return await self._serve_watch_stream(request, spec)
        if method == "GET":
            return await self._serve_get(request, spec)
        if method == "POST" and request.name is None:
            return await self._serve_post(request, spec)
        if method in ("PATCH", "PUT") and request.name is not None:
            return await self._serve_modify(request, spec)
        if method == "DELETE":
            return await self._serve_remove(request, spec)
        return _status(405, "MethodNotAllowed", f"{method} is not supported on {request.url.path}")

    # --- reading -----------------------------------------------------------------------------

    def _key(self, res: references.resource, namespace: str | None, name: str) -> tuple[Any, ...]:
        return (res, namespace, name)

    def _live(self, key: tuple[Any, ...]) -> k8s_dicts.Object | None:
        if key in self.objects and not self.objects[key].deleted:
            return self.objects[key]
        return None

    def _select(self, spec: ResourceSpec, namespace: str | None,
                label_selector: str | None) -> list[dict[str, Any]]:
        res = references.resource(spec.group, spec.version, spec.plural)
        items = []
        for (r, ns, _), obj in self.objects.items():
            if r != res or obj.deleted or (namespace is not None and ns != namespace):
                continue
            raw = copy.deepcopy(obj.raw)
            labels = raw.get("metadata", {}).get("labels") or {}
            if label_selector and not matches_label_selector(labels, label_selector):
                continue
            items.append(raw)
        return sorted(items, key=lambda o: (o["metadata"].get("namespace") or "", o["metadata"]["name"]))

    async def _serve_get(self, request: rendering.Request, spec: ResourceSpec) -> aiohttp.web.Response:
        assert request.resource is not None
        async with self._lock:
            if request.name is None:
                items = self._select(spec, request.namespace, request.params.get("labelSelector"))
                return aiohttp.web.json_response({
                    "apiVersion": spec.api_version, "kind": f"{spec.kind}List",
                    "metadata": {"resourceVersion": str(self._revision)}, "items": items})
            obj = self._live(self._key(request.resource, request.namespace, request.name))
            if obj is None:
                return _status(404, "NotFound", f'{spec.plural} "{request.name}" not found')
            return aiohttp.web.json_response(obj.raw)

    # --- writing -----------------------------------------------------------------------------

    def _next_revision(self) -> str:
        self._revision += 1
        return str(self._revision)

    def _stamped_new(self, body: dict[str, Any], namespace: str | None) -> dict[str, Any]:
        meta = body.setdefault("metadata", {})
        if namespace is not None:
            meta["namespace"] = namespace
        meta["uid"] = str(uuid.uuid4())
        meta["resourceVersion"] = self._next_revision()
        meta["generation"] = 1
        meta["creationTimestamp"] = _now()
        return body

    def _defaulted(self, spec: ResourceSpec, body: dict[str, Any]) -> dict[str, Any]:
        schema = self._crd_schemas.get((spec.group, spec.version, spec.plural))
        return crd_schema.apply_defaults(schema, body) if schema else body

    def _invalid(self, spec: ResourceSpec, body: dict[str, Any]) -> str | None:
        schema = self._crd_schemas.get((spec.group, spec.version, spec.plural))
        if not (self.validate_crds and schema):
            return None
        import jsonschema
        validator = jsonschema.Draft202012Validator(crd_schema.to_json_schema(schema))
        errors = [crd_schema.describe(e) for e in validator.iter_errors(body)]
        return "; ".join(errors) or None

    async def _publish(self, res: references.resource, kind: str, body: dict[str, Any]) -> None:
        """Record a change and hand it to the open watches (the caller holds the lock)."""
        key = (res.group or "", res.version or "", res.plural or "")
        event = {"type": kind, "object": copy.deepcopy(body)}
        self._events.append((self._revision, key, event))
        if len(self._events) > MAX_EVENTS:
            del self._events[: len(self._events) - MAX_EVENTS]
        namespace = body.get("metadata", {}).get("namespace")
        for watched, watched_ns, queue in self._watchers:
            if watched == key and (watched_ns is None or watched_ns == namespace):
                queue.put_nowait(event)

    async def _serve_watch_stream(self, request: rendering.Request,
                                  spec: ResourceSpec) -> aiohttp.web.StreamResponse:
        """A watch that resumes exactly from `resourceVersion` (kmock's own watch replays the
        current objects instead and can lose a change made between its snapshot and its
        subscription; kopf then tests a stale resourceVersion and waits forever)."""
        res = request.resource
        raw_request = request._raw_request
        assert res is not None and raw_request is not None
        key = (spec.group, spec.version, spec.plural)
        selector = request.params.get("labelSelector")
        since = request.params.get("resourceVersion") or "0"
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        async with self._lock:
            backlog: list[dict[str, Any]]
            if since == "0" or not since.isdigit():
                backlog = [{"type": "ADDED", "object": o}
                           for o in self._select(spec, request.namespace, None)]
            elif self._events and int(since) < self._events[0][0] - 1:
                backlog = [{"type": "ERROR", "object": {
                    "kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 410,
                    "reason": "Expired", "message": f"too old resource version: {since}"}}]
            else:
                backlog = [e for rv, k, e in self._events if k == key and rv > int(since) and (
                    request.namespace is None
                    or e["object"].get("metadata", {}).get("namespace") == request.namespace)]
            watcher = (key, request.namespace, queue)
            self._watchers.append(watcher)
        self._log("GET", request.url.path, dict(request.params), res.group, res.version,
                  res.plural, None, request.namespace, request.name, 200)
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        timeout = float(request.params.get("timeoutSeconds") or 0) or None
        try:
            await response.prepare(raw_request)
            for event in backlog:
                await self._write_event(response, event, request.name, selector)
            async with asyncio.timeout(timeout):
                while True:
                    await self._write_event(response, await queue.get(), request.name, selector)
        except (TimeoutError, ConnectionResetError):
            pass
        finally:
            async with self._lock:
                self._watchers.remove(watcher)
        return response

    @staticmethod
    async def _write_event(response: aiohttp.web.StreamResponse, event: dict[str, Any],
                           name: str | None, selector: str | None) -> None:
        meta = event["object"].get("metadata", {})
        if name is not None and meta.get("name") != name:
            return
        if selector and event["type"] != "ERROR" and \
                not matches_label_selector(meta.get("labels") or {}, selector):
            return
        await response.write(json.dumps(event).encode() + b"\n")

    async def _serve_post(self, request: rendering.Request, spec: ResourceSpec) -> aiohttp.web.Response:
        res = request.resource
        assert res is not None
        body = request.data
        if not isinstance(body, dict):
            return _status(400, "BadRequest", "the request body must be a JSON object")
        body = copy.deepcopy(body)
        meta = body.setdefault("metadata", {})
        namespace = request.namespace or meta.get("namespace") if spec.namespaced else None
        if spec.namespaced and not namespace:
            return _status(400, "BadRequest", "a namespaced object needs a namespace")
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + secrets.token_hex(3)
        if not meta.get("name"):
            return _status(422, "Invalid", "metadata.name: Required value")
        body.setdefault("apiVersion", spec.api_version)
        body.setdefault("kind", spec.kind)
        if "status" in spec.subresources:
            body.pop("status", None)  # the API server ignores status on create here
        body = self._defaulted(spec, body)
        if (problem := self._invalid(spec, body)) is not None:
            return _status(422, "Invalid", f"{spec.kind} {meta['name']!r} is invalid: {problem}")
        key = self._key(res, namespace, meta["name"])
        async with self._lock:
            if self._live(key) is not None:
                return _status(409, "AlreadyExists",
                               f'{spec.plural} "{meta["name"]}" already exists')
            body = self._stamped_new(body, namespace)
            if key in self.objects:
                self.objects[key].create(body)
            else:
                self.objects[key] = body
            await self._publish(res, "ADDED", body)
        return aiohttp.web.json_response(body, status=201)

    def _apply_change(self, request: rendering.Request, current: dict[str, Any]) -> dict[str, Any]:
        """The object after the request's patch or replacement (raises PatchError)."""
        if request.method.value == "PUT":
            if not isinstance(request.data, dict):
                raise PatchError("the request body must be a JSON object")
            return copy.deepcopy(request.data)
        content_type = request.headers.get("Content-Type", "").split(";")[0].strip()
        if content_type == "application/json-patch+json":
            return json_patch(current, request.data)
        if not isinstance(request.data, dict):
            raise PatchError(f"a {content_type or 'merge'} patch must be a JSON object")
        return merge_patch(current, request.data)

    async def _serve_modify(self, request: rendering.Request, spec: ResourceSpec) -> aiohttp.web.Response:
        res = request.resource
        assert res is not None and request.name is not None
        key = self._key(res, request.namespace if spec.namespaced else None, request.name)
        async with self._lock:
            obj = self._live(key)
            if obj is None:
                return _status(404, "NotFound", f'{spec.plural} "{request.name}" not found')
            current = copy.deepcopy(obj.raw)
            try:
                changed = self._apply_change(request, current)
            except PatchError as e:
                return _status(422, "Invalid", f"the patch cannot be applied: {e}")
            if not isinstance(changed, dict):
                return _status(422, "Invalid", "the patched object is not a JSON object")
            sent_rv = (changed.get("metadata") or {}).get("resourceVersion")
            if sent_rv is not None and str(sent_rv) != current["metadata"]["resourceVersion"]:
                return _status(409, "Conflict",
                               f'Operation cannot be fulfilled on {spec.plural} "{request.name}":'
                               " the object has been modified; please apply your changes to the"
                               " latest version and try again")
            new = self._separate_status(spec, request.subresource, current, changed)
            new = self._defaulted(spec, new)
            if (problem := self._invalid(spec, new)) is not None:
                return _status(422, "Invalid", f"{spec.kind} {request.name!r} is invalid: {problem}")
            if new == current:
                return aiohttp.web.json_response(current)  # no-op: no new resourceVersion
            if _spec_part(new) != _spec_part(current):
                new["metadata"]["generation"] = int(current["metadata"].get("generation", 1)) + 1
            new["metadata"]["resourceVersion"] = self._next_revision()
            meta = new["metadata"]
            if meta.get("deletionTimestamp") and not meta.get("finalizers"):
                obj.history.append(new)
                obj.delete()
                await self._publish(res, "DELETED", new)
            else:
                obj.history.append(new)
                await self._publish(res, "MODIFIED", new)
        return aiohttp.web.json_response(new)

    def _separate_status(self, spec: ResourceSpec, subresource: str | None,
                         current: dict[str, Any], changed: dict[str, Any]) -> dict[str, Any]:
        """Keep what the endpoint may not change: identity always; with a status subresource,
        `status` on the main resource and everything but `status` on `/status`."""
        if subresource in ("status", "scale") or "status" in spec.subresources:
            if subresource == "status":
                new = copy.deepcopy(current)
                if "status" in changed:
                    new["status"] = changed["status"]
                else:
                    new.pop("status", None)
            elif subresource == "scale":
                new = copy.deepcopy(current)
                replicas = (changed.get("spec") or {}).get("replicas")
                if replicas is not None:
                    new.setdefault("spec", {})["replicas"] = replicas
            else:
                new = changed
                if "status" in current:
                    new["status"] = copy.deepcopy(current["status"])
                else:
                    new.pop("status", None)
        else:
            new = changed
        meta = new.setdefault("metadata", {})
        for immutable in ("uid", "creationTimestamp", "namespace", "name", "generation",
                          "resourceVersion", "deletionTimestamp"):
            if immutable in current["metadata"]:
                meta[immutable] = current["metadata"][immutable]
            else:
                meta.pop(immutable, None)
        return new

    async def _serve_remove(self, request: rendering.Request, spec: ResourceSpec) -> aiohttp.web.Response:
        res = request.resource
        assert res is not None
        async with self._lock:
            if request.name is None:
                names = [o["metadata"]["name"] for o in self._select(
                    spec, request.namespace, request.params.get("labelSelector"))]
            else:
                names = [request.name]
            last: dict[str, Any] | None = None
            for name in names:
                key = self._key(res, request.namespace if spec.namespaced else None, name)
                obj = self._live(key)
                if obj is None:
                    return _status(404, "NotFound", f'{spec.plural} "{name}" not found')
                last = copy.deepcopy(obj.raw)
                meta = last["metadata"]
                if meta.get("finalizers"):
                    if not meta.get("deletionTimestamp"):
                        meta["deletionTimestamp"] = _now()
                        meta["resourceVersion"] = self._next_revision()
                        obj.history.append(last)
                        await self._publish(res, "MODIFIED", last)
                else:
                    obj.delete()
                    await self._publish(res, "DELETED", last)
        if request.name is None:
            return aiohttp.web.json_response({"apiVersion": spec.api_version,
                                              "kind": f"{spec.kind}List", "items": []})
        return aiohttp.web.json_response(last)


def write_kubeconfig(path: Path, server_url: str, namespace: str = "default") -> Path:
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "emulator",
        "clusters": [{"name": "emulator", "cluster": {"server": server_url}}],
        "users": [{"name": "tester", "user": {"token": "emulator-token"}}],
        "contexts": [{"name": "emulator",
                      "context": {"cluster": "emulator", "user": "tester", "namespace": namespace}}],
    }
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


class EmulatorServer:
    """The emulator served over real HTTP on 127.0.0.1 from a background thread, so that
    synchronous code (tests, the sandbox) and subprocesses (the operator) talk to it exactly as
    to a cluster."""

    def __init__(self, emulator: ApiEmulator | None = None) -> None:
        self.emulator = emulator if emulator is not None else ApiEmulator()  # an empty one is falsy
        self._background = LoopThread("api-emulator")
        self.loop = self._background.loop
        self._runner: aiohttp.web.ServerRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "EmulatorServer":
        self._background.start(self._start())
        return self

    async def _start(self) -> None:
        await self.emulator.__aenter__()
        server = aiohttp.web.Server(self.emulator)
        # Watch streams never end by themselves: give open connections no grace on shutdown.
        self._runner = aiohttp.web.ServerRunner(server, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        site = aiohttp.web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        sockets = getattr(site._server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1]

    def stop(self) -> None:
        async def _stop() -> None:
            if self._runner is not None:
                await self._runner.cleanup()
            await self.emulator.__aexit__(None, None, None)
            current = asyncio.current_task()
            pending = [t for t in asyncio.all_tasks() if t is not current]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        self._background.stop(_stop())

    def call(self, fn: Any, *args: Any) -> Any:
        """Run `fn(*args)` on the emulator's loop (for reading its state without races)."""
        async def run() -> Any:
            return fn(*args)
        return self._background.run(run())

    def __enter__(self) -> "EmulatorServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

