"""PromQL the operator asks Prometheus: built-in templates and safe custom-template rendering.

Every built-in query selects one track (canary, or stable for the relative bounds) of one
rollout and one model version with the server's own metric names (docs/contracts.md), and the
request metrics only on the inference endpoints (INFERENCE_ENDPOINT_REGEX). Values from a
resource's fields only ever enter a query inside a double-quoted label value and are escaped there, so a crafted version string
cannot change the query's shape.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

# Metric names the spec may use. Built-ins over live traffic have a query below; the golden-set
# quality metrics (golden-cer, golden-agreement) live in analysis/golden.py. "Pending" names
# would be refused as InvalidSpec rather than silently ignored; none are left.
BUILTIN_METRICS = ("error-rate", "p99-latency-seconds", "real-time-factor")
# Built-ins over the pods' resources rather than their traffic: no minRequests gate (an idle
# canary leaks memory just as well) and no stable-track counterpart.
GPU_MEMORY_GROWTH = "gpu-memory-growth-bytes-per-minute"
RESOURCE_METRICS = (GPU_MEMORY_GROWTH,)
CUSTOM_METRIC = "custom"
PENDING_METRICS: tuple[str, ...] = ()
KNOWN_PLACEHOLDERS = ("namespace", "rollout", "track", "version")

_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


@dataclass(frozen=True)
class QueryScope:
    """Which series a query is about: one rollout's track serving one model version."""

    namespace: str
    rollout: str
    track: str
    version: str


def escape_label_value(value: str) -> str:
    """Escape a value for a PromQL double-quoted string (Go string-literal rules)."""
    out = []
    for char in value:
        if char == "\\":
            out.append("\\\\")
        elif char == '"':
            out.append('\\"')
        elif char == "\n":
            out.append("\\n")
        elif char == "\r":
            out.append("\\r")
        elif char == "\t":
            out.append("\\t")
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\x{ord(char):02x}")
        else:
            out.append(char)
    return "".join(out)


_SERVER_ERRORS = ',code=~"5.."'
# The inference endpoints, the only requests that judge a version. The server already counts
# nothing else in asr_requests_total, but an older server image counted model listings, probes
# and streams there too: selecting the endpoints keeps readiness polls from making up minRequests
# and diluting the error rate on any image. PromQL anchors the regex (a full match).
INFERENCE_ENDPOINTS = ("/v1/audio/transcriptions", "/v1/audio/transcriptions/batch", "/v1/vad")
INFERENCE_ENDPOINT_REGEX = "|".join(INFERENCE_ENDPOINTS)
_INFERENCE = f',endpoint=~"{INFERENCE_ENDPOINT_REGEX}"'


def _selector(scope: QueryScope, extra: str = "") -> str:
    labels = (
        f'namespace="{escape_label_value(scope.namespace)}",'
        f'rollout="{escape_label_value(scope.rollout)}",'
        f'track="{escape_label_value(scope.track)}",'
        f'version="{escape_label_value(scope.version)}"'
    )
    return "{" + labels + extra + "}"


def window_text(window_seconds: float) -> str:
    """A PromQL range in whole seconds (valid on every Prometheus version)."""
    return f"{max(1, int(round(window_seconds)))}s"


def request_count_query(scope: QueryScope, window_seconds: float) -> str:
    """Inference requests the scope's version answered in the window: below minRequests, no verdict."""
    return f"sum(increase(asr_requests_total{_selector(scope, _INFERENCE)}[{window_text(window_seconds)}]))"


def error_share_query(counter: str, scope: QueryScope, window_seconds: float, errors: str, counted: str) -> str:
    """Share of `counter`'s increments matching `errors` among those matching `counted`.
    `or vector(0)`: with no error at all the numerator has no series; that is a 0 % error rate,
    while no requests at all (empty denominator) stays empty -> Inconclusive."""
    window = window_text(window_seconds)
    failed = f"sum(rate({counter}{_selector(scope, errors)}[{window}]))"
    total = f"sum(rate({counter}{_selector(scope, counted)}[{window}]))"
    return f"({failed} or vector(0)) / {total}"


def p99_query(histogram: str, scope: QueryScope, window_seconds: float, extra: str = "") -> str:
    """The 99th percentile of a histogram's observations in the window, over all pods."""
    return ("histogram_quantile(0.99, sum by (le) "
            f"(rate({histogram}_bucket{_selector(scope, extra)}[{window_text(window_seconds)}])))")


def mean_query(histogram: str, scope: QueryScope, window_seconds: float) -> str:
    """The mean of a histogram's observations in the window, over all pods."""
    window = window_text(window_seconds)
    return (f"sum(rate({histogram}_sum{_selector(scope)}[{window}])) / "
            f"sum(rate({histogram}_count{_selector(scope)}[{window}]))")


