"""Replica-ratio routing: one Service over both tracks, canary share set by pod counts.

Used where no gateway exists. The weight can only be approximated by whole pods, so status
reports the effective weight and says it is approximate.
"""
from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from .. import children, kube
from ..spec import RolloutSpec
from .router import RouterError, TrafficRouter


@dataclass(frozen=True)
class ReplicaSplit:
    stable: int
    canary: int
    effective_weight: int


def split_replicas(total: int, weight: int) -> ReplicaSplit:
    """Pods per track for a canary weight. The stable track keeps at least one pod (it must
    stay able to hot-reload and serve); weight 0 means no canary pod at all."""
    if weight <= 0:
        return ReplicaSplit(stable=total, canary=0, effective_weight=0)
    canary = max(1, math.ceil(total * min(weight, 100) / 100))
    stable = max(1, total - canary)
    effective = round(100 * canary / (canary + stable))
    return ReplicaSplit(stable=stable, canary=canary, effective_weight=effective)


class ReplicaRatioRouter(TrafficRouter):
    """The replica counts come from the state machine's Deployment actions; this router keeps
    the Service over both tracks in place and reports the weight the pod counts give."""

    approximate = True

    def __init__(self, api: kube.KubeApi, namespace: str, rollout: str, spec: RolloutSpec,
                 get: Callable[[str], Awaitable[dict[str, Any] | None]] | None = None):
        self._api = api
        self._namespace = namespace
        self._rollout = rollout
        self._spec = spec
        self._get = get or api.get  # the reconciler passes its per-tick cache

    async def set_weight(self, weight: int, owner: dict[str, Any]) -> None:
        desired = children.combined_service(self._namespace, self._rollout, owner, stable_only=weight <= 0)
        live = await self._get(kube.service_path(self._namespace, self._rollout))
        if live is None:
            await self._api.create(kube.service_path(self._namespace), desired)
            return
        selector = desired["spec"]["selector"]
        live_selector = (live.get("spec") or {}).get("selector") or {}
        if not children.contains(live, desired) or live_selector != selector:
            # The selector is compared whole: a merge patch only adds keys, so the track key it
            # drops when the canary gets a weight is deleted explicitly (null).
            patch_selector: dict[str, Any] = {key: None for key in live_selector if key not in selector}
            patch_selector.update(selector)
            await self._api.merge_patch(kube.service_path(self._namespace, self._rollout),
                                        {"metadata": desired["metadata"],
                                         "spec": {**desired["spec"], "selector": patch_selector}})

    async def current_weight(self) -> int | None:
        counts = []
        for track in ("stable", "canary"):
            live = await self._get(kube.deployment_path(self._namespace, f"{self._rollout}-{track}"))
            if live is None:
                if track == "stable":
                    raise RouterError(f"Deployment {self._rollout}-stable does not exist yet")
                counts.append(0)
            else:
                counts.append(int((live.get("spec") or {}).get("replicas") or 0))
        stable, canary = counts
        service = await self._get(kube.service_path(self._namespace, self._rollout))
        selector = ((service or {}).get("spec") or {}).get("selector") or {}
        if canary == 0 or selector.get("asr.rollout.dev/track") == "stable":
            return 0  # no canary pod, or none the Service selects (a shadow stage's canary)
        return round(100 * canary / (canary + stable))
