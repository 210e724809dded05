"""The shortened demo story, end to end, with every part real: the kmock API emulator over HTTP,
the operator unchanged as a subprocess, real inference-server processes as pods (node agent),
the gateway routing by the HTTPRoute weights, a real Prometheus, real audio as traffic.

The only stand-in is the emulator itself (no kube-apiserver can run here). One run of the story
(v1 -> v2 promoted -> v3-broken rolled back by the error rate) is shared by the tests below.
"""
from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest

from asr_sandbox import scenarios as sc
from asr_sandbox.report import summarize, unexpected_failures, verdict, write_report
from asr_sandbox.sandbox import Sandbox
from asr_sandbox.story import StoryRun, run_story

REPO_ROOT = Path(__file__).resolve().parents[2]
ASSETS = REPO_ROOT / ".assets"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]


@pytest.fixture(scope="module")
def story(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[StoryRun, Path]]:
    from asr_sandbox.demo_assets import build_demo_models

    build_demo_models(ASSETS)
    workdir = tmp_path_factory.mktemp("e2e-story")
    log = io.StringIO()
    with Sandbox(ASSETS / "models", workdir / "run", sc.NAMESPACE, sc.ROLLOUT, http_route=sc.ROLLOUT) as sandbox:
        run = run_story(sandbox, sc.SHORT_STORY, sc.DemoSettings(), ASSETS / "audio", rate=3.0, out=log)
    assert not run.error, f"{run.error}\n--- timeline ---\n{log.getvalue()}"
    yield run, workdir


def _run(story: StoryRun, key: str):  # type: ignore[no-untyped-def]
    return next(r for r in story.runs if r.scenario.key == key)


def test_good_version_is_promoted_by_hot_reload_without_restarting_stable_pods(story: tuple[StoryRun, Path]) -> None:
    run, _ = story
    good = _run(run, "good")
    assert good.ok, good.detail
    assert good.stable_pids_before and good.stable_pids_after == good.stable_pids_before  # same processes
    assert good.stable_path_after == "paraformer-tiny/v2"
    # After the promotion the stable pods themselves answer with v2 (hot reload, same pods).
    later = [r for r in run.records if r.started > good.ended + 1 and r.track == "stable" and r.status == 200]
    assert later and {r.version for r in later} <= {"v2"}
    assert {r.pod for r in later} <= set(good.stable_pids_before)
    assert sum(run.restarts.values()) == 0


def test_version_failing_requests_is_rolled_back_by_error_rate(story: tuple[StoryRun, Path]) -> None:
    run, _ = story
    errors = _run(run, "errors")
    assert errors.ok, errors.detail
    assert errors.canary_path_after == errors.stable_path_after == "paraformer-tiny/v2"
    summary = summarize(errors, run.records, run.weight_log)
    assert summary.failed > 0  # the bad version really failed requests while it had traffic
    assert summary.restore_s is not None and summary.restore_s > 0
    # Traffic is back on stable: nothing after the rollback is routed to the canary.
    routed_zero = [at for at, weight in run.weight_log if weight == 0 and at > errors.started]
    assert routed_zero
    assert not [r for r in run.records if r.track == "canary" and r.started > min(routed_zero) + 1]


def test_no_request_lost_and_errors_only_from_the_bad_canary(story: tuple[StoryRun, Path]) -> None:
    run, _ = story
    assert run.records
    assert not [r for r in run.records if r.lost]
    assert unexpected_failures(run) == []
    summaries = [summarize(r, run.records, run.weight_log) for r in run.runs]
    result = verdict(run, summaries, len(sc.SHORT_STORY))
    assert result.ok, result.reasons


def test_report_has_summary_and_plot(story: tuple[StoryRun, Path]) -> None:
    run, workdir = story
    summaries = [summarize(r, run.records, run.weight_log) for r in run.runs]
    summary = write_report(workdir / "report", run, summaries, verdict(run, summaries, 2), "e2e")
    text = summary.read_text()
    assert "**PASS**" in text and "v3-broken" in text and "error rate" in text
    png = (workdir / "report" / "timeline.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 20_000
