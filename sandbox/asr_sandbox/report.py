"""Judging a story run and reporting it: the per-scenario numbers (pure functions), the summary
table, the exit verdict, and the report folder (Markdown summary + a PNG plot)."""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from asr_sandbox.scenarios import PROMOTED, REVERTED
from asr_sandbox.story import Sample, ScenarioRun, StoryRun
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
                 settings_text: str, thresholds: Mapping[str, float] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    plot = plot_timeline(story, folder / "timeline.png", thresholds=thresholds)
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


# --- the timeline plot ------------------------------------------------------------------------
# Pure helpers first (tested in tests/e2e/test_e2e_report_plot.py), then the drawing.

# One colour per model version, the same in every panel. Red and black are kept for failures and
# for "all requests", grey for "no version".
VERSION_PALETTE = ("tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:olive",
                   "tab:cyan")
PHASE_COLORS = {
    "Pending": "#d9d9d9", "Progressing": "#9ecae1", "Paused": "#fdd0a2", "Promoting": "#a1d99b",
    "Succeeded": "#e5f5e0", "RollingBack": "#fc9272", "RolledBack": "#fee0d2", "Failed": "#de2d26",
}
STAGE_HATCH = "//"
# Threshold keys plot_timeline draws: the analysis metric names the demo's scenarios use.
ERROR_RATE = "error-rate"
P99_LATENCY = "p99-latency-seconds"


@dataclass(frozen=True)
class Span:
    start: float  # seconds since the story started
    end: float
    value: str


def spans(samples: Sequence[Sample], field_name: str, t0: float, end: float | None = None) -> list[Span]:
    """Runs of equal `field_name` (phase, stage, canary, ...) over the samples, in seconds since
    t0. A span lasts until the next sample with another value (the last one until `end`, or
    the last sample). Empty values (e.g. no stage) make no span."""
    out: list[Span] = []
    start: float | None = None
    current = ""
    for sample in samples:
        value = str(getattr(sample, field_name) or "")
        if start is not None and value == current:
            continue
        if start is not None and current:
            out.append(Span(start, sample.at - t0, current))
        start, current = sample.at - t0, value
    if start is not None and current:
        last = samples[-1].at - t0
        out.append(Span(start, max(last, end if end is not None else last), current))
    return out


def phase_changes(samples: Sequence[Sample], t0: float) -> list[tuple[float, str]]:
    """(seconds since t0, new phase) at every phase change after the first sample."""
    return [(span.start, span.value) for span in spans(samples, "phase", t0)[1:]]


def version_colors(story: StoryRun) -> dict[str, str]:
    """A colour per model version, in order of first appearance (answers and status samples),
    so that a version keeps its colour in every panel."""
    seen: list[str] = []
    events: list[tuple[float, str]] = [(r.started, r.version) for r in story.records if r.version]
    for sample in story.samples:
        events += [(sample.at, v) for v in (sample.stable, sample.canary) if v and v != "-"]
    for _, version in sorted(events, key=lambda item: item[0]):
        if version not in seen:
            seen.append(version)
    return {v: VERSION_PALETTE[i % len(VERSION_PALETTE)] for i, v in enumerate(seen)}


def weight_steps(weight_log: Sequence[tuple[float, int]], t0: float, start: float,
                 end: float) -> tuple[list[float], list[int]]:
    """The routed canary weight as a step path from `start` to `end` (seconds since t0): the
    weight in force at `start`, a corner at every change inside, the weight in force at `end`."""
    def at(t: float) -> int:
        before = [weight for moment, weight in weight_log if moment - t0 <= t]
        return before[-1] if before else 0

    xs, ys = [start], [at(start)]
    for moment, weight in weight_log:
        t = moment - t0
        if start < t < end:
            xs += [t, t]
            ys += [ys[-1], weight]
    xs.append(end)
    ys.append(at(end))
    return xs, ys


