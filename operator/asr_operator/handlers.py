"""kopf handlers: thin adapters around the Reconciler.

One daemon per rollout ticks when the state machine says the next thing is due (analysis
interval, pause end, deadline) and at once when a person changes the spec or sets a control
annotation. State lives in the resource's status, never in this process.
"""
from __future__ import annotations

import asyncio
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import kopf

from . import kube
from .alert_webhook import TOKEN_ENV, start_alert_webhook
from .analysis.prometheus_source import SourcePool
from .config_push import ConfigPusher
from .metrics import OperatorMetrics
from .reconciler import Reconciler
from .state_machine import ANNOTATION_PREFIX

log = logging.getLogger("asr_operator")
IDLE_TICK_SECONDS = 30.0  # re-check even when nothing is due: children drift, pods come and go
ERROR_RETRY_SECONDS = 5.0  # first retry after a failed tick; doubles per failure up to the cap
ERROR_RETRY_MAX_SECONDS = 300.0


def error_backoff_seconds(failures: int) -> float:
    """Seconds before retrying after `failures` consecutive failed ticks: 5, 10, 20, ... 300.
    A spec change or control annotation still wakes the daemon at once."""
    return min(ERROR_RETRY_SECONDS * 2 ** max(failures - 1, 0), ERROR_RETRY_MAX_SECONDS)


@dataclass
class OperatorOptions:
    namespaces: list[str] = field(default_factory=list)
    standalone: bool = False
    disable_scanning: bool = False
    metrics_port: int = 8080
    webhook_port: int = 8081
    verbose: bool = False
    config_push: bool = True  # push model config changes to the pods (--no-config-push: off)


@dataclass
class _Runtime:
    options: OperatorOptions = field(default_factory=OperatorOptions)
    connection: kopf.ConnectionInfo | None = None
    reconciler: Reconciler | None = None
    metrics: OperatorMetrics = field(default_factory=OperatorMetrics)
    wakeups: dict[tuple[str, str], asyncio.Event] = field(default_factory=dict)
    seen_generation: dict[tuple[str, str], Any] = field(default_factory=dict)
    webhook: Any = None


RUNTIME = _Runtime()


def configure(options: OperatorOptions) -> None:
    RUNTIME.options = options


def _reconciler() -> Reconciler:
    if RUNTIME.reconciler is None:
        info = RUNTIME.connection or kube.login_info()
        api = kube.KubeApi(info, relogin=kube.login_info)
        RUNTIME.reconciler = Reconciler(api, SourcePool(), RUNTIME.metrics,
                                        pusher=ConfigPusher(api, enabled=RUNTIME.options.config_push))
    return RUNTIME.reconciler


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    options = RUNTIME.options
    settings.scanning.disabled = options.disable_scanning
    settings.peering.standalone = options.standalone
    # With replicas, only one may act: peering is required, not best-effort (docs/contracts.md).
    settings.peering.mandatory = not options.standalone
    # kopf's own bookkeeping goes to annotations, not to our status (the CRD owns its shape).
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kopf.asr.rollout.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="kopf.asr.rollout.dev", key="last-handled-configuration")
    settings.posting.level = logging.WARNING  # our events are posted by the reconciler
    settings.watching.server_timeout = 300
    # Prometheus queries run in threads (prometheus-api-client blocks): with hundreds of rollouts
    # the default pool (cores + 4) would queue analysis ticks behind each other.
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=32, thread_name_prefix="query"))
    RUNTIME.metrics.serve(options.metrics_port)
    if not options.standalone:
        await _fall_back_without_peering_object(settings, options)
    if options.webhook_port > 0:
        api = _reconciler().api
        try:
            RUNTIME.webhook = await start_alert_webhook(
                port=options.webhook_port, token=os.environ.get(TOKEN_ENV, ""),
                get_rollout=api.get_rollout, patch_annotation=api.set_annotation)
        except OSError as error:
            log.error("webhook port %d unavailable (%s); alerts are not received. Pick a free --webhook-port.",
                      options.webhook_port, error)


async def _fall_back_without_peering_object(settings: kopf.OperatorSettings, options: OperatorOptions) -> None:
    """kopf with mandatory peering does nothing at all, and says so only at DEBUG, when its
    KopfPeering object is missing (only the Helm chart creates it). Run without peering then,
    and say loudly what is missing and the two ways out."""
    api = _reconciler().api
    missing = []
    for path in peering_object_paths(settings.peering.name, options.namespaces, settings.peering.clusterwide):
        try:
            items = await api.list(path, field_selector=f"metadata.name={settings.peering.name}")
            if not any((item.get("metadata") or {}).get("name") == settings.peering.name for item in items):
                missing.append(path)
        except kube.KubeError as error:
            if error.status != 404:  # 404: kopf's peering CRDs are not even installed
                log.info("cannot tell whether peering object %s exists (%s); keeping peering on",
                         settings.peering.name, error)
                return
            missing.append(path)
    if missing:
        log.warning(missing_peering_message(settings.peering.name, options.namespaces, settings.peering.clusterwide))
        settings.peering.standalone = True
        settings.peering.mandatory = False


