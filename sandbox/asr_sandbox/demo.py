"""`make demo`: the whole rollout story on one machine.

    python -m asr_sandbox.demo --assets .assets              # the local sandbox (about 5 minutes)
    python -m asr_sandbox.demo --short                       # v2 promoted + the error-rate rollback
    python -m asr_sandbox.demo --shadow-only                 # the shadow stage's three scenarios
    python -m asr_sandbox.demo --kubeconfig ~/.kube/config   # a real cluster: apply the examples
    python -m asr_sandbox.demo --server-only                 # the inference server's own short story

The sandbox (asr_sandbox.sandbox): the kmock API emulator, the operator unchanged as a
subprocess, a node agent running every pod as a real inference server, a gateway routing by
the HTTPRoute weights, a real Prometheus, and real audio as traffic (mocked: the Kubernetes API
(kmock), and a Service proxy standing in for cluster DNS + kube-proxy). The story
(asr_sandbox.scenarios): v1 serving; three versions judged first in a shadow stage on copies of
stable's requests (a broken one and one whose transcripts drift, both rolled back before any
user gets their answers, and a good one that goes on to its weights); v2 promoted by hot reload; a corrupt, a failing and a slow
version each rolled back by a different guard; a modestly slower version, inside every absolute
bound, rolled back by its real-time factor against stable's; a promoted version reverted by an
alert.

Exit status 0 only if every scenario ended as expected and no client request was lost (the only
failed requests are those the bad versions returned while they held canary traffic).
"""
from __future__ import annotations

import argparse
import datetime
import shutil
import sys
from pathlib import Path

from asr_sandbox import scenarios as sc

DEFAULT_RATE = 3.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m asr_sandbox.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--assets", type=Path, default=Path(".assets"), help="generated models and audio")
    parser.add_argument("--reports", type=Path, default=Path("reports"), help="where the report folder goes")
    parser.add_argument("--short", action="store_true", help="only v2 (promoted) and the error-rate rollback")
    parser.add_argument("--shadow-only", action="store_true",
                        help="only the shadow-stage scenarios: a broken and a drifting version rolled back "
                             "before any user gets their answers, a good one through to promotion (~2 min)")
    parser.add_argument("--rate", type=float, default=DEFAULT_RATE, help="requests per second of traffic")
    parser.add_argument("--kubeconfig", type=Path, help="a real cluster: apply the example rollouts there")
    parser.add_argument("--examples", type=Path, nargs="*",
                        help="with --kubeconfig: manifests to apply (default: examples/rollout-*.yaml)")
    parser.add_argument("--server-only", action="store_true", help="the inference server's own short story")
    parser.add_argument("--kubelet-sync-period", type=float, default=60.0,
                        help="the node agent's kubelet sync period in seconds: a changed ConfigMap reaches a "
                             "running pod up to this (+ jitter) later, as in a cluster (0: at once)")
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.rate > 20:
        parser.error(f"--rate {args.rate}: use 0 < rate <= 20 requests per second (2 CPU cores serve about 10)")
    if args.kubeconfig is not None and not args.kubeconfig.is_file():
        parser.error(f"--kubeconfig {args.kubeconfig}: no such file")
    return args


def run_sandbox(args: argparse.Namespace) -> int:
    from asr_sandbox.demo_assets import build_demo_models
    from asr_sandbox.node_agent import KubeletDelay
    from asr_sandbox.report import summarize, table, verdict, write_report
    from asr_sandbox.sandbox import Sandbox
    from asr_sandbox.story import run_story

    print("building models and audio (idempotent) ...", flush=True)
    build_demo_models(args.assets)
    story = sc.SHORT_STORY if args.short else sc.SHADOW_STORY if args.shadow_only else sc.FULL_STORY
    settings = sc.DemoSettings()
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    folder = args.reports / f"demo-{stamp}"
    with Sandbox(args.assets / "models", folder / "run", sc.NAMESPACE, sc.ROLLOUT, http_route=sc.ROLLOUT,
                 kubelet_delay=KubeletDelay(sync_period_s=args.kubelet_sync_period)) as sandbox:
        result = run_story(sandbox, story, settings, args.assets / "audio", rate=args.rate)
    shutil.rmtree(folder / "run" / "prometheus" / "data", ignore_errors=True)  # the TSDB: large, not needed
    summaries = [summarize(run, result.records, result.weight_log) for run in result.runs]
    outcome = verdict(result, summaries, len(story))
    settings_text = (f"analysis interval {settings.interval}, failureLimit {settings.failure_limit}, "
                     f"minRequests {settings.min_requests}, window {settings.window}, "
                     f"progressDeadlineSeconds {settings.progress_deadline_s}, error rate <= {settings.max_error_rate}, "
                     f"p99 <= {settings.max_p99_latency_s} s, real-time factor <= {settings.max_real_time_factor} "
                     f"and <= {settings.max_real_time_factor_ratio}x stable's, steps {list(settings.steps)}, traffic {args.rate:g} req/s, "
                     f"kubelet ConfigMap sync period {args.kubelet_sync_period:g} s (+ jitter) with the operator's config push; "
                     f"shadow scenarios: a shadow stage of {settings.shadow_percent}% for {settings.shadow_duration} first, "
                     f"shadow error rate <= {settings.max_shadow_error_rate}, shadow CER vs stable <= {settings.max_shadow_cer}")
    # The plot draws the bounds the scenarios' analysis uses (scenarios.rollout_manifest).
    thresholds = {"error-rate": settings.max_error_rate, "p99-latency-seconds": settings.max_p99_latency_s}
    report = write_report(folder, result, summaries, outcome, settings_text, thresholds=thresholds)
    print()
    print("\n".join(table(summaries)))
    print()
    for run in result.runs:
        if run.scenario.shadow:
            print(f"shadow stage, {run.scenario.title}: {run.shadow_copies} copies to the canary, "
                  f"{run.user_answers_from_version} user answers from it, {run.failed_user_requests} failed user "
                  f"requests, {run.ended - run.started:.1f} s")
    lost = sum(r.lost for r in result.records)
    print(f"requests: {len(result.records)} sent, {lost} lost; pod restarts: {sum(result.restarts.values())}")
    print(f"report: {report} (plot: {report.parent / 'timeline.png'})")
    if outcome.ok:
        print("PASS: every scenario ended as expected and no request was lost")
        return 0
    print("FAIL:\n  " + "\n  ".join(outcome.reasons))
    return 1


def run_cluster(args: argparse.Namespace) -> int:
    from asr_sandbox.cluster import apply_examples, default_examples

    files = args.examples or default_examples()
    print(f"real cluster ({args.kubeconfig}): applying {', '.join(str(f) for f in files)}; the sandbox "
          "(emulator, node agent, gateway, local Prometheus, traffic) is skipped")
    for line in apply_examples(args.kubeconfig, files):
        print("  " + line)
    print("watch it with: kubectl get asr -A -w   (the operator must be installed: helm install "
          "asr-rollout deploy/helm/asr-rollout)")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.server_only:
        import asyncio

        from asr_sandbox.server_story import story

        return asyncio.run(story(args.assets))
    if args.kubeconfig is not None:
        return run_cluster(args)
    try:
        return run_sandbox(args)
    except KeyboardInterrupt:
        print("\ninterrupted; everything started was stopped")
        return 130


if __name__ == "__main__":
    sys.exit(main())

