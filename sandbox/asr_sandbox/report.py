"""Judging a story run and reporting it: the per-scenario numbers (pure functions), the summary
table, the exit verdict, and the report folder (Markdown summary + a PNG plot)."""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from asr_sandbox.scenarios import PROMOTED, REVERTED
from asr_sandbox.story import ScenarioRun, StoryRun
from asr_sandbox.traffic import RequestRecord


@dataclass(frozen=True)
class ScenarioSummary:
    key: str
    title: str
    guard: str
    expected: str
    ok: bool
    outcome: str
    restore_s: float | None  # bad version's first request -> 100 % of traffic back on stable
    restore_note: str
    sent: int
    failed: int
    lost: int
    stable_restarts: int


def first_canary_request(records: Sequence[RequestRecord], start: float, end: float) -> float | None:
    times = [r.started for r in records if start <= r.started <= end and r.track == "canary"]
    return min(times) if times else None


def traffic_restored_at(weight_log: Sequence[tuple[float, int]], after: float) -> float | None:
    """First moment at or after `after` when the gateway routed 0 % to the canary."""
    before = [weight for at, weight in weight_log if at <= after]
    if before and before[-1] == 0:
        return after
    return next((at for at, weight in weight_log if at > after and weight == 0), None)


def stable_restarts(run: ScenarioRun) -> int:
    """Stable pods that got a new process during the scenario (a promotion must restart none)."""
    restarted = 0
    for pod, pids in run.stable_pids_before.items():
        after = run.stable_pids_after.get(pod)
        if after is not None and after != pids:
            restarted += 1
    return restarted


def summarize(run: ScenarioRun, records: Sequence[RequestRecord], weight_log: Sequence[tuple[float, int]]) -> ScenarioSummary:
    s = run.scenario
    window = [r for r in records if run.started <= r.started <= run.ended]
    restore_s: float | None = None
    note = ""
    if s.expect == REVERTED and run.alert_sent_at is not None:
        back = [r.started for r in records if r.started >= run.alert_sent_at and r.version == run.previous_stable
                and r.status == 200]
        if back:  # the promoted version held all traffic: restored = answered by the previous one again
            restore_s = min(back) - run.alert_sent_at
            note = f"from the alert to the first answer from {run.previous_stable}"
    elif s.expect != PROMOTED:
        first = first_canary_request(records, run.started, run.ended)
        if first is None and s.shadow:
            note = "no user request reached it (judged on copies in the shadow stage)"
        elif first is None:
            note = "no request reached it (never ready, never given traffic)"
        else:
            restored = traffic_restored_at(weight_log, first)
            if restored is not None:
                restore_s = restored - first
    return ScenarioSummary(
        key=s.key, title=s.title, guard=s.guard, expected=s.expect, ok=run.ok, outcome=run.detail,
        restore_s=restore_s, restore_note=note, sent=len(window), failed=sum(1 for r in window if r.failed),
        lost=sum(1 for r in window if r.lost), stable_restarts=stable_restarts(run))


def unexpected_failures(story: StoryRun) -> list[RequestRecord]:
    """Failed requests other than those a bad version returned while it held canary traffic."""
    bad_windows = [(r.started, r.ended) for r in story.runs if r.scenario.bad]
    allowed = [
        rec for rec in story.records
        if rec.status >= 500 and rec.track == "canary" and any(a <= rec.started <= b for a, b in bad_windows)
    ]
    return [rec for rec in story.records if rec.failed and rec not in allowed]


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reasons: list[str]


def verdict(story: StoryRun, summaries: Sequence[ScenarioSummary], expected_scenarios: int) -> Verdict:
    reasons = []
    if story.error:
        reasons.append(f"the story stopped early: {story.error}")
    if len(summaries) != expected_scenarios:
        reasons.append(f"{len(summaries)} of {expected_scenarios} scenarios ran")
    reasons += [f"{s.title}: not as expected ({s.outcome})" for s in summaries if not s.ok]
    lost = [r for r in story.records if r.lost]
    if lost:
        reasons.append(f"{len(lost)} request(s) got no answer at all, e.g. {lost[0].error}")
    others = [r for r in unexpected_failures(story) if not r.lost]
    if others:
        reasons.append(f"{len(others)} request(s) failed outside a bad canary's traffic "
                       f"(e.g. HTTP {others[0].status} from {others[0].pod or 'the gateway'})")
    if not story.records:
        reasons.append("no traffic was sent")
    restarted = sum(s.stable_restarts for s in summaries) + sum(story.restarts.values())
    if restarted:
        reasons.append(f"{restarted} pod restart(s); a promotion or rollback must restart none")
    return Verdict(ok=not reasons, reasons=reasons)