def error_rates(records: Sequence[RequestRecord], t0: float, end: float, bin_s: float,
                track: str | None = None) -> list[float | None]:
    """Failed share of the requests started in each `bin_s` bin (of one track, or all); None
    for a bin without such requests (nothing to judge, drawn as a gap, not as 0 %)."""
    bins = int(end // bin_s) + 1
    total = [0] * bins
    failed = [0] * bins
    for r in records:
        if track is not None and r.track != track:
            continue
        i = int((r.started - t0) // bin_s)
        if 0 <= i < bins:
            total[i] += 1
            failed[i] += r.failed
    return [f / t if t else None for f, t in zip(failed, total)]


def error_axis_top_percent(rates: Sequence[float | None], threshold: float | None = None) -> float:
    """The error panel's y-axis top in %: the largest rate or the threshold, whichever is higher,
    with 15 % room above it; at least 1 %, at most 100 %."""
    values = [r for r in rates if r is not None] + ([threshold] if threshold is not None else [])
    top = max(values, default=0.0) * 100 * 1.15
    return min(100.0, max(1.0, top))


@dataclass(frozen=True)
class Restore:
    scenario: str
    start: float  # seconds since t0: the first failure (or first canary request; the alert)
    end: float  # traffic restored on stable
    label: str

    @property
    def seconds(self) -> float:
        return self.end - self.start


def restore_intervals(story: StoryRun) -> list[Restore]:
    """Time to restore per bad or reverted scenario, in seconds since the story started: from the
    first failed canary request (else the first canary request) to the gateway routing 0 % to the
    canary; for an alert after a promotion, from the alert to the first answer from the previous
    version."""
    t0 = story.started
    out: list[Restore] = []
    for run in story.runs:
        end_at = run.ended or max([r.started for r in story.records] + [run.started])
        if run.scenario.expect == REVERTED and run.alert_sent_at is not None:
            back = [r.started for r in story.records if r.started >= run.alert_sent_at
                    and r.version == run.previous_stable and r.status == 200]
            if back:
                out.append(Restore(run.scenario.key, run.alert_sent_at - t0, min(back) - t0,
                                   f"alert -> {run.previous_stable}"))
            continue
        if not run.scenario.bad:
            continue
        canary = [r for r in story.records if run.started <= r.started <= end_at and r.track == "canary"]
        failures = [r.started for r in canary if r.failed]
        first = min(failures) if failures else (min(r.started for r in canary) if canary else None)
        if first is None:
            continue
        restored = traffic_restored_at(story.weight_log, first)
        if restored is not None:
            out.append(Restore(run.scenario.key, first - t0, restored - t0,
                               "first failure -> stable" if failures else "first request -> stable"))
    return out


def plot_timeline(story: StoryRun, path: Path, bin_s: float = 2.0,
                  thresholds: Mapping[str, float] | None = None) -> Path:
    """Phase strip, canary weight, error rate (canary vs all), latency and serving version over
    time: phase changes and shaded stages (e.g. shadow) across all panels, thresholds dashed,
    one colour per version, time to restore as arrows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    thresholds = dict(thresholds or {})
    t0 = story.started
    end = max([r.started + r.latency_s for r in story.records] + [s.at for s in story.samples] + [t0 + 1]) - t0
    colors = version_colors(story)
    fig, axes = plt.subplots(5, 1, figsize=(13, 12), sharex=True, constrained_layout=True,
                             gridspec_kw={"height_ratios": [0.45, 1.2, 1, 1, 0.9]})
    ax_p, ax_w, ax_e, ax_l, ax_v = axes

    # Phase strip: a band per phase, named where it is wide enough; stages hatched over it.
    phases = spans(story.samples, "phase", t0, end)
    for span in phases:
        ax_p.axvspan(span.start, span.end, color=PHASE_COLORS.get(span.value, "#f0f0f0"), lw=0)
        if span.end - span.start >= end / 40:
            ax_p.text((span.start + span.end) / 2, 0.5, span.value, ha="center", va="center", fontsize=7,
                      rotation=0 if span.end - span.start >= end / 12 else 90)
    stages = spans(story.samples, "stage", t0, end)
    for span in stages:
        for ax in axes:
            ax.axvspan(span.start, span.end, facecolor="none", edgecolor="0.35", hatch=STAGE_HATCH, lw=0, alpha=0.5)
        ax_w.text((span.start + span.end) / 2, 50, f"{span.value} stage", ha="center", va="center", fontsize=8,
                  bbox={"boxstyle": "round", "fc": "white", "ec": "0.35"})
    for at, _phase in phase_changes(story.samples, t0):
        for ax in axes[1:]:
            ax.axvline(at, color="0.6", lw=0.6, ls=":")
    ax_p.set_yticks([])
    ax_p.set_ylabel("phase", rotation=0, ha="right", va="center")
    for run in story.runs:
        ax_p.text(run.started - t0, 1.05, run.scenario.key, fontsize=8, va="bottom", transform=ax_p.get_xaxis_transform())

    # Canary weight, the area under it in the canary version's colour.
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
    for span in spans(story.samples, "canary", t0, end):
        if span.value in colors:
            fx, fy = weight_steps(story.weight_log, t0, span.start, span.end)
            ax_w.fill_between(fx, fy, color=colors[span.value], alpha=0.25, lw=0)
    ax_w.plot(xs, ys, color="black", lw=1.8, label="routed to canary (gateway)")
    ax_w.plot([s.at - t0 for s in story.samples], [s.weight for s in story.samples], color="0.45", lw=1, drawstyle="steps-post",
              ls="--", label="status.canaryWeight")
    for restore in restore_intervals(story):
        ax_w.annotate("", xy=(restore.end, 85), xytext=(restore.start, 85),
                      arrowprops={"arrowstyle": "->", "color": "tab:red", "lw": 1.5})
        ax_w.text(restore.start, 88, f"{restore.seconds:.1f} s to restore", color="tab:red", fontsize=7, va="bottom")
    ax_w.set_ylabel("canary weight %")
    ax_w.set_ylim(-5, 105)
    ax_w.legend(loc="upper left", fontsize=7)

    # Error rate: canary requests (bars in the canary version's colour) vs all requests (a line).
    centers = [(i + 0.5) * bin_s for i in range(int(end // bin_s) + 1)]
    canary_rates = error_rates(story.records, t0, end, bin_s, track="canary")
    all_rates = error_rates(story.records, t0, end, bin_s)
    canary_at = spans(story.samples, "canary", t0, end)

    def canary_color(x: float) -> str:
        return next((colors.get(s.value, "0.5") for s in canary_at if s.start <= x <= s.end), "0.5")

    bars = [(x, r * 100) for x, r in zip(centers, canary_rates) if r is not None]
    if bars:
        ax_e.bar([b[0] for b in bars], [b[1] for b in bars], width=bin_s * 0.9,
                 color=[canary_color(b[0]) for b in bars], alpha=0.8)
    ax_e.plot(centers, [r * 100 if r is not None else float("nan") for r in all_rates], color="black", lw=1,
              drawstyle="steps-mid", label="all requests")
    error_max = thresholds.get(ERROR_RATE)
    if error_max is not None:
        ax_e.axhline(error_max * 100, color="tab:red", ls="--", lw=1, label=f"{ERROR_RATE} max {error_max:.0%}")
    ax_e.set_ylim(0, error_axis_top_percent(canary_rates + all_rates, error_max))
    ax_e.set_ylabel(f"error rate %\n(per {bin_s:g} s)")
    # The bars take the canary version's colour, so their legend entry shows a neutral one.
    handles, _ = ax_e.get_legend_handles_labels()
    handles.append(Patch(color="0.6", label="canary requests (bar colour: the canary's version)"))
    ax_e.legend(handles=handles, loc="upper left", fontsize=7)

    # Latency per answer, coloured by the version that answered; canary answers as triangles.
    for version, color in colors.items():
        for track, marker in (("stable", "o"), ("canary", "^")):
            pts = [(r.started - t0, r.latency_s) for r in story.records
                   if r.version == version and r.track == track and r.status == 200]
            if pts:
                ax_l.scatter(*zip(*pts), s=7, marker=marker, color=color)
    errs = [(r.started - t0, max(r.latency_s, 1e-3)) for r in story.records if r.failed]
    if errs:
        ax_l.scatter(*zip(*errs), s=14, marker="x", color="tab:red", label="failed")
    p99_max = thresholds.get(P99_LATENCY)
    if p99_max is not None:
        ax_l.axhline(p99_max, color="tab:red", ls="--", lw=1, label=f"p99 max {p99_max:g} s")
    ax_l.set_ylabel("latency s\n(o stable, ^ canary)")
    ax_l.set_yscale("log")
    if errs or p99_max is not None:
        ax_l.legend(loc="upper left", fontsize=7)

    # The version that served each answer.
    versions = list(colors)
    for version in versions:
        answered = [r.started - t0 for r in story.records if r.version == version]
        if answered:
            ax_v.scatter(answered, [versions.index(version)] * len(answered), s=6, color=colors[version])
    ax_v.set_yticks(range(len(versions)), versions)
    ax_v.set_ylim(-0.5, max(len(versions), 1) - 0.5)
    ax_v.set_ylabel("serving version\n(per answer)")
    ax_v.set_xlabel("seconds since the demo started")
    ax_v.set_xlim(0, end)

    handles = [Patch(color=c, label=v) for v, c in colors.items()]
    handles += [Patch(color=PHASE_COLORS[p], label=p) for p in PHASE_COLORS if any(s.value == p for s in phases)]
    if stages:
        handles.append(Patch(facecolor="none", edgecolor="0.35", hatch=STAGE_HATCH, label="stage"))
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 8), fontsize=8)
    fig.suptitle("asr-rollout demo: phase, canary weight, error rate, latency, serving version")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
