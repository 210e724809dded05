"""The shadow side of `make bench-e2e` (`--sides ...,shadow`): what the shadow stage buys and
what it costs. JSON lines `{"bench": NAME, "side": "shadow", "value": NUMBER, "target": TEXT}`:

- failed_user_requests_broken_version: user requests that failed while v1.1-broken was rolled
  out with a shadow stage first (target 0; the `after` side, no stage, measures the same version's
  cost without it as requests_failed_during_rollback);
- user_answers_from_bad_version: user requests answered by the broken and by the drifting
  version (target 0 each);
- shadow_detect_seconds: the first copy the sandbox's Service proxy carried to the canary ->
  the rollout seen RolledBack (probed ten times a second), per bad version; target <= 15 s at
  the demo's 5 s analysis interval;
- shadow_user_p99_ratio: user-visible p99 latency on a stable server with copies on (by default
  of 100 % of its requests, the worst case; `--shadow-percent`) vs off, under the same open-loop load, alternating blocks; the
  canary server pinned to CPU core 1, the stable server and the load generator to core 0
  (os.sched_setaffinity, inherited by the processes started under it); the value is the pooled
  p99 ratio with a paired bootstrap 95 % interval over the (off, on) block pairs; target <= 1.05.
"""
from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any, TextIO

from asr_sandbox import scenarios as sc

DETECT_TARGET_S = 15.0
P99_TARGET = 1.05
CLIPS = ("speech_gap", "ten_seconds")  # the demo's traffic (asr_sandbox.story.TRAFFIC_CLIPS)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, int(round(q / 100.0 * (len(ordered) - 1)))))
    return ordered[index]


def paired_p99_ratio(pairs: list[tuple[list[float], list[float]]], resamples: int = 2000,
                     seed: int = 14) -> tuple[float, float, float]:
    """(pooled p99 on / pooled p99 off, bootstrap 2.5 %, 97.5 %): the (off, on) block pairs are
    resampled as units, so slow drift of the machine's load cancels within each pair."""
    def ratio(chosen: list[tuple[list[float], list[float]]]) -> float:
        off = [v for o, _ in chosen for v in o]
        on = [v for _, n in chosen for v in n]
        return percentile(on, 99) / percentile(off, 99)

    rng = random.Random(seed)
    draws = sorted(ratio([rng.choice(pairs) for _ in pairs]) for _ in range(resamples))
    return ratio(pairs), draws[int(0.025 * (resamples - 1))], draws[int(0.975 * (resamples - 1))]


def first_forward_after(log: Any, track: str, after: float) -> float | None:
    return next((at for at, t in list(log) if t == track and at >= after), None)


def stage_lines(args: argparse.Namespace, log: TextIO) -> tuple[list[dict[str, Any]], bool]:
    """The operator's shadow stage in the demo sandbox: v1 serving, v1.1-broken, v1.1-drift."""
    from asr_sandbox.bench_e2e import StableProbe
    from asr_sandbox.node_agent import KubeletDelay
    from asr_sandbox.sandbox import Sandbox
    from asr_sandbox.story import run_story

    by_key = {s.key: s for s in sc.SHADOW_STORY}
    keys = ["shadow-errors", "shadow-drift"]
    common = {"side": "shadow", "kubelet_sync_period_s": args.kubelet_sync_period}
    settings = sc.DemoSettings()
    with tempfile.TemporaryDirectory(prefix="asr-bench-e2e-shadow-") as tmp:
        with Sandbox(args.assets / "models", Path(tmp), sc.NAMESPACE, sc.ROLLOUT, http_route=sc.ROLLOUT,
                     kubelet_delay=KubeletDelay(sync_period_s=args.kubelet_sync_period)) as sandbox:
            probe = StableProbe(sandbox).start()
            try:
                story = run_story(sandbox, [by_key[k] for k in keys], settings, args.assets / "audio",
                                  rate=args.rate, out=log, scenario_timeout_s=200)
            finally:
                probe.stop()
            forward_log = list(sandbox.service_proxy.forward_log)
    if story.error or len(story.runs) != len(keys):
        return [{"bench": "shadow_detect_seconds", **common, "value": None,
                 "error": story.error or "the story did not run"}], False
    lines: list[dict[str, Any]] = []
    ok = True
    for run in story.runs:
        window = [r for r in story.records if run.started <= r.started <= run.ended]
        version = run.scenario.version
        if run.scenario.key == "shadow-errors":
            lines.append({"bench": "failed_user_requests_broken_version", **common, "value": run.failed_user_requests,
                          "target": "0", "with": f"shadow stage {settings.shadow_percent}% for {settings.shadow_duration}",
                          "user_requests": len(window)})
        lines.append({"bench": "user_answers_from_bad_version", **common, "version": version,
                      "value": run.user_answers_from_version, "target": "0", "user_requests": len(window),
                      "copies_to_canary": run.shadow_copies, "detail": run.detail})
        first = first_forward_after(forward_log, "canary", run.started)
        rolled = next((s.at for s in probe.samples if first is not None and s.at >= first and s.phase == "RolledBack"),
                      None)
        value = None if first is None or rolled is None else round(rolled - first, 2)
        lines.append({"bench": "shadow_detect_seconds", **common, "version": version, "value": value,
                      "target": f"<= {DETECT_TARGET_S:g} (analysis interval {settings.interval}, failureLimit "
                                f"{settings.failure_limit})", "caught_by": run.scenario.metric})
        ok = ok and run.ok and run.user_answers_from_version == 0 and run.failed_user_requests == 0
    return lines, ok


