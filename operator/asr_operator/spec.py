"""Parse and check an ASRModelRollout `spec` into frozen dataclasses.

The CRD schema rejects malformed input on a real API server; this module checks it again (the
emulator and old servers validate nothing) and adds the checks a schema cannot express. Every
error names the field path and says what to write instead.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from . import pod_template as pods
from .analysis import golden, queries, shadow_queries
from .durations import parse_duration

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
# A model version goes into label values (Kubernetes objects and Prometheus series).
_LABEL_VALUE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


class InvalidSpec(ValueError):
    """The spec is wrong; `problems` lists each one as `field.path: what is wrong; what to do`."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))


@dataclass(frozen=True)
class ModelRef:
    """A model version: what a track's ConfigMap points the server at."""

    name: str
    version: str
    path: str
    sha256: str | None = None
    vad_path: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)

    def to_status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "version": self.version, "path": self.path}
        if self.sha256:
            out["sha256"] = self.sha256
        if self.vad_path:
            out["vadPath"] = self.vad_path
        if self.options:
            out["options"] = dict(self.options)
        return out

    @classmethod
    def from_status(cls, data: Mapping[str, Any] | None) -> ModelRef | None:
        if not data or not data.get("version"):
            return None
        return cls(
            name=str(data.get("name", "")),
            version=str(data["version"]),
            path=str(data.get("path", "")),
            sha256=data.get("sha256") or None,
            vad_path=data.get("vadPath") or None,
            options=dict(data.get("options") or {}),
        )

    def same_as(self, other: ModelRef | None) -> bool:
        return other is not None and self.to_status() == other.to_status()


DEFAULT_STARTUP_TIMEOUT = 900.0  # 15m: a large model on a cold node can take minutes to load
DEFAULT_PRE_STOP_DELAY = 10.0    # endpoints, kube-proxy and gateways forget a terminating pod
DEFAULT_DRAIN_TIMEOUT = 30.0     # the server's own --drain-timeout default


@dataclass(frozen=True)
class ServerSpec:
    image: str
    replicas: int
    resources: Mapping[str, Any]
    env: tuple[Mapping[str, Any], ...]
    pod_template: Mapping[str, Any] = field(default_factory=dict)
    accelerator: str = pods.DEFAULT_ACCELERATOR
    startup_timeout: float = DEFAULT_STARTUP_TIMEOUT
    pre_stop_delay: float = DEFAULT_PRE_STOP_DELAY
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT
    max_unavailable: int | str = 1  # each track's PodDisruptionBudget


# PodTemplate's fields besides image, resources, env and modelVolume: status key -> (attribute,
# default). Defaults are left out of status, so an operator that adds a field starts no canary.
_TEMPLATE_OPTIONAL: dict[str, tuple[str, Any]] = {
    "podTemplate": ("pod", {}),
    "acceleratorResource": ("accelerator", pods.DEFAULT_ACCELERATOR),
    "startupTimeoutSeconds": ("startup_timeout", DEFAULT_STARTUP_TIMEOUT),
    "preStopDelaySeconds": ("pre_stop_delay", DEFAULT_PRE_STOP_DELAY),
    "drainTimeoutSeconds": ("drain_timeout", DEFAULT_DRAIN_TIMEOUT),
}


