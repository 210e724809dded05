"""Alertmanager webhook receiver: firing alerts become the `asr.rollout.dev/alert` annotation.

The receiver never rolls anything back by itself (docs/contracts.md, "Alert-driven rollback"):
for each *firing* alert whose labels name a rollout (`namespace` + `rollout`), it writes the
annotation `asr.rollout.dev/alert` = `{"alertname", "fingerprint", "startsAt", "summary"}` on
that ASRModelRollout. The state machine consumes it like the manual control annotations.
Because it only writes an annotation through the API, every operator replica can serve it,
including the ones kopf peering keeps paused: the Service may route to any of them.

How the operator process starts it (`handlers.startup`)::

    api = KubeApi(...)                                           # asr_operator.kube
    runner = await start_alert_webhook(
        port=options.webhook_port,                               # --webhook-port, 8081
        token=os.environ.get("ASR_ALERT_WEBHOOK_TOKEN", ""),
        get_rollout=api.get_rollout,                             # (ns, name) -> dict | None
        patch_annotation=api.set_annotation,                     # (ns, name, key, value) -> None
    )
    ...
    await runner.cleanup()                                       # on shutdown

Start it always, also without a token: `GET /healthz` then still answers (the chart's probes
use it) and `POST /alerts` answers 503 saying that no token is configured.

Endpoints:
    POST /alerts   Alertmanager webhook payload (version 4), `Authorization: Bearer <token>`.
                   200 with one result per alert; 401 bad/missing token; 400 malformed payload;
                   502 when the Kubernetes API call fails (Alertmanager retries on 5xx).
    GET  /healthz  200 "ok".

Idempotency: Alertmanager re-sends a firing alert every `repeat_interval` and on every group
change. An alert whose (fingerprint, startsAt) already sits in the annotation, in
`status.lastAlert` or among the alerts the state machine remembers (`status.alertsSeen`) is not
written again. A new firing episode of the same alert (same fingerprint, new startsAt, e.g. after
the next promotion) is a new event and is written. Of several firing alerts for one rollout, the
earliest-starting one not seen yet is written (one annotation holds one alert; the next goes out
after the operator consumed it, on Alertmanager's next notification).

The alert's `track` label (`canary` or `stable`, set by the chart's rules) goes into the
annotation as `track`; the state machine acts by it (docs/analysis.md, "How the operator judges").
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web

logger = logging.getLogger(__name__)

ALERT_ANNOTATION = "asr.rollout.dev/alert"
TOKEN_ENV = "ASR_ALERT_WEBHOOK_TOKEN"

# The labels an alert must carry to name a rollout (the PrometheusRule in the chart sets them).
NAMESPACE_LABEL = "namespace"
ROLLOUT_LABEL = "rollout"
TRACK_LABEL = "track"  # canary | stable: which track the alert is about (absent: either)

# Kubernetes object names: a namespace is a DNS label, a custom resource name a DNS subdomain.
# Checked before any API call so that label values never reach a URL path unvalidated.
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")

GetRollout = Callable[[str, str], Awaitable[Mapping[str, Any] | None]]
"""(namespace, name) -> the ASRModelRollout object, or None when it does not exist."""

PatchAnnotation = Callable[[str, str, str, str], Awaitable[None]]
"""(namespace, name, annotation key, value) -> None; sets one annotation (a metadata patch)."""


class PayloadError(ValueError):
    """The request body is not an Alertmanager webhook payload; the message says what is wrong."""


@dataclass(frozen=True)
class Alert:
    """One alert of an Alertmanager webhook payload (the fields this receiver uses)."""

    status: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    starts_at: str
    fingerprint: str

    @property
    def alertname(self) -> str:
        return self.labels.get("alertname", "")

    @property
    def summary(self) -> str:
        return self.annotations.get("summary") or self.annotations.get("description") or ""


@dataclass(frozen=True)
class Target:
    """The firing alerts that name one rollout, earliest first: the receiver annotates the first
    one the rollout has not seen yet."""

    namespace: str
    rollout: str
    alerts: tuple[Alert, ...]


@dataclass(frozen=True)
class Outcome:
    """What happened to one alert; returned to Alertmanager and logged."""

    alertname: str
    fingerprint: str
    action: str  # "annotated" or "ignored"
    reason: str
    namespace: str = ""
    rollout: str = ""

    def as_dict(self) -> dict[str, str]:
        return {
            "alertname": self.alertname,
            "fingerprint": self.fingerprint,
            "namespace": self.namespace,
            "rollout": self.rollout,
            "action": self.action,
            "reason": self.reason,
        }


# --- pure decisions -----------------------------------------------------------------------


def parse_payload(body: Any) -> list[Alert]:
    """The alerts of an Alertmanager webhook payload; PayloadError says what is malformed."""
    if not isinstance(body, Mapping):
        raise PayloadError("the body must be a JSON object (an Alertmanager webhook payload)")
    raw_alerts = body.get("alerts")
    if not isinstance(raw_alerts, list):
        raise PayloadError("the payload has no 'alerts' list: is this an Alertmanager webhook payload?")
    alerts = []
    for index, raw in enumerate(raw_alerts):
        where = f"alerts[{index}]"
        if not isinstance(raw, Mapping):
            raise PayloadError(f"{where} must be an object")
        status = raw.get("status")
        if status not in ("firing", "resolved"):
            raise PayloadError(f"{where}.status must be 'firing' or 'resolved', got {status!r}")
        labels = _string_map(raw.get("labels", {}), f"{where}.labels")
        annotations = _string_map(raw.get("annotations", {}), f"{where}.annotations")
        fingerprint = raw.get("fingerprint")
        if not isinstance(fingerprint, str) or not fingerprint:
            raise PayloadError(f"{where}.fingerprint must be a non-empty string (Alertmanager sets it)")
        starts_at = raw.get("startsAt", "")
        if not isinstance(starts_at, str):
            raise PayloadError(f"{where}.startsAt must be an RFC3339 string")
        alerts.append(Alert(status, labels, annotations, starts_at, fingerprint))
    return alerts


def _string_map(value: Any, where: str) -> dict[str, str]:
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise PayloadError(f"{where} must be an object of string values")
    return dict(value)


def choose_targets(alerts: Sequence[Alert]) -> tuple[list[Target], list[Outcome]]:
    """Group the firing alerts by the rollout they name; report the others as ignored.

    One annotation holds one alert, so for a rollout named by several firing alerts the
    earliest-starting one not seen yet is chosen (the first cause) once the rollout is read.
    """
    ignored: list[Outcome] = []
    by_rollout: dict[tuple[str, str], list[Alert]] = {}
    for alert in alerts:
        namespace = alert.labels.get(NAMESPACE_LABEL, "")
        rollout = alert.labels.get(ROLLOUT_LABEL, "")
        if alert.status != "firing":
            ignored.append(_ignored(alert, "resolved alert", namespace, rollout))
        elif not namespace or not rollout:
            ignored.append(_ignored(alert, "labels do not name a rollout (need 'namespace' and 'rollout')"))
        elif not _DNS_LABEL.match(namespace) or not _DNS_SUBDOMAIN.match(rollout):
            ignored.append(_ignored(alert, "'namespace' or 'rollout' label is not a valid object name",
                                    namespace, rollout))
        else:
            by_rollout.setdefault((namespace, rollout), []).append(alert)

    targets = [Target(namespace, rollout, tuple(sorted(candidates, key=lambda a: (a.starts_at, a.fingerprint))))
               for (namespace, rollout), candidates in by_rollout.items()]
    return targets, ignored


def annotation_value(alert: Alert) -> str:
    """The `asr.rollout.dev/alert` annotation value for an alert (docs/contracts.md)."""
    value = {
        "alertname": alert.alertname,
        "fingerprint": alert.fingerprint,
        "startsAt": alert.starts_at,
        "summary": alert.summary,
    }
    if alert.labels.get(TRACK_LABEL):
        value["track"] = alert.labels[TRACK_LABEL]
    return json.dumps(value, sort_keys=True)


def already_seen(rollout_obj: Mapping[str, Any], alert: Alert) -> bool:
    """Whether this firing episode already reached the rollout (pending annotation or status)."""
    annotations = (rollout_obj.get("metadata") or {}).get("annotations") or {}
    status = rollout_obj.get("status") or {}
    recorded: list[Any] = [status.get("lastAlert"), *(status.get("alertsSeen") or [])]
    pending = annotations.get(ALERT_ANNOTATION)
    if pending:
        try:
            recorded.append(json.loads(pending))
        except ValueError:
            pass  # a broken pending annotation is overwritten by a good one
    return any(
        isinstance(seen, Mapping)
        and seen.get("fingerprint") == alert.fingerprint
        and seen.get("startsAt", "") == alert.starts_at
        for seen in recorded
    )


def token_matches(authorization: str | None, token: str) -> bool:
    """Whether an Authorization header carries the bearer token (constant-time compare)."""
    if not token or not authorization:
        return False
    scheme, _, presented = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(presented.strip().encode(), token.encode())


def _ignored(alert: Alert, reason: str, namespace: str = "", rollout: str = "") -> Outcome:
    return Outcome(alert.alertname, alert.fingerprint, "ignored", reason, namespace, rollout)


# --- I/O: the aiohttp app ------------------------------------------------------------------

_TOKEN_KEY = web.AppKey("token", str)
_GET_KEY: web.AppKey[GetRollout] = web.AppKey("get_rollout")
_PATCH_KEY: web.AppKey[PatchAnnotation] = web.AppKey("patch_annotation")


def create_app(token: str, get_rollout: GetRollout, patch_annotation: PatchAnnotation) -> web.Application:
    """The receiver as an aiohttp app; the Kubernetes calls are the two callables given."""
    app = web.Application()
    app[_TOKEN_KEY] = token
    app[_GET_KEY] = get_rollout
    app[_PATCH_KEY] = patch_annotation
    app.router.add_post("/alerts", _handle_alerts)
    app.router.add_get("/healthz", _handle_healthz)
    return app


async def start_alert_webhook(
    port: int,
    token: str,
    get_rollout: GetRollout,
    patch_annotation: PatchAnnotation,
    host: str = "0.0.0.0",
) -> web.AppRunner:
    """Serve the receiver on host:port; returns the runner (call `cleanup()` to stop)."""
    if not token:
        logger.warning("Alert webhook runs without a token: POST /alerts answers 503 until %s is set.",
                       TOKEN_ENV)
    runner = web.AppRunner(create_app(token, get_rollout, patch_annotation), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


async def _handle_healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def _handle_alerts(request: web.Request) -> web.Response:
    token = request.app[_TOKEN_KEY]
    if not token:
        logger.warning("Alert webhook refused a request from %s: no token configured (%s).", request.remote, TOKEN_ENV)
        return _error(503, f"the alert webhook has no token configured: set {TOKEN_ENV} "
                           "(the chart's alert webhook Secret) and restart the operator")
    if not token_matches(request.headers.get("Authorization"), token):
        # Alertmanager retries only on its next group_interval: say it here, not only in its log.
        logger.warning("Alert webhook refused a request from %s: missing or wrong bearer token (the "
                       "Alertmanager receiver's credentials must match the alert webhook Secret).",
                       request.remote)
        return _error(401, "missing or wrong bearer token: send 'Authorization: Bearer <token>' "
                           "with the token from the alert webhook Secret",
                      headers={"WWW-Authenticate": 'Bearer realm="asr-rollout alerts"'})
    try:
        alerts = parse_payload(await request.json())
    except ValueError as exc:  # PayloadError and json.JSONDecodeError
        return _error(400, f"not an Alertmanager webhook payload: {exc}")

    targets, outcomes = choose_targets(alerts)
    try:
        for applied in await asyncio.gather(*(
            _apply(target, request.app[_GET_KEY], request.app[_PATCH_KEY]) for target in targets
        )):
            outcomes += applied
    except Exception as exc:  # the API failed: 5xx makes Alertmanager retry the whole batch
        logger.exception("Alert webhook could not reach the Kubernetes API.")
        return _error(502, f"Kubernetes API call failed, retry later: {exc}")
    for outcome in outcomes:
        logger.info("Alert %s (%s) for %s/%s: %s, %s.", outcome.alertname, outcome.fingerprint,
                    outcome.namespace, outcome.rollout, outcome.action, outcome.reason)
    return web.json_response({"results": [outcome.as_dict() for outcome in outcomes]})


async def _apply(target: Target, get_rollout: GetRollout, patch_annotation: PatchAnnotation) -> list[Outcome]:
    rollout_obj = await get_rollout(target.namespace, target.rollout)
    if rollout_obj is None:
        return [_ignored(alert, "unknown rollout", target.namespace, target.rollout) for alert in target.alerts]
    outcomes: list[Outcome] = []
    chosen: Alert | None = None
    for alert in target.alerts:
        if already_seen(rollout_obj, alert):
            outcomes.append(_ignored(alert, "repeat of an alert already recorded", target.namespace, target.rollout))
        elif chosen is None:
            chosen = alert
            await patch_annotation(target.namespace, target.rollout, ALERT_ANNOTATION, annotation_value(alert))
            outcomes.append(Outcome(alert.alertname, alert.fingerprint, "annotated", "firing alert names this rollout",
                                    target.namespace, target.rollout))
        else:
            outcomes.append(_ignored(alert, f"alert {chosen.fingerprint} for the same rollout was chosen; this one "
                                            "goes out on a later notification", target.namespace, target.rollout))
    return outcomes


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.json_response({"error": {"code": status, "message": message}}, status=status, headers=headers)
