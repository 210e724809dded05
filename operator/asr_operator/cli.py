"""`asr-rollout` (also the kubectl plugin `kubectl-asr`): read a rollout, or ask the operator
to promote, abort, retry or roll back by setting the control annotations it consumes.

    asr-rollout status NAME [-n NS] [-o json]
    asr-rollout promote|abort|retry NAME [-n NS]
    asr-rollout rollback NAME --to VERSION [-n NS]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from . import kube
from .state_machine import ABORT, PROMOTE, RETRY, ROLLBACK_TO

CONTROL = {"promote": PROMOTE, "abort": ABORT, "retry": RETRY}
WHAT_IT_DOES = {
    "promote": "skip the current pause (a pause step, or a pause the analysis caused)",
    "abort": "roll the canary back now",
    "retry": "try the failed version again (or resume an analysis pause)",
}


class CliError(Exception):
    pass


def _table(rows: Sequence[Sequence[str]], indent: str = "  ") -> list[str]:
    if not rows:
        return []
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    return [indent + "  ".join(str(cell).ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows]


def _value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_status(rollout: Mapping[str, Any]) -> str:
    """A person's view of one rollout: the headline, conditions, last analysis, history."""
    meta = rollout.get("metadata") or {}
    spec = rollout.get("spec") or {}
    status = rollout.get("status") or {}
    steps = (spec.get("strategy") or {}).get("steps") or []
    weight = status.get("canaryWeight")
    weight_text = "-" if weight is None else f"{weight}%"
    if status.get("weightApproximate"):
        weight_text += f" (approximate by replicas: {status.get('effectiveCanaryWeight')}%)"
    elif status.get("effectiveCanaryWeight") not in (None, weight):
        weight_text += f" (routed now: {status.get('effectiveCanaryWeight')}%, as stable's pods turn ready)"
    if status.get("pendingWeight") is not None:
        weight_text += f", {status['pendingWeight']}% once the canary pods for it are ready"
    step = status.get("currentStep")
    lines = [f"{meta.get('namespace')}/{meta.get('name')}"]
    lines += _table([
        ["Phase:", _value(status.get("phase"))],
        ["Message:", _value(status.get("message"))],
        ["Stable:", _value(status.get("stableVersion"))],
        ["Canary:", _value(status.get("canaryVersion"))],
        ["Changes:", "; ".join(status.get("canaryChanges") or []) or "-"],
        ["Weight:", weight_text],
        ["Step:", "-" if step is None else f"{step}/{len(steps)}"],
        ["Spec version:", _value((spec.get("model") or {}).get("version"))],
        ["Observed generation:", f"{_value(status.get('observedGeneration'))} "
                                 f"(resource: {_value(meta.get('generation'))})"],
    ])
    counters = status.get("counters") or {}
    if counters:
        lines.append("  Counters:  " + ", ".join(f"{k} {v}" for k, v in counters.items()))
    conditions = status.get("conditions") or []
    if conditions:
        lines += ["", "Conditions:"]
        lines += _table([["TYPE", "STATUS", "REASON", "MESSAGE"]] + [
            [c.get("type", ""), c.get("status", ""), c.get("reason", ""), (c.get("message") or "")[:90]]
            for c in conditions])
    analysis = status.get("analysis") or {}
    if analysis.get("metrics"):
        lines += ["", f"Analysis (last run {analysis.get('lastRun')}: {analysis.get('outcome', '-')}):"]
        lines += _table([["METRIC", "PHASE", "VALUE", "STABLE", "MESSAGE"]] + [
            [m.get("name", ""), m.get("phase", ""), _value(m.get("value")), _value(m.get("stableValue")),
             (m.get("message") or "")[:80]]
            for m in analysis["metrics"]])
    history = status.get("history") or []
    if history:
        lines += ["", "History:"]
        lines += _table([["VERSION", "OUTCOME", "AT", "REASON"]] + [
            [h.get("version", ""), h.get("outcome", ""), h.get("at", ""), (h.get("reason") or "")[:80]]
            for h in reversed(history)])
    return "\n".join(lines)


def promoted_versions(rollout: Mapping[str, Any]) -> list[str]:
    history = (rollout.get("status") or {}).get("history") or []
    return [str(h.get("version")) for h in history if h.get("outcome") == "Promoted"]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="asr-rollout", description="Inspect and steer ASRModelRollouts.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in [("status", "show a rollout as a readable table"), *WHAT_IT_DOES.items(),
                            ("rollback", "point the stable track back at a version from status.history")]:
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("name", metavar="NAME", help="the ASRModelRollout")
        sub.add_argument("-n", "--namespace", help="namespace (default: the kubeconfig context's, else default)")
        if name == "status":
            sub.add_argument("-o", "--output", choices=("table", "json"), default="table")
        if name == "rollback":
            sub.add_argument("--to", required=True, metavar="VERSION", help="a Promoted version from the history")
    return parser.parse_args(argv)


async def run(args: argparse.Namespace, api: kube.KubeApi, default_namespace: str) -> str:
    namespace = args.namespace or default_namespace
    rollout = await api.get_rollout(namespace, args.name)
    if rollout is None:
        raise CliError(f"ASRModelRollout {namespace}/{args.name} not found; check the name and -n NAMESPACE")
    if args.command == "status":
        return json.dumps(rollout.get("status") or {}, indent=2) if args.output == "json" else format_status(rollout)
    if args.command == "rollback":
        known = promoted_versions(rollout)
        if args.to not in known:
            raise CliError(f"{args.to!r} is not a promoted version of {namespace}/{args.name}; "
                           f"choose one of: {', '.join(known) or '(none yet)'}")
        await api.set_annotations(namespace, args.name, {ROLLBACK_TO: args.to})
        return f"rollback to {args.to} requested for {namespace}/{args.name}; the operator acts on its next tick"
    await api.set_annotations(namespace, args.name, {CONTROL[args.command]: "true"})
    return (f"{args.command} requested for {namespace}/{args.name} ({WHAT_IT_DOES[args.command]}); "
            f"the operator acts on its next tick and removes the annotation")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        info = kube.login_info()
    except Exception as error:
        print(f"asr-rollout: {error}", file=sys.stderr)
        return 2

    async def session() -> str:
        api = kube.KubeApi(info)
        try:
            return await run(args, api, info.default_namespace or "default")
        finally:
            await api.close()

    try:
        print(asyncio.run(session()))
    except CliError as error:
        print(f"asr-rollout: {error}", file=sys.stderr)
        return 1
    except kube.KubeError as error:
        print(f"asr-rollout: the Kubernetes API refused: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
