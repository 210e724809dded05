"""The demo's timeline plot (asr_sandbox.report.plot_timeline) on a small synthetic story: its
pure helpers (spans of equal phase/stage, one colour per version, error rates and their axis,
time to restore) and that a PNG comes out. Nothing is started."""
from __future__ import annotations

from pathlib import Path

from asr_sandbox import scenarios as sc
from asr_sandbox.report import (
    PHASE_COLORS, Span, error_axis_top_percent, error_rates, phase_changes, plot_timeline, restore_intervals,
    spans, summarize, verdict, version_colors, weight_steps, write_report,
)
from asr_sandbox.story import Sample, ScenarioRun, StoryRun
from asr_sandbox.traffic import RequestRecord

T0 = 1000.0
GOOD = next(s for s in sc.STORY if s.key == "good")
BROKEN = next(s for s in sc.STORY if s.key == "errors")


def _sample(at: float, phase: str, stable: str, canary: str, weight: int, stage: str = "") -> Sample:
    return Sample(at=T0 + at, phase=phase, step=0, weight=weight, routed_weight=weight, stable=stable,
                  canary=canary, verdicts="", message="", stage=stage)


def _request(at: float, version: str | None, track: str, status: int = 200) -> RequestRecord:
    return RequestRecord(started=T0 + at, latency_s=0.1 if status == 200 else 0.05, status=status, version=version,
                         track=track, pod=f"{track}-0", clip="speech_gap")


def _story() -> StoryRun:
    """v1 stable; v2 shadowed (stage), then canaried and promoted; v3-broken fails on canary
    traffic from t=34 and traffic is back on stable at t=40."""
    samples = [
        _sample(0, "Succeeded", "v1", "-", 0),
        _sample(2, "Progressing", "v1", "v2", 0, stage="shadow"),
        _sample(6, "Progressing", "v1", "v2", 0, stage="shadow"),
        _sample(10, "Progressing", "v1", "v2", 50),
        _sample(16, "Promoting", "v1", "v2", 0),
        _sample(20, "Succeeded", "v2", "-", 0),
        _sample(30, "Progressing", "v2", "v3-broken", 50),
        _sample(38, "RollingBack", "v2", "v3-broken", 0),
        _sample(42, "RolledBack", "v2", "-", 0),
    ]
    records = [_request(t, "v1", "stable") for t in (1, 3, 5, 11, 15)]
    records += [_request(t, "v2", "canary") for t in (12, 14)]
    records += [_request(t, "v2", "stable") for t in (21, 25, 31, 35, 41)]
    records += [_request(32, "v3-broken", "canary"), _request(34, "v3-broken", "canary", 500),
                _request(36, "v3-broken", "canary", 500)]
    weight_log = [(T0, 0), (T0 + 10, 50), (T0 + 16, 0), (T0 + 30, 50), (T0 + 40, 0)]
    runs = [ScenarioRun(GOOD, started=T0 + 2, ended=T0 + 20, ok=True, detail="promoted"),
            ScenarioRun(BROKEN, started=T0 + 28, ended=T0 + 42, ok=True, detail="rolled back")]
    return StoryRun(started=T0, runs=runs, samples=samples, records=records, weight_log=weight_log)


def test_spans_of_equal_phase_and_of_a_stage() -> None:
    story = _story()
    phases = spans(story.samples, "phase", T0, end=50)
    assert [s.value for s in phases] == ["Succeeded", "Progressing", "Promoting", "Succeeded", "Progressing",
                                         "RollingBack", "RolledBack"]
    assert phases[1] == Span(2, 16, "Progressing")
    assert phases[-1] == Span(42, 50, "RolledBack")  # the last span lasts until the end given
    # Only samples with a stage make a span: one shadow band from its first sample to the next step.
    assert spans(story.samples, "stage", T0) == [Span(2, 10, "shadow")]
    assert phase_changes(story.samples, T0)[:2] == [(2, "Progressing"), (16, "Promoting")]
    assert set(s.value for s in phases) <= set(PHASE_COLORS)


def test_one_colour_per_version_in_order_of_appearance() -> None:
    colors = version_colors(_story())
    assert list(colors) == ["v1", "v2", "v3-broken"]
    assert len(set(colors.values())) == 3
    assert "tab:red" not in colors.values()  # red is for failures and thresholds


def test_the_weight_as_a_step_path_within_a_span() -> None:
    """What the canary version's colour fills under the weight line: only its own span."""
    story = _story()
    xs, ys = weight_steps(story.weight_log, T0, 28, 42)
    assert list(zip(xs, ys)) == [(28, 0), (30, 0), (30, 50), (40, 50), (40, 0), (42, 0)]
    assert weight_steps(story.weight_log, T0, 12, 14) == ([12, 14], [50, 50])


def test_error_rates_canary_vs_all_and_an_axis_that_fits() -> None:
    story = _story()
    canary = error_rates(story.records, T0, 40, 4.0, track="canary")
    everyone = error_rates(story.records, T0, 40, 4.0)
    assert canary[0] is None  # no canary request: a gap, not 0 %
    # 32..36: canary 200 at 32 and 500 at 34; all requests add stable's 200 at 35.
    assert canary[8] == 0.5 and everyone[8] == 1 / 3
    assert canary[9] == 1.0 and everyone[9] == 1.0  # 36..40: the canary's 500 alone
    assert canary[3] == 0.0  # v2 on canary: no failure
    assert error_axis_top_percent([0.0, 0.01, None], threshold=0.05) == 0.05 * 100 * 1.15
    assert error_axis_top_percent([0.0, None]) == 1.0
    assert error_axis_top_percent([1.0]) == 100.0


def test_time_to_restore_from_first_failure_to_stable() -> None:
    restores = restore_intervals(_story())
    assert [(r.scenario, r.start, r.end) for r in restores] == [("errors", 34, 40)]
    assert restores[0].seconds == 6
    assert "first failure" in restores[0].label


def test_the_plot_is_a_png_and_the_report_links_it(tmp_path: Path) -> None:
    story = _story()
    path = plot_timeline(story, tmp_path / "timeline.png",
                         thresholds={"error-rate": 0.05, "p99-latency-seconds": 2.5})
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summaries = [summarize(run, story.records, story.weight_log) for run in story.runs]
    summary = write_report(tmp_path / "report", story, summaries, verdict(story, summaries, 2), "synthetic",
                           thresholds={"error-rate": 0.05})
    assert "![timeline](timeline.png)" in summary.read_text()
    assert '"stage": "shadow"' in (tmp_path / "report" / "samples.json").read_text()