def table(summaries: Sequence[ScenarioSummary]) -> list[str]:
    """The summary table as Markdown rows (also readable as plain text)."""
    rows = ["| scenario | caught by | outcome | first bad request -> traffic restored | requests | failed |",
            "|---|---|---|---|---|---|"]
    for s in summaries:
        restore = f"{s.restore_s:.1f} s" if s.restore_s is not None else "-"
        if s.restore_note:
            restore += f" ({s.restore_note})"
        mark = "ok" if s.ok else "UNEXPECTED"
        rows.append(f"| {s.title} | {s.guard} | {mark}: {s.outcome} | {restore} | {s.sent} | {s.failed} |")
    return rows


def write_report(folder: Path, story: StoryRun, summaries: Sequence[ScenarioSummary], result: Verdict,
                 settings_text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    plot = plot_timeline(story, folder / "timeline.png")
    records = story.records
    lines = [
        "# asr-rollout demo", "",
        f"Result: **{'PASS' if result.ok else 'FAIL'}**" + ("" if result.ok else ": " + "; ".join(result.reasons)), "",
        f"Settings: {settings_text}", "",
        f"Requests: {len(records)} sent, {sum(r.status == 200 for r in records)} answered 200, "
        f"{sum(r.failed and not r.lost for r in records)} failed (all from bad canaries unless listed above), "
        f"{sum(r.lost for r in records)} lost. Pod restarts: {sum(story.restarts.values())}.", "",
        *table(summaries), "",
        f"![timeline]({plot.name})", "",
        "Files: `samples.json` (rollout status twice a second), `requests.json` (every request), "
        "`run/` (logs of the operator, every pod and Prometheus).", "",
    ]
    (folder / "summary.md").write_text("\n".join(lines))
    (folder / "samples.json").write_text(json.dumps([asdict(s) for s in story.samples], indent=0))
    (folder / "requests.json").write_text(json.dumps([asdict(r) for r in records], indent=0))
    return folder / "summary.md"


def plot_timeline(story: StoryRun, path: Path, bin_s: float = 2.0) -> Path:
    """Canary weight, error rate, latency and serving version over time, scenarios shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = story.started
    fig, axes = plt.subplots(4, 1, figsize=(12, 10), sharex=True, constrained_layout=True)
    ax_w, ax_e, ax_l, ax_v = axes
    end = max([r.started + r.latency_s for r in story.records] + [s.at for s in story.samples] + [t0 + 1]) - t0

    xs: list[float] = []
    ys: list[int] = []
    for at, weight in story.weight_log:
        if xs:
            xs.append(at - t0)
            ys.append(ys[-1])
        xs.append(at - t0)
        ys.append(weight)
    if xs:
        xs.append(end)
        ys.append(ys[-1])
    ax_w.plot(xs, ys, color="tab:orange", lw=2, label="routed to canary (gateway)")
    ax_w.plot([s.at - t0 for s in story.samples], [s.weight for s in story.samples], color="tab:blue", lw=1,
              ls="--", label="status.canaryWeight")
    ax_w.set_ylabel("canary weight %")
    ax_w.set_ylim(-5, 105)
    ax_w.legend(loc="upper right", fontsize=8)

    bins = int(end // bin_s) + 1
    total = [0] * bins
    failed = [0] * bins
    for r in story.records:
        i = int((r.started - t0) // bin_s)
        if 0 <= i < bins:
            total[i] += 1
            failed[i] += r.failed
    centers = [(i + 0.5) * bin_s for i in range(bins)]
    ax_e.bar(centers, [f / t if t else 0 for f, t in zip(failed, total)], width=bin_s, color="tab:red")
    ax_e.set_ylabel(f"error rate\n(per {bin_s:g} s)")
    ax_e.set_ylim(0, 1.05)

    for track, color in (("stable", "tab:green"), ("canary", "tab:purple")):
        pts = [(r.started - t0, r.latency_s) for r in story.records if r.track == track and r.status == 200]
        if pts:
            ax_l.scatter(*zip(*pts), s=6, color=color, label=f"{track} (200)")
    errs = [(r.started - t0, r.latency_s) for r in story.records if r.failed]
    if errs:
        ax_l.scatter(*zip(*errs), s=10, marker="x", color="tab:red", label="failed")
    ax_l.set_ylabel("latency s")
    ax_l.set_yscale("log")
    ax_l.legend(loc="upper right", fontsize=8)

    versions = sorted({r.version for r in story.records if r.version})
    for r_version in versions:
        pts = [(r.started - t0, versions.index(r_version)) for r in story.records if r.version == r_version]
        ax_v.scatter([p[0] for p in pts], [p[1] for p in pts], s=6)
    ax_v.set_yticks(range(len(versions)), versions)
    ax_v.set_ylabel("serving version\n(per answer)")
    ax_v.set_xlabel("seconds since the demo started")

    for run in story.runs:
        color = {PROMOTED: "tab:green", REVERTED: "tab:blue"}.get(run.scenario.expect, "tab:red")
        for ax in axes:
            ax.axvspan(run.started - t0, (run.ended or run.started) - t0, color=color, alpha=0.07)
        ax_w.text(run.started - t0, 108, run.scenario.key, fontsize=8, va="bottom")
    fig.suptitle("asr-rollout demo: canary weight, error rate, latency, serving version")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
