"""Gateway API routing: the weights of the rollout's two backendRefs in an HTTPRoute (v1).

The HTTPRoute belongs to whoever made it (hostnames, matches, filters, other backends); the
operator changes only the `weight` of the backendRefs that name `R-stable` and `R-canary`.
"""
from __future__ import annotations

import copy
from typing import Any

from .. import kube
from .router import RouteMissing, RouterError, TrafficRouter

GATEWAY_API_GROUP_VERSION = "gateway.networking.k8s.io/v1"


def _is_service_ref(ref: dict[str, Any], name: str) -> bool:
    return (ref.get("name") == name and ref.get("kind", "Service") == "Service"
            and ref.get("group", "") in ("", "core"))


def weighted_rules(rules: list[dict[str, Any]], stable: str, canary: str, weight: int) -> list[dict[str, Any]]:
    """A copy of `rules` with the two tracks' weights set (pure). A rule that names one track
    only gets the other appended, so the split exists wherever the rollout is routed."""
    result = copy.deepcopy(rules)
    touched = False
    for rule in result:
        refs = rule.get("backendRefs") or []
        has_stable = any(_is_service_ref(ref, stable) for ref in refs)
        has_canary = any(_is_service_ref(ref, canary) for ref in refs)
        if not (has_stable or has_canary):
            continue
        touched = True
        port = next((ref.get("port") for ref in refs
                     if _is_service_ref(ref, stable) or _is_service_ref(ref, canary)), None)
        if not has_stable:
            refs.append({"name": stable, **({"port": port} if port else {})})
        if not has_canary:
            refs.append({"name": canary, **({"port": port} if port else {})})
        for ref in refs:
            if _is_service_ref(ref, stable):
                ref["weight"] = 100 - weight
            elif _is_service_ref(ref, canary):
                ref["weight"] = weight
        rule["backendRefs"] = refs
    if not touched:
        raise RouterError(
            f"no rule of the HTTPRoute has a backendRef to Service {stable} or {canary}; "
            f"add `backendRefs: [{{name: {stable}, port: 8000}}]` to the rule that serves this model")
    return result


def canary_weight_of(rules: list[dict[str, Any]], stable: str, canary: str) -> int | None:
    for rule in rules:
        refs = rule.get("backendRefs") or []
        weights = {}
        for ref in refs:
            for name in (stable, canary):
                if _is_service_ref(ref, name):
                    weights[name] = int(ref.get("weight", 1))
        if weights:
            total = weights.get(stable, 0) + weights.get(canary, 0)
            return 0 if total == 0 else round(100 * weights.get(canary, 0) / total)
    return None


class GatewayApiRouter(TrafficRouter):
    approximate = False

    def __init__(self, api: kube.KubeApi, namespace: str, rollout: str, http_route: str):
        self._api = api
        self._namespace = namespace
        self._route = http_route
        self._stable = f"{rollout}-stable"
        self._canary = f"{rollout}-canary"

    async def _get_route(self) -> dict[str, Any]:
        route = await self._api.get(kube.httproute_path(self._namespace, self._route))
        if route is None:
            if await self._api.get(f"/apis/{GATEWAY_API_GROUP_VERSION}") is None:
                raise RouteMissing(
                    f"the Gateway API ({GATEWAY_API_GROUP_VERSION} HTTPRoute) is not installed in this cluster, so "
                    f"HTTPRoute {self._namespace}/{self._route} (spec.traffic.gatewayAPI.httpRoute) cannot exist; "
                    "install the Gateway API CRDs (standard channel, v1.0 or later) and create the route, "
                    "or use traffic.replicaRatio: {}")
            raise RouteMissing(
                f"HTTPRoute {self._namespace}/{self._route} (spec.traffic.gatewayAPI.httpRoute) does not exist; "
                f"create it with a backendRef to Service {self._stable} (port 8000), or use traffic.replicaRatio: {{}}")
        return route

    async def set_weight(self, weight: int, owner: dict[str, Any]) -> None:
        for _attempt in range(3):
            route = await self._get_route()
            rules = (route.get("spec") or {}).get("rules") or []
            desired = weighted_rules(rules, self._stable, self._canary, weight)
            if desired == rules:
                return
            # resourceVersion makes this a compare-and-swap: a concurrent edit gets a 409, re-read.
            patch = {"metadata": {"resourceVersion": route["metadata"].get("resourceVersion")},
                     "spec": {"rules": desired}}
            if patch["metadata"]["resourceVersion"] is None:
                del patch["metadata"]
            try:
                await self._api.merge_patch(kube.httproute_path(self._namespace, self._route), patch)
                return
            except kube.KubeError as error:
                if error.status != 409:
                    raise
        raise RouterError(f"HTTPRoute {self._route} kept changing under us; will retry next tick")

    async def current_weight(self) -> int | None:
        route = await self._get_route()
        return canary_weight_of((route.get("spec") or {}).get("rules") or [], self._stable, self._canary)