@dataclass(frozen=True)
class PodTemplate:
    """What a track's pods run besides the model (the rest of the pod template). With the model
    it makes the revision: a change of either is canaried and judged, never applied unjudged."""

    image: str
    resources: Mapping[str, Any] = field(default_factory=dict)
    env: tuple[Mapping[str, Any], ...] = ()
    model_volume: Mapping[str, Any] = field(default_factory=dict)
    pod: Mapping[str, Any] = field(default_factory=dict)  # spec.server.podTemplate (checked)
    accelerator: str = pods.DEFAULT_ACCELERATOR
    startup_timeout: float = DEFAULT_STARTUP_TIMEOUT
    pre_stop_delay: float = DEFAULT_PRE_STOP_DELAY
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT

    @property
    def uses_accelerator(self) -> bool:
        """The server container requests the accelerator resource: the server runs on `cuda`."""
        return pods.requests_accelerator(self.resources, self.accelerator)

    def to_status(self) -> dict[str, Any]:
        out = {"image": self.image, "resources": dict(self.resources), "env": [dict(item) for item in self.env],
               "modelVolume": dict(self.model_volume)}
        for key, (attribute, default) in _TEMPLATE_OPTIONAL.items():
            value = getattr(self, attribute)
            if value != default:
                out[key] = copy.deepcopy(dict(value)) if isinstance(value, Mapping) else value
        return out

    @classmethod
    def from_status(cls, data: Mapping[str, Any] | None) -> PodTemplate | None:
        if not data or not data.get("image"):
            return None
        def value(key: str) -> Any:
            found = data.get(key)
            return _TEMPLATE_OPTIONAL[key][1] if found is None else found
        return cls(image=str(data["image"]), resources=dict(data.get("resources") or {}),
                   env=tuple(dict(item) for item in data.get("env") or []),
                   model_volume=dict(data.get("modelVolume") or {}),
                   pod=copy.deepcopy(dict(value("podTemplate"))), accelerator=str(value("acceleratorResource")),
                   startup_timeout=float(value("startupTimeoutSeconds")),
                   pre_stop_delay=float(value("preStopDelaySeconds")), drain_timeout=float(value("drainTimeoutSeconds")))

    def same_as(self, other: PodTemplate | None) -> bool:
        return other is not None and self.to_status() == other.to_status()

    def changes_from(self, old: PodTemplate | None) -> list[str]:
        """What differs from `old`, for people: `image a -> b`, `resources`, `env`, `modelVolume`,
        `podTemplate.spec.tolerations`, `startupTimeout`, ..."""
        if old is None:
            return []
        changed = [f"image {old.image} -> {self.image}"] if old.image != self.image else []
        mine, theirs = self.to_status(), old.to_status()
        changed += [key for key in ("resources", "env", "modelVolume") if mine[key] != theirs[key]]
        for part in ("metadata", "spec"):
            new_part, old_part = self.pod.get(part) or {}, old.pod.get(part) or {}
            changed += [f"podTemplate.{part}.{key}" for key in sorted(set(new_part) | set(old_part))
                        if new_part.get(key) != old_part.get(key)]
        changed += [key.removesuffix("Seconds") for key in list(_TEMPLATE_OPTIONAL)[1:]
                    if mine.get(key) != theirs.get(key)]
        return changed


@dataclass(frozen=True)
class TrafficSpec:
    provider: str  # "gatewayAPI" | "replicaRatio"
    http_route: str | None = None


@dataclass(frozen=True)
class Step:
    set_weight: int | None = None
    pause: bool = False
    pause_seconds: float | None = None  # None with pause=True: wait for the promote annotation
    # A shadow stage (weight 0): stable pods copy this percent of their requests to the canary
    # for shadow_seconds, and the stage's analysis must pass before the first weight.
    shadow_percent: int | None = None
    shadow_seconds: float | None = None

    @property
    def is_manual_pause(self) -> bool:
        return self.pause and self.pause_seconds is None

    @property
    def is_shadow(self) -> bool:
        return self.shadow_percent is not None


@dataclass(frozen=True)
class StrategySpec:
    steps: tuple[Step, ...]
    progress_deadline_seconds: float
    stable_update: str = "hot"  # hot | rolling | auto: how stable pods take a new version (STABLE_UPDATES)
    canary_replicas: int | None = None  # gatewayAPI: a fixed canary size instead of one that follows the weight
    dynamic_stable_scale: bool = False  # gatewayAPI: the stable track also follows its traffic share


# hot: the stable ConfigMap changes and the pods hot-reload (two versions in memory for a moment);
# rolling: the stable pod template also carries the model revision, so Kubernetes replaces the
# pods (restarts, never two models on one GPU); auto: hot where every stable pod reports room to
# load beside (asr_model_can_load_beside), else rolling.
STABLE_UPDATES = ("hot", "rolling", "auto")


