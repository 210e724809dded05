"""What the CLI prints and decides, as pure functions of API objects (no I/O; unit-tested):
tables, the rollout tree, history, the `status --watch` verdict and its exit code, which
version `undo` goes back to, and error messages that say what to do."""
from __future__ import annotations

import datetime
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from .children import model_from_configmap
from .durations import parse_time

# Exit codes (docs/install-and-operate.md, "The kubectl plugin"): what CI and GitOps pipelines branch on.
EXIT_OK = 0           # done; with `status --watch`: Succeeded on the spec's version
EXIT_ERROR = 1        # could not do it: not found, refused by the API, no credentials
EXIT_USAGE = 2        # bad command line (argparse's own code)
EXIT_ROLLED_BACK = 3  # `status --watch`: the canary was rolled back (RollingBack or RolledBack)
EXIT_FAILED = 4       # `status --watch`: Failed, or the spec is invalid
EXIT_TIMEOUT = 5      # `status --watch --timeout`: no verdict in time


def program_name(argv0: str) -> str:
    """kubectl runs `kubectl-asr` for `kubectl asr`: help and hints then say `kubectl asr`."""
    base = os.path.basename(argv0 or "")
    if base.startswith("kubectl-"):
        return "kubectl " + base[len("kubectl-"):].replace("_", "-")
    return "asr-rollout"