def peering_object_paths(name: str, namespaces: list[str], clusterwide: bool) -> list[str]:
    """Where kopf looks for its peering object: cluster-wide, or one per watched namespace."""
    if clusterwide or not namespaces:
        return ["/apis/kopf.dev/v1/clusterkopfpeerings"]
    return [f"/apis/kopf.dev/v1/namespaces/{namespace}/kopfpeerings" for namespace in namespaces]


def missing_peering_message(name: str, namespaces: list[str], clusterwide: bool) -> str:
    where = ("ClusterKopfPeering " + name if clusterwide or not namespaces
             else f"KopfPeering {name} in namespace(s) {', '.join(namespaces)}")
    return (f"{where} does not exist (the Helm chart creates it): running WITHOUT peering, so run only one "
            "replica of this operator. To run several replicas safely, create it (kopf.dev/v1, as "
            "deploy/helm/asr-rollout/templates/peering.yaml renders it, with the CRDs in "
            "deploy/helm/asr-rollout/crds/kopf-peerings.yaml); to say one replica is intended, pass --standalone.")


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    if RUNTIME.webhook is not None:
        await RUNTIME.webhook.cleanup()
    if RUNTIME.reconciler is not None:
        await RUNTIME.reconciler.api.close()


@kopf.on.login()
def login(**_: Any) -> kopf.ConnectionInfo | None:
    """As kubectl logs in (the `kubernetes` client: exec plugins, token files, client certs):
    in a pod the service account, elsewhere KUBECONFIG (or ~/.kube/config). kopf calls this
    again after a 401, so an expired exec-plugin token is fetched anew."""
    info = kube.login_info()
    RUNTIME.connection = info
    return info


@kopf.on.event(kube.GROUP, kube.VERSION, kube.PLURAL)
async def poke(namespace: str | None, name: str, meta: Any, **_: Any) -> None:
    """Wake the rollout's daemon on a spec change or a control annotation, not on our own
    status writes (which would only double the work). Async: kopf runs a sync handler in a
    worker thread, and asyncio.Event is not thread-safe."""
    key = (namespace or "", name)
    generation = meta.get("generation")
    controls = any(k.startswith(ANNOTATION_PREFIX) for k in (meta.get("annotations") or {}))
    changed = RUNTIME.seen_generation.get(key) != generation
    RUNTIME.seen_generation[key] = generation
    wake = RUNTIME.wakeups.get(key)
    if wake is not None and (controls or changed):
        wake.set()


# On deletion kopf first sets `stopped` and waits `cancellation_backoff` for the daemon to return
# (it does, from its sleep or after the tick in flight); only then does it cancel it, which kopf
# logs as "is cancelled. Will escalate." at WARNING.
@kopf.daemon(kube.GROUP, kube.VERSION, kube.PLURAL, cancellation_backoff=15.0, cancellation_timeout=5.0)
async def rollout_daemon(stopped: kopf.DaemonStopped, namespace: str | None, name: str, **_: Any) -> None:
    namespace = namespace or ""  # the resource is namespaced: kopf always passes one
    key = (namespace, name)
    wake = RUNTIME.wakeups.setdefault(key, asyncio.Event())
    reconciler = _reconciler()
    failures, last_error = 0, ""
    try:
        while not stopped:
            wake.clear()
            try:
                requeue = await reconciler.settle(namespace, name)
                delay = IDLE_TICK_SECONDS if requeue is None else min(max(requeue, 0.05), IDLE_TICK_SECONDS)
                if failures:
                    log.info("%s/%s: reconciles again after %d failed attempt(s)", namespace, name, failures)
                failures, last_error = 0, ""
            except Exception as error:  # one rollout's trouble must not stop the others
                RUNTIME.metrics.error(namespace, name)
                failures += 1
                delay = error_backoff_seconds(failures)
                # The same trouble again is news only at INFO; its condition and Event say it once.
                level = logging.WARNING if str(error) != last_error else logging.INFO
                log.log(level, "%s/%s: reconcile failed (attempt %d, next in %.0fs): %s", namespace, name,
                        failures, delay, error, exc_info=RUNTIME.options.verbose)
                last_error = str(error)
            due = asyncio.get_running_loop().time() + delay
            if not await _sleep(stopped, wake, delay):
                RUNTIME.metrics.tick_lag.observe(max(0.0, asyncio.get_running_loop().time() - due))
    finally:
        reconciler.forget(namespace, name)
        RUNTIME.metrics.forget(namespace, name)
        RUNTIME.wakeups.pop(key, None)
        RUNTIME.seen_generation.pop(key, None)


async def _sleep(stopped: kopf.DaemonStopped, wake: asyncio.Event, seconds: float) -> bool:
    """Sleep until the time is up (False), or until woken or stopped (True)."""
    async def until_stopped() -> None:
        await stopped.wait()

    waiters = [asyncio.ensure_future(until_stopped()), asyncio.ensure_future(wake.wait())]
    try:
        done, _ = await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        return bool(done)
    finally:
        for waiter in waiters:
            waiter.cancel()