@dataclass(frozen=True)
class MetricSpec:
    name: str  # display name in status: the metric name, `#N` appended for repeats
    kind: str  # error-rate | p99-latency-seconds | real-time-factor | custom
    max: float | None = None
    min: float | None = None
    query: str | None = None
    max_increase: float | None = None  # allowed rise over the stable version (canary - stable)
    max_ratio: float | None = None     # built-in traffic metrics: allowed canary / stable


@dataclass(frozen=True)
class AnalysisSpec:
    prometheus_address: str
    interval_seconds: float
    failure_limit: int
    inconclusive_limit: int
    error_limit: int
    min_requests: int
    window_seconds: float
    metrics: tuple[MetricSpec, ...]
    # What reaching inconclusiveLimit / errorLimit does: "pause" (the canary holds weight 0
    # until a person resumes it) or "rollback".
    on_inconclusive: str = "pause"
    on_error: str = "pause"


@dataclass(frozen=True)
class RollbackSpec:
    on_alert: bool
    post_promotion_window_seconds: float


@dataclass(frozen=True)
class RolloutSpec:
    model: ModelRef
    model_volume: Mapping[str, Any]
    server: ServerSpec
    traffic: TrafficSpec
    strategy: StrategySpec
    analysis: AnalysisSpec | None
    rollback: RollbackSpec
    fingerprint: str  # digest of the whole spec: "the spec changed" means this changed

    @property
    def template(self) -> PodTemplate:
        """The pod template the spec asks for (replicas are not part of it: scaling is no revision)."""
        server = self.server
        return PodTemplate(image=server.image, resources=server.resources, env=server.env,
                           model_volume=self.model_volume, pod=server.pod_template, accelerator=server.accelerator,
                           startup_timeout=server.startup_timeout, pre_stop_delay=server.pre_stop_delay,
                           drain_timeout=server.drain_timeout)