def error_rate_query(scope: QueryScope, window_seconds: float) -> str:
    return error_share_query("asr_requests_total", scope, window_seconds, _INFERENCE + _SERVER_ERRORS, _INFERENCE)


def p99_latency_query(scope: QueryScope, window_seconds: float) -> str:
    return p99_query("asr_request_duration_seconds", scope, window_seconds, _INFERENCE)


def real_time_factor_query(scope: QueryScope, window_seconds: float) -> str:
    """Mean real-time factor (processing seconds per audio second) over the window."""
    return mean_query("asr_real_time_factor", scope, window_seconds)


def gpu_memory_growth_query(scope: QueryScope, window_seconds: float) -> str:
    """The worst pod's device-memory growth in bytes per minute: deriv() (a least-squares slope,
    robust to one noisy scrape) of asr_gpu_memory_used_bytes over the window, per pod (its worst
    device), on the pods that serve the scope's version (the memory series has no version label:
    asr_model_info says which version a pod serves). No CUDA, no series: no value, Inconclusive."""
    window = window_text(window_seconds)
    track = (
        f'namespace="{escape_label_value(scope.namespace)}",'
        f'rollout="{escape_label_value(scope.rollout)}",'
        f'track="{escape_label_value(scope.track)}"'
    )
    return (
        f"max(max by (pod) (deriv(asr_gpu_memory_used_bytes{{{track}}}[{window}])) * 60 "
        f"and on (pod) (asr_model_info{_selector(scope)} == 1))"
    )


def builtin_query(name: str, scope: QueryScope, window_seconds: float) -> str:
    builders = {
        "error-rate": error_rate_query,
        "p99-latency-seconds": p99_latency_query,
        "real-time-factor": real_time_factor_query,
        GPU_MEMORY_GROWTH: gpu_memory_growth_query,
    }
    if name not in builders:
        raise KeyError(f"no built-in query named {name!r}; built-ins are "
                       f"{', '.join(BUILTIN_METRICS + RESOURCE_METRICS)}")
    return builders[name](scope, window_seconds)


def served_versions_query(namespace: str, rollout: str, track: str) -> str:
    """Pods per model version a track serves (asr_model_info is 1 for the serving version)."""
    labels = (
        f'namespace="{escape_label_value(namespace)}",'
        f'rollout="{escape_label_value(rollout)}",'
        f'track="{escape_label_value(track)}"'
    )
    return f"count by (version) (asr_model_info{{{labels}}} == 1)"


def can_load_beside_query(namespace: str, rollout: str, track: str) -> str:
    """Per pod: 1 where the server has room to hot-load a version beside the serving one."""
    labels = (
        f'namespace="{escape_label_value(namespace)}",'
        f'rollout="{escape_label_value(rollout)}",'
        f'track="{escape_label_value(track)}"'
    )
    return f"max by (pod) (asr_model_can_load_beside{{{labels}}})"


def check_custom_template(template: str) -> list[str]:
    """Problems with a custom query template (empty list: fine).

    Placeholders must be known and sit inside a double-quoted string, because only there can
    an escaped value not change the query (`rate(x[{{version}}])` would be an injection point).
    """
    problems: list[str] = []
    for match in _PLACEHOLDER.finditer(template):
        name = match.group(1)
        if name not in KNOWN_PLACEHOLDERS:
            problems.append(
                f"unknown placeholder {{{{{name}}}}}; use {', '.join('{{' + p + '}}' for p in KNOWN_PLACEHOLDERS)}"
            )
        elif not _inside_double_quotes(template, match.start()):
            problems.append(
                f'placeholder {{{{{name}}}}} must be inside a double-quoted label value, e.g. {name}="{{{{{name}}}}}"'
            )
    if "{{" in _PLACEHOLDER.sub("", template):
        problems.append("malformed placeholder: write {{namespace}}, {{rollout}}, {{track}} or {{version}}")
    return problems


def _inside_double_quotes(text: str, position: int) -> bool:
    """Whether `position` lies inside a "..." PromQL string (tracking escapes and other quotes)."""
    quote: str | None = None
    index = 0
    while index < position:
        char = text[index]
        if quote is not None:
            if char == "\\" and quote != "`":
                index += 2
                continue
            if char == quote:
                quote = None
        elif char in ('"', "'", "`"):
            quote = char
        elif char == "#":  # a PromQL comment runs to the end of the line
            newline = text.find("\n", index)
            if newline == -1 or newline >= position:
                return False
            index = newline
        index += 1
    return quote == '"'


def render_custom_query(template: str, scope: QueryScope) -> str:
    """Substitute placeholders with escaped values. The template must pass check_custom_template."""
    problems = check_custom_template(template)
    if problems:
        raise ValueError("; ".join(problems))
    values = {
        "namespace": scope.namespace,
        "rollout": scope.rollout,
        "track": scope.track,
        "version": scope.version,
    }
    return _PLACEHOLDER.sub(lambda match: escape_label_value(values[match.group(1)]), template)