def table(rows: Sequence[Sequence[Any]], indent: str = "") -> list[str]:
    if not rows:
        return []
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    return [indent + "  ".join(str(cell).ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows]


def value(item: Any) -> str:
    if item is None or item == "":
        return "-"
    if isinstance(item, float):
        return f"{item:.4g}"
    return str(item)


def age(timestamp: Any, now: datetime.datetime) -> str:
    """kubectl's AGE column: 45s, 12m, 3h, 5d."""
    try:
        then = parse_time(str(timestamp)) if timestamp else None
    except ValueError:
        then = None
    if then is None:
        return "-"
    seconds = max(0, int((now - then).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def render(data: Any, output: str) -> str:
    """-o json | yaml: the API objects as they are, for scripts."""
    if output == "yaml":
        return yaml.safe_dump(data, sort_keys=False).rstrip()
    return json.dumps(data, indent=2)


def _weight_text(status: Mapping[str, Any]) -> str:
    weight = status.get("canaryWeight")
    text = "-" if weight is None else f"{weight}%"
    if status.get("weightApproximate"):
        text += f" (approximate by replicas: {status.get('effectiveCanaryWeight')}%)"
    elif status.get("effectiveCanaryWeight") not in (None, weight):
        text += f" (routed now: {status.get('effectiveCanaryWeight')}%, as stable's pods turn ready)"
    if status.get("pendingWeight") is not None:
        text += f", {status['pendingWeight']}% once the canary pods for it are ready"
    return text


def _step_text(rollout: Mapping[str, Any]) -> str:
    steps = ((rollout.get("spec") or {}).get("strategy") or {}).get("steps") or []
    step = (rollout.get("status") or {}).get("currentStep")
    return "-" if step is None else f"{step}/{len(steps)}"


# --- list --------------------------------------------------------------------------------------

def format_list(rollouts: Sequence[Mapping[str, Any]], now: datetime.datetime, all_namespaces: bool) -> str:
    """`list`: one line per rollout, kubectl-style (the CRD's printer columns and more)."""
    header = ["NAME", "PHASE", "SPEC", "STABLE", "CANARY", "WEIGHT", "STEP", "AGE"]
    rows: list[list[Any]] = []
    for item in sorted(rollouts, key=lambda r: ((r.get("metadata") or {}).get("namespace") or "",
                                                (r.get("metadata") or {}).get("name") or "")):
        meta, status = item.get("metadata") or {}, item.get("status") or {}
        row = [meta.get("name"), value(status.get("phase")),
               value(((item.get("spec") or {}).get("model") or {}).get("version")),
               value(status.get("stableVersion")), value(status.get("canaryVersion")),
               value(status.get("canaryWeight")), _step_text(item),
               age(meta.get("creationTimestamp"), now)]
        rows.append(([meta.get("namespace")] if all_namespaces else []) + row)
    return "\n".join(table([(["NAMESPACE"] if all_namespaces else []) + header] + rows))


# --- status ------------------------------------------------------------------------------------

def _thresholds(metric: Mapping[str, Any]) -> str:
    parts = []
    for key, text in (("max", "max {}"), ("min", "min {}"), ("maxIncrease", "+{} over stable"),
                      ("maxRatio", "{}x stable")):
        if metric.get(key) is not None:
            parts.append(text.format(value(metric[key])))
    return ", ".join(parts) or "-"


def analysis_rows(rollout: Mapping[str, Any]) -> list[list[str]]:
    """The last analysis, each measurement beside the threshold the spec sets for it. Measured
    metrics come in the spec's order; a metric name may repeat (error-rate twice), so pair by
    position when the counts agree, else by the first unused spec entry of that name."""
    spec_metrics = list((((rollout.get("spec") or {}).get("analysis") or {}).get("metrics")) or [])
    measured = list((((rollout.get("status") or {}).get("analysis") or {}).get("metrics")) or [])
    unused = list(range(len(spec_metrics)))
    rows = []
    for position, item in enumerate(measured):
        if len(measured) == len(spec_metrics):
            index: int | None = position
        else:
            index = next((i for i in unused if spec_metrics[i].get("name") == item.get("name")), None)
        if index is not None and index in unused:
            unused.remove(index)
        threshold = _thresholds(spec_metrics[index]) if index is not None else "-"
        rows.append([str(item.get("name", "")), str(item.get("phase", "")), value(item.get("value")),
                     value(item.get("stableValue")), threshold, (item.get("message") or "")[:80]])
    return rows


def format_status(rollout: Mapping[str, Any]) -> str:
    """A person's view of one rollout: the headline, conditions, last analysis, history."""
    meta = rollout.get("metadata") or {}
    spec = rollout.get("spec") or {}
    status = rollout.get("status") or {}
    annotations = meta.get("annotations") or {}
    phase = value(status.get("phase"))
    if annotations.get("asr.rollout.dev/pause", "").lower() == "true":
        phase += " (pause requested: resume to continue)"
    lines = [f"{meta.get('namespace')}/{meta.get('name')}"]
    lines += table([
        ["Phase:", phase],
        ["Message:", value(status.get("message"))],
        ["Stable:", value(status.get("stableVersion"))],
        ["Canary:", value(status.get("canaryVersion"))],
        ["Changes:", "; ".join(status.get("canaryChanges") or []) or "-"],
        ["Weight:", _weight_text(status)],
        ["Step:", _step_text(rollout)],
        ["Spec version:", value((spec.get("model") or {}).get("version"))],
        ["Observed generation:", f"{value(status.get('observedGeneration'))} "
                                 f"(resource: {value(meta.get('generation'))})"],
    ], indent="  ")
    counters = status.get("counters") or {}
    if counters:
        lines.append("  Counters:  " + ", ".join(f"{k} {v}" for k, v in counters.items()))
    conditions = status.get("conditions") or []
    if conditions:
        lines += ["", "Conditions:"]
        lines += table([["TYPE", "STATUS", "REASON", "MESSAGE"]] + [
            [c.get("type", ""), c.get("status", ""), c.get("reason", ""), (c.get("message") or "")[:90]]
            for c in conditions], indent="  ")
    analysis = status.get("analysis") or {}
    if analysis.get("metrics"):
        lines += ["", f"Analysis (last run {analysis.get('lastRun')}: {analysis.get('outcome', '-')}):"]
        lines += table([["METRIC", "PHASE", "VALUE", "STABLE", "THRESHOLD", "MESSAGE"]] + analysis_rows(rollout),
                       indent="  ")
    history = status.get("history") or []
    if history:
        lines += ["", "History:"]
        lines += history_table(rollout, indent="  ")
    return "\n".join(lines)


def status_line(rollout: Mapping[str, Any]) -> str:
    """One line per change while watching: phase, versions, weight, step, message."""
    status = rollout.get("status") or {}
    return (f"{value(status.get('phase'))}  stable {value(status.get('stableVersion'))}  "
            f"canary {value(status.get('canaryVersion'))}  weight {_weight_text(status)}  "
            f"step {_step_text(rollout)}  {status.get('message') or ''}").rstrip()


# --- status --watch ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Verdict:
    done: bool
    code: int
    message: str


def watch_verdict(rollout: Mapping[str, Any]) -> Verdict:
    """Is the rollout of the *current* spec finished, and how? A status the operator wrote for
    an older generation says nothing about this spec (a pipeline that just bumped the version
    must not pass on the previous Succeeded), so wait until it has observed this generation."""
    meta = rollout.get("metadata") or {}
    status = rollout.get("status") or {}
    wanted = ((rollout.get("spec") or {}).get("model") or {}).get("version")
    generation, observed = meta.get("generation"), status.get("observedGeneration")
    if generation is not None and (observed is None or int(observed) < int(generation)):
        return Verdict(False, EXIT_OK, f"waiting for the operator to observe generation {generation}")
    phase = status.get("phase")
    invalid = next((c for c in status.get("conditions") or []
                    if c.get("type") == "InvalidSpec" and c.get("status") == "True"), None)
    if invalid is not None:
        return Verdict(True, EXIT_FAILED, f"invalid spec: {invalid.get('message')}")
    if phase == "Succeeded" and status.get("stableVersion") == wanted:
        return Verdict(True, EXIT_OK, f"{wanted} is serving (Succeeded)")
    if phase in ("RollingBack", "RolledBack"):
        return Verdict(True, EXIT_ROLLED_BACK, f"{phase}: {status.get('message') or ''}".rstrip())
    if phase == "Failed":
        return Verdict(True, EXIT_FAILED, f"Failed: {status.get('message') or ''}".rstrip())
    return Verdict(False, EXIT_OK, f"{value(phase)}")


def parse_timeout(text: str | None) -> float | None:
    """--timeout: a Go duration (90s, 10m) or plain seconds; 0 or none: wait for ever."""
    if text is None:
        return None
    from .durations import parse_duration
    try:
        seconds = float(text)
    except ValueError:
        seconds = parse_duration(text)
    if seconds < 0:
        raise ValueError(f"--timeout {text!r} is negative")
    return seconds or None


# --- history / undo ----------------------------------------------------------------------------

def history_table(rollout: Mapping[str, Any], indent: str = "") -> list[str]:
    history = (rollout.get("status") or {}).get("history") or []
    rows = [[str(len(history) - i), h.get("version", ""), h.get("outcome", ""), h.get("at", ""),
             "; ".join(h.get("changes") or []) or "-", (h.get("reason") or "")[:70]]
            for i, h in enumerate(reversed(history))]
    return table([["#", "VERSION", "OUTCOME", "AT", "CHANGES", "REASON"]] + rows, indent=indent)


def format_history(rollout: Mapping[str, Any]) -> str:
    meta = rollout.get("metadata") or {}
    if not (rollout.get("status") or {}).get("history"):
        return f"{meta.get('namespace')}/{meta.get('name')}: no history yet (no version has been rolled out)"
    return "\n".join(history_table(rollout))


def promoted_versions(rollout: Mapping[str, Any]) -> list[str]:
    history = (rollout.get("status") or {}).get("history") or []
    return [str(h.get("version")) for h in history if h.get("outcome") == "Promoted"]


def undo_target(rollout: Mapping[str, Any], to: str | None) -> str:
    """The version `undo` points stable at: `--to`, else the promoted version before the one
    stable serves. Raises ValueError with the choices."""
    meta = rollout.get("metadata") or {}
    where = f"{meta.get('namespace')}/{meta.get('name')}"
    known = promoted_versions(rollout)
    if to is not None:
        if to not in known:
            raise ValueError(f"{to!r} is not a promoted version of {where}; choose one of: "
                             f"{', '.join(dict.fromkeys(known)) or '(none yet)'}")
        return to
    stable = (rollout.get("status") or {}).get("stableVersion")
    earlier = [version for version in known if version != stable]
    if not earlier:
        raise ValueError(f"{where} has no earlier promoted version to go back to "
                         f"(promoted: {', '.join(known) or 'none'})")
    return earlier[-1]


# --- get: the tree -----------------------------------------------------------------------------

@dataclass
class RolloutView:
    """Everything `get` shows, read by the CLI's I/O edge."""
    rollout: Mapping[str, Any]
    deployments: Mapping[str, Mapping[str, Any] | None]
    configmaps: Mapping[str, Mapping[str, Any] | None]
    pods: Sequence[Mapping[str, Any]]
    route: Mapping[str, Any] | None = None


def pod_ready(pod: Mapping[str, Any]) -> tuple[str, int]:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    containers = ((pod.get("spec") or {}).get("containers")) or statuses
    ready = sum(1 for item in statuses if item.get("ready"))
    restarts = sum(int(item.get("restartCount") or 0) for item in statuses)
    return f"{ready}/{len(containers)}", restarts


def route_weights(route: Mapping[str, Any] | None) -> list[tuple[str, int]]:
    """(backend, weight) of an HTTPRoute's rules, as the gateway sees them."""
    if not route:
        return []
    weights = []
    for rule in (route.get("spec") or {}).get("rules") or []:
        for ref in rule.get("backendRefs") or []:
            weights.append((str(ref.get("name")), int(ref.get("weight", 1))))
    return weights


def format_tree(view: RolloutView, now: datetime.datetime) -> str:
    """`get`: rollout -> each track's Deployment (and ConfigMap's model) -> its pods; the route
    weights; the last analysis with values and thresholds."""
    rollout = view.rollout
    meta, spec, status = rollout.get("metadata") or {}, rollout.get("spec") or {}, rollout.get("status") or {}
    lines = [f"Name:       {meta.get('name')}", f"Namespace:  {meta.get('namespace')}",
             f"Status:     {status_line(rollout)}"]
    traffic = spec.get("traffic") or {}
    route_name = (traffic.get("gatewayAPI") or {}).get("httpRoute")
    if route_name:
        weights = route_weights(view.route)
        seen = ", ".join(f"{name}={weight}" for name, weight in weights) if weights else "(route not found)"
        lines.append(f"Traffic:    HTTPRoute {route_name}: {seen}")
    else:
        lines.append(f"Traffic:    replica ratio: canary {_weight_text(status)} (by pod counts)")
    rows: list[list[str]] = [["NAME", "KIND", "STATUS", "INFO", ""],
                             [str(meta.get("name")), "ASRModelRollout", value(status.get("phase")),
                              f"spec {value((spec.get('model') or {}).get('version'))}", ""]]
    tracks = [track for track in ("stable", "canary") if view.deployments.get(track) or view.configmaps.get(track)]
    for position, track in enumerate(tracks):
        branch, trunk = ("└──", "   ") if position == len(tracks) - 1 else ("├──", "│  ")
        deployment = view.deployments.get(track) or {}
        configmap = view.configmaps.get(track)
        model = model_from_configmap(configmap)
        replicas = (deployment.get("spec") or {}).get("replicas", 0)
        ready_count = (deployment.get("status") or {}).get("readyReplicas") or 0
        rows.append([f"{branch} {(deployment.get('metadata') or {}).get('name', f'({track}: no Deployment)')}",
                     "Deployment", f"{track} ready {ready_count}/{replicas}",
                     f"model {model.version}" if model else "model unknown", ""])
        children: list[list[str]] = []
        if configmap:
            children.append([configmap["metadata"]["name"], "ConfigMap", "",
                             f"path {model.path}" if model else "no readable model.yaml", ""])
        pods = [pod for pod in view.pods
                if ((pod.get("metadata") or {}).get("labels") or {}).get("asr.rollout.dev/track") == track]
        for pod in sorted(pods, key=lambda p: str((p.get("metadata") or {}).get("name"))):
            ready, restarts = pod_ready(pod)
            pod_meta = pod.get("metadata") or {}
            children.append([str(pod_meta.get("name")), "Pod",
                             f"{(pod.get('status') or {}).get('phase') or '-'} ready {ready}",
                             f"version {model.version if model else '-'}",
                             f"restarts {restarts}, age {age(pod_meta.get('creationTimestamp'), now)}"])
        for index, child in enumerate(children):
            twig = "└──" if index == len(children) - 1 else "├──"
            rows.append([f"{trunk} {twig} {child[0]}", *child[1:]])
    lines += table(rows)
    analysis = status.get("analysis") or {}
    if analysis.get("metrics"):
        lines += ["", f"Last analysis ({analysis.get('lastRun')}: {analysis.get('outcome', '-')}):"]
        lines += table([["METRIC", "PHASE", "VALUE", "STABLE", "THRESHOLD", "MESSAGE"]] + analysis_rows(rollout),
                       indent="  ")
    return "\n".join(lines)


# --- errors ------------------------------------------------------------------------------------

def explain_api_error(status: int, detail: str, action: str, namespace: str | None, name: str | None,
                      prog: str, context: str | None = None) -> str:
    """An API refusal as the person can act on it: what, where, and the next command."""
    where = f"namespace {namespace}" if namespace else "any namespace"
    target = f"rollout {name}" if name else "rollouts"
    ns_flag = f" -n {namespace}" if namespace else " -A"
    if status == 404:
        if name:
            return f"rollout {name} not found in namespace {namespace}; list them with: {prog} list -n {namespace}"
        return ("the ASRModelRollout resource is not known to this API server: install the CRD "
                "(kubectl apply -f deploy/crds/, or helm install the chart)")
    if status == 401:
        which = f"context {context!r}" if context else "the current kubeconfig context"
        return (f"the API server did not accept the credentials of {which} ({detail}): the token may have "
                "expired or the exec credential plugin failed; check `kubectl get ns` works with the same "
                "kubeconfig, log in again (e.g. aws eks update-kubeconfig, gcloud container clusters "
                "get-credentials, az aks get-credentials), or pick another --context")
    if status == 403:
        return (f"not allowed to {action} {target} in {where} ({detail}); your user needs RBAC verbs "
                "get, list, watch and patch on asrmodelrollouts.asr.rollout.dev (and get/list on "
                f"deployments, configmaps, pods, httproutes for `get`); check with: kubectl auth can-i "
                f"patch asrmodelrollouts.asr.rollout.dev{ns_flag}")
    if status == 422:
        return f"the API server refused to {action} {target} in {where}: {detail}"
    if status == 409:
        return f"{target} in {where} changed while this command ran; run it again ({detail})"
    return f"the API server answered HTTP {status} to {action} {target} in {where}: {detail}"