class _Checker:
    """Collects problems instead of stopping at the first, so one fix round is enough."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def fail(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}")

    def mapping(self, value: Any, path: str, required: bool = True) -> Mapping[str, Any]:
        if value is None:
            if required:
                self.fail(path, "is required")
            return {}
        if not isinstance(value, Mapping):
            self.fail(path, f"must be an object, got {type(value).__name__}")
            return {}
        return value

    def string(self, value: Any, path: str, pattern: re.Pattern[str] | None = None,
               hint: str = "", required: bool = True) -> str | None:
        if value is None:
            if required:
                self.fail(path, "is required")
            return None
        if not isinstance(value, str) or not value:
            self.fail(path, f"must be a non-empty string, got {value!r}")
            return None
        if pattern is not None and not pattern.match(value):
            self.fail(path, f"{value!r} is not valid; {hint}")
            return None
        return value

    def integer(self, value: Any, path: str, default: int, minimum: int,
                maximum: int | None = None) -> int:
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(path, f"must be an integer, got {value!r}")
            return default
        if value < minimum:
            self.fail(path, f"{value} is under {minimum}; use {minimum} or more")
            return default
        if maximum is not None and value > maximum:
            self.fail(path, f"{value} is over {maximum}; use {minimum}..{maximum}")
            return default
        return value

    def number(self, value: Any, path: str) -> float | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.fail(path, f"must be a number, got {value!r}")
            return None
        return float(value)

    def duration(self, value: Any, path: str, default: str, minimum_seconds: float = 0.0) -> float:
        text = default if value is None else value
        try:
            seconds = parse_duration(text)
        except ValueError as error:
            self.fail(path, str(error))
            return parse_duration(default)
        if seconds < minimum_seconds:
            self.fail(path, f"{text!r} is too short; use at least {minimum_seconds:g}s")
            return parse_duration(default)
        return seconds

    def model_path(self, value: Any, path: str, required: bool) -> str | None:
        text = self.string(value, path, required=required)
        if text is None:
            return None
        if text.startswith("/") or "\\" in text or "\x00" in text:
            self.fail(path, f"{text!r} must be relative to the model volume (no leading /, no backslash)")
            return None
        if any(part == ".." for part in text.split("/")):
            self.fail(path, f"{text!r} leaves the model volume (`..`); name a directory inside it")
            return None
        return text


def parse_spec(raw: Mapping[str, Any] | None) -> RolloutSpec:
    """A checked RolloutSpec, or InvalidSpec listing every problem found."""
    check = _Checker()
    spec = check.mapping(raw, "spec")
    model = _parse_model(check, spec.get("model"))
    volume = check.mapping(spec.get("modelVolume"), "spec.modelVolume")
    if "modelVolume" in spec and isinstance(spec.get("modelVolume"), Mapping) and not volume:
        check.fail("spec.modelVolume", "is empty; give a volume source, e.g. persistentVolumeClaim: {claimName: asr-models}")
    server = _parse_server(check, spec.get("server"))
    traffic = _parse_traffic(check, spec.get("traffic"))
    strategy = _parse_strategy(check, spec.get("strategy"))
    analysis = _parse_analysis(check, spec.get("analysis"))
    rollback = _parse_rollback(check, spec.get("rollback"))

    automatic = not any(step.is_manual_pause for step in strategy.steps)
    if automatic and (analysis is None or not analysis.metrics):
        check.fail(
            "spec.analysis.metrics",
            "an automatic rollout (no `pause: {}` step) needs at least one analysis metric; "
            "add e.g. {name: error-rate, max: 0.01} or a manual `pause: {}` step",
        )
    if analysis is not None and analysis.metrics and not any((step.set_weight or 0) > 0 for step in strategy.steps):
        check.fail("spec.strategy.steps", "no step sends traffic to the canary (setWeight above 0), so the "
                                          "analysis could never measure it; add e.g. {setWeight: 10}")
    _check_shadow_metrics(check, strategy, analysis)
    if traffic is not None and traffic.provider == "replicaRatio":
        for key in ("canaryReplicas", "dynamicStableScale"):
            raw_strategy = spec.get("strategy")
            if isinstance(raw_strategy, Mapping) and raw_strategy.get(key) not in (None, False):
                check.fail(f"spec.strategy.{key}", "works with traffic.gatewayAPI only: under replicaRatio the "
                                                   "pod counts are the traffic split, so both tracks follow the weight")
    if check.problems or model is None or server is None or traffic is None:
        raise InvalidSpec(check.problems or ["spec: could not be read"])
    return RolloutSpec(
        model=model,
        model_volume=dict(volume),
        server=server,
        traffic=traffic,
        strategy=strategy,
        analysis=analysis,
        rollback=rollback,
        fingerprint=spec_fingerprint(spec),
    )


def spec_fingerprint(raw: Mapping[str, Any] | None) -> str:
    canonical = json.dumps(raw or {}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _parse_model(check: _Checker, raw: Any) -> ModelRef | None:
    model = check.mapping(raw, "spec.model")
    if not model:
        return None
    name = check.string(model.get("name"), "spec.model.name", _DNS_LABEL,
                        "use lowercase letters, digits and '-', at most 63 characters")
    version = check.string(model.get("version"), "spec.model.version", _LABEL_VALUE,
                           "use letters, digits, '.', '_', '-', at most 63 characters, "
                           "starting and ending with a letter or digit")
    path = check.model_path(model.get("path"), "spec.model.path", required=True)
    vad_path = check.model_path(model.get("vadPath"), "spec.model.vadPath", required=False)
    sha256 = check.string(model.get("sha256"), "spec.model.sha256", _SHA256,
                          "write the 64 lowercase hex digits of the MANIFEST.sha256 digest",
                          required=False)
    options = check.mapping(model.get("options"), "spec.model.options", required=False)
    if name is None or version is None or path is None:
        return None
    return ModelRef(name=name, version=version, path=path, sha256=sha256, vad_path=vad_path,
                    options=dict(options))


def _parse_server(check: _Checker, raw: Any) -> ServerSpec | None:
    server = check.mapping(raw, "spec.server")
    if not server:
        return None
    image = check.string(server.get("image"), "spec.server.image")
    replicas = check.integer(server.get("replicas"), "spec.server.replicas", default=2, minimum=1)
    resources = check.mapping(server.get("resources"), "spec.server.resources", required=False)
    accelerator = check.string(server.get("acceleratorResource"), "spec.server.acceleratorResource",
                               re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[a-z0-9]([-a-z0-9_.]*[a-z0-9])?$"),
                               "name an extended resource, e.g. nvidia.com/gpu or amd.com/gpu",
                               required=False) or pods.DEFAULT_ACCELERATOR
    gpu = pods.requests_accelerator(resources, accelerator)
    env_raw = server.get("env") or []
    env: list[Mapping[str, Any]] = []
    if not isinstance(env_raw, list):
        check.fail("spec.server.env", "must be a list of {name, value} objects")
    else:
        for index, item in enumerate(env_raw):
            if not isinstance(item, Mapping) or not isinstance(item.get("name"), str):
                check.fail(f"spec.server.env[{index}]", "must be an object with a `name`")
            elif item["name"] in pods.OPERATOR_ENV:
                check.fail(f"spec.server.env[{index}].name", f"{item['name']} is the operator's: "
                                                             f"{pods.OPERATOR_ENV[item['name']]}; remove it")
            elif item["name"] == pods.DEVICE_ENV and gpu:
                check.fail(f"spec.server.env[{index}].name", f"{pods.DEVICE_ENV} is set by the operator to `cuda` "
                                                             f"when the pod requests {accelerator}; remove it")
            else:
                env.append(dict(item))
    pod_template = pods.check_pod_template(server.get("podTemplate"), "spec.server.podTemplate", check.fail)
    startup = check.duration(server.get("startupTimeout"), "spec.server.startupTimeout", "15m", 10.0)
    pre_stop = check.duration(server.get("preStopDelay"), "spec.server.preStopDelay", "10s")
    drain = check.duration(server.get("drainTimeout"), "spec.server.drainTimeout", "30s")
    budget = check.mapping(server.get("disruptionBudget"), "spec.server.disruptionBudget", required=False)
    max_unavailable: int | str = 1
    if budget.get("maxUnavailable") is not None:
        value = budget["maxUnavailable"]
        if isinstance(value, str) and re.fullmatch(r"(100|[1-9]?[0-9])%", value):
            max_unavailable = value
        elif isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            max_unavailable = value
        else:
            check.fail("spec.server.disruptionBudget.maxUnavailable",
                       f"{value!r} is neither a count (0 or more) nor a percentage like '25%'")
    if image is None:
        return None
    return ServerSpec(image=image, replicas=replicas, resources=dict(resources), env=tuple(env),
                      pod_template=pod_template, accelerator=accelerator, startup_timeout=startup,
                      pre_stop_delay=pre_stop, drain_timeout=drain, max_unavailable=max_unavailable)


def _parse_traffic(check: _Checker, raw: Any) -> TrafficSpec | None:
    traffic = check.mapping(raw, "spec.traffic")
    if not traffic:
        return None
    chosen = [key for key in ("gatewayAPI", "replicaRatio") if traffic.get(key) is not None]
    unknown = sorted(set(traffic) - {"gatewayAPI", "replicaRatio"})
    if unknown:
        check.fail("spec.traffic", f"unknown router {', '.join(unknown)}; use gatewayAPI or replicaRatio")
        return None
    if len(chosen) != 1:
        check.fail("spec.traffic", "set exactly one of gatewayAPI: {httpRoute: NAME} or replicaRatio: {}")
        return None
    if chosen[0] == "replicaRatio":
        check.mapping(traffic.get("replicaRatio"), "spec.traffic.replicaRatio")
        return TrafficSpec(provider="replicaRatio")
    gateway = check.mapping(traffic.get("gatewayAPI"), "spec.traffic.gatewayAPI")
    route = check.string(gateway.get("httpRoute"), "spec.traffic.gatewayAPI.httpRoute", _DNS_SUBDOMAIN,
                         "name an HTTPRoute in the rollout's namespace")
    return TrafficSpec(provider="gatewayAPI", http_route=route) if route else None


def _parse_strategy(check: _Checker, raw: Any) -> StrategySpec:
    strategy = check.mapping(raw, "spec.strategy")
    steps_raw = strategy.get("steps")
    steps: list[Step] = []
    if strategy and not isinstance(steps_raw, list):
        check.fail("spec.strategy.steps", "is required: a list like [{setWeight: 10}, {pause: {duration: 1m}}]")
    elif isinstance(steps_raw, list):
        if not steps_raw:
            check.fail("spec.strategy.steps", "is empty; add at least one step, e.g. {setWeight: 100}")
        for index, item in enumerate(steps_raw):
            path = f"spec.strategy.steps[{index}]"
            if not isinstance(item, Mapping) or len(item) != 1:
                check.fail(path, "must have exactly one key: setWeight, pause or shadow")
                continue
            (key, value), = item.items()
            if key == "shadow":
                shadow = _parse_shadow_step(check, value, f"{path}.shadow")
                if shadow is not None:
                    steps.append(shadow)
                if any(step.set_weight is not None for step in steps):
                    first = next(i for i, step in enumerate(steps) if step.set_weight is not None)
                    check.fail(f"{path}.shadow", f"a shadow stage runs at weight 0, before any user traffic; "
                                                 f"move it before the first setWeight (steps[{first}])")
            elif key == "setWeight":
                if isinstance(value, bool) or not isinstance(value, int):
                    check.fail(f"{path}.setWeight", f"must be an integer 0..100, got {value!r}")
                elif value > 100:
                    check.fail(f"{path}.setWeight", f"{value} is over 100; use 0..100")
                elif value < 0:
                    check.fail(f"{path}.setWeight", f"{value} is under 0; use 0..100")
                else:
                    steps.append(Step(set_weight=value))
            elif key == "pause":
                pause = check.mapping(value if value is not None else {}, f"{path}.pause")
                if pause.get("duration") is None:
                    steps.append(Step(pause=True))
                else:
                    seconds = check.duration(pause.get("duration"), f"{path}.pause.duration", "0s")
                    steps.append(Step(pause=True, pause_seconds=seconds))
            else:
                check.fail(path, f"unknown step {key!r}; use setWeight, pause or shadow")
    deadline = check.integer(strategy.get("progressDeadlineSeconds"),
                             "spec.strategy.progressDeadlineSeconds", default=600, minimum=1)
    stable_update = strategy.get("stableUpdate", "hot")
    if stable_update not in STABLE_UPDATES:
        check.fail("spec.strategy.stableUpdate", f"{stable_update!r} is not one of {', '.join(STABLE_UPDATES)}; hot "
                   "reloads the stable pods in place (room for two models needed), rolling lets Kubernetes "
                   "replace them, auto picks hot where every stable pod reports room")
        stable_update = "hot"
    canary_replicas = None
    if strategy.get("canaryReplicas") is not None:
        canary_replicas = check.integer(strategy.get("canaryReplicas"), "spec.strategy.canaryReplicas",
                                        default=1, minimum=1)
    dynamic = strategy.get("dynamicStableScale", False)
    if not isinstance(dynamic, bool):
        check.fail("spec.strategy.dynamicStableScale", f"must be true or false, got {dynamic!r}")
        dynamic = False
    return StrategySpec(steps=tuple(steps), progress_deadline_seconds=float(deadline),
                        stable_update=str(stable_update), canary_replicas=canary_replicas,
                        dynamic_stable_scale=dynamic)


def _parse_shadow_step(check: _Checker, raw: Any, path: str) -> Step | None:
    shadow = check.mapping(raw, path)
    if not shadow:
        if isinstance(raw, Mapping):
            check.fail(path, "needs percent and duration, e.g. {percent: 20, duration: 2m}")
        return None
    unknown = sorted(set(shadow) - {"percent", "duration"})
    if unknown:
        check.fail(path, f"unknown keys {', '.join(unknown)}; a shadow step takes percent and duration")
    if shadow.get("percent") is None:
        check.fail(f"{path}.percent", "is required: the share of stable's requests copied to the canary, 1..100")
        return None
    if shadow.get("duration") is None:
        check.fail(f"{path}.duration", "is required: how long the canary is judged on copies, e.g. 2m")
        return None
    before = len(check.problems)
    percent = check.integer(shadow.get("percent"), f"{path}.percent", default=0, minimum=1, maximum=100)
    seconds = check.duration(shadow.get("duration"), f"{path}.duration", "1s", 1.0)
    if len(check.problems) > before:
        return None
    return Step(shadow_percent=percent, shadow_seconds=seconds)


def _check_shadow_metrics(check: _Checker, strategy: StrategySpec, analysis: AnalysisSpec | None) -> None:
    """A shadow stage is judged only by the shadow metrics (user-traffic metrics have no
    requests at weight 0), and the shadow metrics only ever have data in a shadow stage."""
    has_stage = any(step.is_shadow for step in strategy.steps)
    metrics = analysis.metrics if analysis is not None else ()
    shadow_metrics = [metric.kind for metric in metrics if metric.kind in shadow_queries.SHADOW_METRICS]
    if has_stage and not shadow_metrics:
        check.fail("spec.analysis.metrics", "a shadow step needs at least one shadow metric to judge it; add e.g. "
                                            "{name: shadow-error-rate, max: 0.01} and {name: shadow-cer, max: 0.1}")
    if shadow_metrics and not has_stage:
        check.fail("spec.analysis.metrics", f"{', '.join(sorted(set(shadow_metrics)))} measure a shadow stage, and "
                                            "no step is one; add e.g. {shadow: {percent: 20, duration: 2m}} "
                                            "before the first setWeight, or remove the shadow metrics")


def _parse_analysis(check: _Checker, raw: Any) -> AnalysisSpec | None:
    if raw is None:
        return None
    analysis = check.mapping(raw, "spec.analysis")
    metrics_raw = analysis.get("metrics") or []
    metrics: list[MetricSpec] = []
    seen: dict[str, int] = {}
    if not isinstance(metrics_raw, list):
        check.fail("spec.analysis.metrics", "must be a list of {name, max|min} objects")
        metrics_raw = []
    for index, item in enumerate(metrics_raw):
        path = f"spec.analysis.metrics[{index}]"
        if not isinstance(item, Mapping):
            check.fail(path, "must be an object like {name: error-rate, max: 0.01}")
            continue
        metric = _parse_metric(check, item, path)
        if metric is None:
            continue
        seen[metric.name] = seen.get(metric.name, 0) + 1
        if seen[metric.name] > 1:
            metric = dataclasses.replace(metric, name=f"{metric.name}#{seen[metric.name]}")
        metrics.append(metric)

    prometheus = check.mapping(analysis.get("prometheus"), "spec.analysis.prometheus", required=bool(metrics))
    address = check.string(prometheus.get("address"), "spec.analysis.prometheus.address",
                           re.compile(r"^https?://[^\s/]+"), "write an http(s) URL, e.g. http://prometheus.monitoring:9090",
                           required=bool(metrics))
    return AnalysisSpec(
        prometheus_address=(address or "").rstrip("/"),
        interval_seconds=check.duration(analysis.get("interval"), "spec.analysis.interval", "30s", 0.1),
        failure_limit=check.integer(analysis.get("failureLimit"), "spec.analysis.failureLimit", 2, 1),
        inconclusive_limit=check.integer(analysis.get("inconclusiveLimit"), "spec.analysis.inconclusiveLimit", 3, 1),
        error_limit=check.integer(analysis.get("errorLimit"), "spec.analysis.errorLimit", 3, 1),
        min_requests=check.integer(analysis.get("minRequests"), "spec.analysis.minRequests", 20, 0),
        window_seconds=check.duration(analysis.get("window"), "spec.analysis.window", "1m", 1.0),
        metrics=tuple(metrics),
        on_inconclusive=_limit_action(check, analysis.get("onInconclusive"), "spec.analysis.onInconclusive"),
        on_error=_limit_action(check, analysis.get("onError"), "spec.analysis.onError"),
    )


LIMIT_ACTIONS = ("pause", "rollback")


def _limit_action(check: _Checker, value: Any, path: str) -> str:
    if value is None:
        return "pause"
    if value not in LIMIT_ACTIONS:
        check.fail(path, f"{value!r} is not one of {', '.join(LIMIT_ACTIONS)}; pause holds the canary at "
                         "weight 0 until promoted or retried, rollback rolls it back")
        return "pause"
    return str(value)


def _parse_metric(check: _Checker, item: Mapping[str, Any], path: str) -> MetricSpec | None:
    name = item.get("name")
    known = (*queries.BUILTIN_METRICS, *queries.RESOURCE_METRICS, *golden.GOLDEN_METRICS,
             *shadow_queries.SHADOW_METRICS, queries.CUSTOM_METRIC)
    if name in queries.PENDING_METRICS:
        check.fail(f"{path}.name", f"{name!r} is not implemented by this operator version yet; "
                                   f"remove it or use one of {', '.join(known)}")
        return None
    if name not in known:
        check.fail(f"{path}.name", f"unknown metric {name!r}; use one of {', '.join(known)}")
        return None
    maximum = check.number(item.get("max"), f"{path}.max")
    minimum = check.number(item.get("min"), f"{path}.min")
    if name == golden.GOLDEN_AGREEMENT and item.get("min") is None:
        check.fail(path, "golden-agreement needs min: the lowest share of golden clips on which "
                         "canary and stable must agree, e.g. {name: golden-agreement, min: 0.9}")
    elif all(item.get(key) is None for key in ("max", "min", "maxIncrease", "maxRatio")):
        check.fail(path, "needs a threshold: max and/or min, or a bound against the stable track: "
                         "maxIncrease (built-ins and golden-cer) or maxRatio (built-ins)")
    if maximum is not None and minimum is not None and minimum > maximum:
        check.fail(path, f"min {minimum:g} is over max {maximum:g}")
    query = item.get("query")
    if name == queries.CUSTOM_METRIC:
        text = check.string(query, f"{path}.query")
        if text is not None:
            for problem in queries.check_custom_template(text):
                check.fail(f"{path}.query", problem)
    elif query is not None:
        check.fail(f"{path}.query", f"only `custom` metrics take a query; {name} has a built-in one")
    relative_ok = (*queries.BUILTIN_METRICS, golden.GOLDEN_CER)
    max_increase = check.number(item.get("maxIncrease"), f"{path}.maxIncrease")
    if max_increase is not None and name not in relative_ok:
        check.fail(f"{path}.maxIncrease", f"{name} has no stable-track counterpart to compare with; maxIncrease "
                                          f"works for {', '.join(relative_ok)}; use max/min for {name}")
    if max_increase is not None and max_increase < 0:
        check.fail(f"{path}.maxIncrease", f"{max_increase:g} is under 0; write the largest allowed increase "
                                          "over stable in the metric's unit, e.g. 0.02")
    max_ratio = check.number(item.get("maxRatio"), f"{path}.maxRatio")
    if max_ratio is not None and name not in queries.BUILTIN_METRICS:
        check.fail(f"{path}.maxRatio", f"maxRatio (canary / stable) works for {', '.join(queries.BUILTIN_METRICS)}; "
                                       f"for {name} use " + ("maxIncrease or max" if name == golden.GOLDEN_CER
                                                             else "max/min"))
    if max_ratio is not None and max_ratio <= 0:
        check.fail(f"{path}.maxRatio", f"{max_ratio:g} must be above 0; write how many times stable's value "
                                       "the canary may reach, e.g. 1.5")
    return MetricSpec(name=str(name), kind=str(name), max=maximum, min=minimum,
                      query=query if name == queries.CUSTOM_METRIC else None, max_increase=max_increase,
                      max_ratio=max_ratio)


def _parse_rollback(check: _Checker, raw: Any) -> RollbackSpec:
    rollback = check.mapping(raw, "spec.rollback", required=False)
    on_alert = rollback.get("onAlert", True)
    if not isinstance(on_alert, bool):
        check.fail("spec.rollback.onAlert", f"must be true or false, got {on_alert!r}")
        on_alert = True
    window = check.duration(rollback.get("postPromotionWindow"), "spec.rollback.postPromotionWindow", "10m")
    return RollbackSpec(on_alert=on_alert, post_promotion_window_seconds=window)