def _pin(cpus: set[int]) -> bool:
    try:
        os.sched_setaffinity(0, cpus)
        return True
    except (AttributeError, OSError, ValueError):
        return False


def _copies_sent(server: Any) -> float:
    import urllib.request

    with urllib.request.urlopen(server.url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("asr_shadow_copies_total{") and 'result="sent"' in line)


def p99_lines(args: argparse.Namespace, log: TextIO) -> tuple[list[dict[str, Any]], bool]:
    """User p99 on stable with copies on vs off (see the module docstring)."""
    from asr_sandbox import ConfigMapDir, ServerProcess, model_config
    from asr_sandbox.traffic import TrafficGenerator

    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    pinned = len(cpus) >= 2
    original = set(cpus)
    stable_cpus, canary_cpus = ({cpus[0]}, {cpus[1]}) if pinned else (original, original)
    how = (f"canary server pinned to core {cpus[1]}, stable server and load generator to core {cpus[0]} "
           "(os.sched_setaffinity, inherited by the processes started under it); one torch thread each"
           if pinned else "not pinned (fewer than 2 CPUs usable)")
    audio = [args.assets / "audio" / f"{clip}.wav" for clip in CLIPS]
    pairs: list[tuple[list[float], list[float]]] = []
    copies: dict[str, float] = {"on": 0.0, "off": 0.0}
    env = {"ASR_NAMESPACE": sc.NAMESPACE, "ASR_ROLLOUT": sc.ROLLOUT}
    with tempfile.TemporaryDirectory(prefix="asr-bench-shadow-p99-") as tmp_name:
        tmp = Path(tmp_name)
        models = args.assets / "models"
        canary_cm, stable_cm = ConfigMapDir(tmp / "canary-cm"), ConfigMapDir(tmp / "stable-cm")
        canary_cm.swap(model_config("v1.1", path="paraformer-tiny/v2-same", options={"ncpu": 1}))
        base = model_config("v1", options={"ncpu": 1})
        stable_cm.swap(base)
        try:
            if pinned:
                _pin(canary_cpus)
            canary = ServerProcess(canary_cm.path, models, tmp / "canary.log",
                                   env={**env, "ASR_TRACK": "canary", "POD_NAME": "bench-canary-0"}).start()
            if pinned:
                _pin(stable_cpus)  # the stable server, and this process's load generator threads
            stable = ServerProcess(stable_cm.path, models, tmp / "stable.log",
                                   env={**env, "ASR_TRACK": "stable", "POD_NAME": "bench-stable-0"}).start()
        except BaseException:
            _pin(original)
            raise
        percent = getattr(args, "shadow_percent", 100)
        on_config = {**base, "shadow": {"url": canary.url, "percent": percent}}
        try:
            for index in range(args.shadow_pairs):
                order = ("off", "on") if index % 2 == 0 else ("on", "off")  # ABBA: drift cancels
                measured: dict[str, list[float]] = {}
                for mode in order:
                    stable_cm.swap(on_config if mode == "on" else base)
                    time.sleep(2.0)  # the server re-reads its config every 0.5 s; queued copies drain
                    sent_before = _copies_sent(stable)
                    traffic = TrafficGenerator(stable.url, audio, rate=args.rate, max_seconds=args.shadow_block_s)
                    traffic.start()
                    traffic._thread.join(args.shadow_block_s + 90)
                    traffic.stop()
                    copies[mode] += _copies_sent(stable) - sent_before
                    ok_latencies = [r.latency_s for r in traffic.records if r.status == 200]
                    measured[mode] = ok_latencies
                    log.write(f"shadow p99 pair {index} {mode}: {len(ok_latencies)} answers, p99 "
                              f"{percentile(ok_latencies, 99):.3f} s\n")
                pairs.append((measured["off"], measured["on"]))
        finally:
            stable.stop()
            canary.stop()
            _pin(original)
    ratio, low, high = paired_p99_ratio(pairs)
    off_all = [v for o, _ in pairs for v in o]
    on_all = [v for _, n in pairs for v in n]
    line = {"bench": "shadow_user_p99_ratio", "side": "shadow", "value": round(ratio, 3),
            "ci95": [round(low, 3), round(high, 3)], "target": f"<= {P99_TARGET:g}",
            "p99_off_s": round(percentile(off_all, 99), 4), "p99_on_s": round(percentile(on_all, 99), 4),
            "p50_off_s": round(percentile(off_all, 50), 4), "p50_on_s": round(percentile(on_all, 50), 4),
            "requests_off": len(off_all), "requests_on": len(on_all),
            "copies_sent_on": int(copies["on"]), "copies_sent_off": int(copies["off"]),
            "pairs": len(pairs), "block_s": args.shadow_block_s, "rate": args.rate, "percent": percent,
            "cpus": how}
    return [line], copies["on"] > 0 and copies["off"] == 0
