"""`asr-rollout`, also the kubectl plugin `kubectl asr` (the `kubectl-asr` entry point on PATH):
read rollouts and steer them, logged in as kubectl is (kube.login_info: exec credential
plugins, --kubeconfig, --context, the context's namespace, in-cluster).

    list [-A]                          get NAME [--watch]
    status NAME [--watch] [--timeout T] history NAME
    promote|abort|retry|pause|resume NAME
    set model NAME --version V --path P [--sha256 S]
    undo NAME [--to VERSION]           (rollback NAME --to VERSION: the older spelling)

Steering writes the control annotations the operator consumes (docs/contracts.md); only
`set model` writes spec, on a person's command. Formatting and decisions are in cli_format
(pure); this module is argument parsing and I/O. Exit codes: cli_format.EXIT_*.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import kopf

from . import kube
from .children import configmap_name, deployment_name
from .cli_format import (
    EXIT_ERROR, EXIT_OK, EXIT_TIMEOUT, RolloutView, explain_api_error, format_history, format_list,
    format_status, format_tree, parse_timeout, program_name, promoted_versions, render, status_line,
    undo_target, watch_verdict,
)
from .state_machine import ABORT, PAUSE, PROMOTE, RETRY, ROLLBACK_TO

__all__ = ["format_status", "main", "parse_args", "promoted_versions", "run"]

CONTROL = {"promote": PROMOTE, "abort": ABORT, "retry": RETRY}
WHAT_IT_DOES = {
    "promote": "skip the current pause (a pause step, or a pause the analysis caused)",
    "abort": "roll the canary back now",
    "retry": "try the failed version again (or resume an analysis pause)",
}
WATCH_INTERVAL_SECONDS = 2.0  # how often --watch reads the rollout again


class CliError(Exception):
    pass


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("asr-rollout")
    except PackageNotFoundError:
        return "unknown (not installed as a package)"


def _connection_flags(parser: argparse.ArgumentParser, top: bool) -> None:
    """kubectl's flags, before or after the command (`kubectl asr -n x get r` and `... get r -n x`).
    On the subcommands they default to SUPPRESS, so they never overwrite the top-level value."""
    default: dict[str, Any] = {} if top else {"default": argparse.SUPPRESS}
    parser.add_argument("-n", "--namespace", help="namespace (default: the kubeconfig context's, else default)",
                        **default)
    parser.add_argument("--kubeconfig", metavar="FILE", help="kubeconfig file (default: KUBECONFIG, ~/.kube/config)",
                        **default)
    parser.add_argument("--context", help="kubeconfig context (default: the current one)", **default)


def parse_args(argv: Sequence[str] | None, prog: str = "asr-rollout") -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=prog, description="Inspect and steer ASRModelRollouts.",
        epilog="exit codes: 0 ok (status --watch: Succeeded), 1 error, 2 usage, 3 rolled back, 4 failed, 5 timeout")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    _connection_flags(parser, top=True)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str, named: bool = True, output: bool = False) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        if named:
            sub.add_argument("name", metavar="NAME", help="the ASRModelRollout")
        _connection_flags(sub, top=False)
        if output:
            sub.add_argument("-o", "--output", choices=("table", "json", "yaml"), default="table")
        return sub

    listing = command("list", "list rollouts (this namespace, or -A all)", named=False, output=True)
    listing.add_argument("-A", "--all-namespaces", action="store_true", help="rollouts of every namespace")
    getting = command("get", "a rollout as a tree: Deployments, ConfigMaps, pods, route weights, analysis",
                      output=True)
    getting.add_argument("-w", "--watch", action="store_true", help="redraw on every change until Ctrl-C")
    status = command("status", "the rollout's status; with --watch wait for the verdict (exit code)", output=True)
    status.add_argument("-w", "--watch", action="store_true",
                        help="follow it until Succeeded (exit 0), rolled back (3) or Failed (4)")
    status.add_argument("-t", "--timeout", metavar="T", help="with --watch: give up after T (90s, 10m; exit 5)")
    for name, help_text in WHAT_IT_DOES.items():
        command(name, help_text)
    command("pause", "hold a running canary at its weight (no step runs) until resume; analysis still judges it")
    command("resume", "lift a pause made with `pause`")
    command("history", "versions promoted and rolled back, newest first", output=True)
    undo = command("undo", "point stable back at a promoted version (default: the one before the current)")
    undo.add_argument("--to", metavar="VERSION", help="a Promoted version from the history")
    rollback = command("rollback", "like undo, with --to required (kept for older scripts)")
    rollback.add_argument("--to", required=True, metavar="VERSION", help="a Promoted version from the history")
    setting = commands.add_parser("set", help="change the spec (for users without GitOps)")
    what = setting.add_subparsers(dest="what", required=True, metavar="WHAT")
    model = what.add_parser("model", help="roll out another model version: patches spec.model")
    model.add_argument("name", metavar="NAME", help="the ASRModelRollout")
    _connection_flags(model, top=False)
    model.add_argument("--version", dest="model_version", required=True, metavar="V", help="spec.model.version")
    model.add_argument("--path", required=True, metavar="P", help="spec.model.path, relative to the model volume")
    model.add_argument("--sha256", metavar="S",
                       help="digest of the version's MANIFEST.sha256 (asr-model manifest); without it the old "
                            "digest is removed, as it belongs to the old version")
    args = parser.parse_args(argv)
    if args.command == "set":
        args.command = "set-model"
    return args


@dataclass
class Context:
    """What a command needs besides its arguments: the API, where, how to speak, the clock."""
    api: kube.KubeApi
    namespace: str
    prog: str
    out: Callable[[str], None]
    now: Callable[[], datetime.datetime]
    interval: float = WATCH_INTERVAL_SECONDS
    kube_context: str | None = None  # --context, named in credential errors


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def rollouts_path(namespace: str | None) -> str:
    where = f"namespaces/{namespace}/" if namespace else ""
    return f"/apis/{kube.GROUP}/{kube.VERSION}/{where}{kube.PLURAL}"


async def _rollout(ctx: Context, name: str) -> dict[str, Any]:
    rollout = await ctx.api.get_rollout(ctx.namespace, name)
    if rollout is None:
        raise CliError(explain_api_error(404, "", "get", ctx.namespace, name, ctx.prog))
    return rollout


async def _view(ctx: Context, rollout: dict[str, Any]) -> RolloutView:
    name = rollout["metadata"]["name"]
    ns = ctx.namespace
    deployments = {track: await ctx.api.get(kube.deployment_path(ns, deployment_name(name, track)))
                   for track in ("stable", "canary")}
    configmaps = {track: await ctx.api.get(kube.configmap_path(ns, configmap_name(name, track)))
                  for track in ("stable", "canary")}
    pods = await ctx.api.list(f"/api/v1/namespaces/{ns}/pods", {"asr.rollout.dev/rollout": name})
    route = None
    route_name = (((rollout.get("spec") or {}).get("traffic") or {}).get("gatewayAPI") or {}).get("httpRoute")
    if route_name:
        try:
            route = await ctx.api.get(kube.httproute_path(ns, route_name))
        except kube.KubeError as error:
            if error.status not in (403, 404):  # no Gateway API or no right to read it: shown as missing
                raise
    return RolloutView(rollout, deployments, configmaps, pods, route)


async def run(args: argparse.Namespace, ctx: Context) -> int:
    command = args.command
    if command == "list":
        namespace = None if args.all_namespaces else ctx.namespace
        try:
            result = await ctx.api.request("GET", rollouts_path(namespace))
        except kube.KubeError as error:
            raise CliError(explain_api_error(error.status, error.detail, "list", namespace, None, ctx.prog,
                                             ctx.kube_context)) from None
        items = list(result.get("items") or [])
        if args.output != "table":
            ctx.out(render(items, args.output))
        elif not items:
            where = "any namespace" if namespace is None else f"namespace {namespace}"
            ctx.out(f"no rollouts in {where}" + ("" if namespace is None else f" (all namespaces: {ctx.prog} list -A)"))
        else:
            ctx.out(format_list(items, ctx.now(), namespace is None))
        return EXIT_OK

    rollout = await _rollout(ctx, args.name)
    where = f"{ctx.namespace}/{args.name}"
    if command == "get":
        return await _get(args, ctx, rollout)
    if command == "status":
        if args.watch:
            return await _watch_status(args, ctx, rollout)
        ctx.out(render(rollout.get("status") or {}, args.output) if args.output != "table" else format_status(rollout))
        return EXIT_OK
    if command == "history":
        history = (rollout.get("status") or {}).get("history") or []
        ctx.out(render(history, args.output) if args.output != "table" else format_history(rollout))
        return EXIT_OK
    if command in ("undo", "rollback"):
        try:
            version = undo_target(rollout, args.to)
        except ValueError as error:
            raise CliError(str(error)) from None
        await ctx.api.set_annotations(ctx.namespace, args.name, {ROLLBACK_TO: version})
        ctx.out(f"rollback of {where} to {version} requested; the operator acts on its next tick "
                f"(follow it: {ctx.prog} status {args.name} -n {ctx.namespace} --watch)")
        return EXIT_OK
    if command == "pause":
        await ctx.api.set_annotations(ctx.namespace, args.name, {PAUSE: "true"})
        ctx.out(f"{where} paused: a running canary keeps its weight and no step runs until "
                f"`{ctx.prog} resume {args.name} -n {ctx.namespace}`; analysis still judges it")
        return EXIT_OK
    if command == "resume":
        annotations = (rollout.get("metadata") or {}).get("annotations") or {}
        if PAUSE not in annotations:
            phase = (rollout.get("status") or {}).get("phase")
            hint = (f"; it is {phase}: a `pause: {{}}` step or an analysis pause continues with "
                    f"`{ctx.prog} promote {args.name}` (or retry)" if phase == "Paused" else "")
            raise CliError(f"{where} was not paused with `{ctx.prog} pause`{hint}")
        await ctx.api.set_annotations(ctx.namespace, args.name, {PAUSE: None})
        ctx.out(f"{where} resumed; the operator continues on its next tick")
        return EXIT_OK
    if command == "set-model":
        return await _set_model(args, ctx, rollout)
    await ctx.api.set_annotations(ctx.namespace, args.name, {CONTROL[command]: "true"})
    ctx.out(f"{command} requested for {where} ({WHAT_IT_DOES[command]}); "
            f"the operator acts on its next tick and removes the annotation")
    return EXIT_OK


async def _get(args: argparse.Namespace, ctx: Context, rollout: dict[str, Any]) -> int:
    shown = ""
    while True:
        view = await _view(ctx, rollout)
        if args.output != "table":
            text = render({"rollout": view.rollout, "deployments": view.deployments,
                           "configmaps": view.configmaps, "pods": list(view.pods), "route": view.route},
                          args.output)
        else:
            text = format_tree(view, ctx.now())
        if text != shown:
            ctx.out(text if not shown else "\n" + text)
            shown = text
        if not args.watch:
            return EXIT_OK
        await asyncio.sleep(ctx.interval)
        rollout = await _rollout(ctx, args.name)


async def _watch_status(args: argparse.Namespace, ctx: Context, rollout: dict[str, Any]) -> int:
    """Follow the rollout until the verdict on the current spec (cli_format.watch_verdict)."""
    try:
        timeout = parse_timeout(args.timeout)
    except ValueError as error:
        raise CliError(str(error)) from None
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    last = ""
    while True:
        line = status_line(rollout)
        if line != last:
            ctx.out(line)
            last = line
        verdict = watch_verdict(rollout)
        if verdict.done:
            ctx.out(f"{ctx.namespace}/{args.name}: {verdict.message}")
            return verdict.code
        if deadline is not None and loop.time() >= deadline:
            ctx.out(f"{ctx.namespace}/{args.name}: no verdict within {args.timeout} ({verdict.message}); "
                    f"see: {ctx.prog} get {args.name} -n {ctx.namespace}")
            return EXIT_TIMEOUT
        pause = ctx.interval if deadline is None else max(0.0, min(ctx.interval, deadline - loop.time()))
        await asyncio.sleep(pause)
        rollout = await _rollout(ctx, args.name)


async def _set_model(args: argparse.Namespace, ctx: Context, rollout: dict[str, Any]) -> int:
    where = f"{ctx.namespace}/{args.name}"
    model = {"version": args.model_version, "path": args.path, "sha256": args.sha256}  # None removes it
    try:
        await ctx.api.merge_patch(kube.rollout_path(ctx.namespace, args.name), {"spec": {"model": model}})
    except kube.KubeError as error:
        raise CliError(explain_api_error(error.status, error.detail, "set the model of", ctx.namespace,
                                         args.name, ctx.prog)) from None
    before = ((rollout.get("spec") or {}).get("model") or {}).get("version")
    ctx.out(f"{where}: spec.model {before} -> {args.model_version} ({args.path}"
            f"{', sha256 ' + args.sha256[:12] + '...' if args.sha256 else ', no digest'}); follow it with: "
            f"{ctx.prog} status {args.name} -n {ctx.namespace} --watch")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    prog = program_name(sys.argv[0])
    args = parse_args(argv, prog)

    def fail(message: str) -> int:
        print(f"{prog}: {message}", file=sys.stderr)
        return EXIT_ERROR

    try:
        info = kube.login_info(args.kubeconfig, args.context)
    except kopf.LoginError as error:
        return fail(str(error))

    async def session() -> int:
        api = kube.KubeApi(info, relogin=lambda: kube.login_info(args.kubeconfig, args.context))
        ctx = Context(api, args.namespace or info.default_namespace or "default", prog,
                      lambda text: print(text, flush=True), _utcnow, interval=WATCH_INTERVAL_SECONDS,
                      kube_context=args.context)
        try:
            return await run(args, ctx)
        except kube.KubeError as error:
            action = {"list": "list", "get": "get", "status": "get", "history": "get"}.get(args.command, "patch")
            raise CliError(explain_api_error(error.status, error.detail, action, ctx.namespace,
                                             getattr(args, "name", None), prog, args.context)) from None
        finally:
            await api.close()

    try:
        return asyncio.run(session())
    except CliError as error:
        return fail(str(error))
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as error:
        return fail(f"cannot reach the Kubernetes API at {info.server} ({error or type(error).__name__}); "
                    "check the cluster is up and --context / --kubeconfig point at it")
    except KeyboardInterrupt:
        return EXIT_OK  # Ctrl-C ends a --watch


if __name__ == "__main__":
    sys.exit(main())
