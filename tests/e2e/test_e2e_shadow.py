"""The shadow stage end to end, on the real processes of the demo's sandbox: the operator as a
subprocess, real inference servers as pods (stable copies its requests to the canary through
the sandbox's Service proxy, the one mocked part besides the API emulator), a real Prometheus,
real audio through the gateway.

One run: v1 serving, then v1.1-broken (its shadow error rate rolls it back: no user request
ever reaches it), then v1.1 (v1's weights under a new name: passes the stage, goes on to its
weights, promoted). No assertion on time.
"""
from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from asr_sandbox import scenarios as sc
from asr_sandbox.report import unexpected_failures
from asr_sandbox.sandbox import Sandbox
from asr_sandbox.story import ScenarioRun, StoryRun, run_story
from asr_sandbox.traffic import RequestRecord

REPO_ROOT = Path(__file__).resolve().parents[2]
ASSETS = REPO_ROOT / ".assets"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]


@pytest.fixture(scope="module")
def story(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[StoryRun, dict[str, str]]]:
    from asr_sandbox.demo_assets import build_demo_models

    build_demo_models(ASSETS)
    workdir = tmp_path_factory.mktemp("e2e-shadow")
    log = io.StringIO()
    by_key = {s.key: s for s in sc.SHADOW_STORY}
    with Sandbox(ASSETS / "models", workdir / "run", sc.NAMESPACE, sc.ROLLOUT, http_route=sc.ROLLOUT) as sandbox:
        run = run_story(sandbox, [by_key["shadow-errors"], by_key["shadow-good"]], sc.DemoSettings(),
                        ASSETS / "audio", rate=3.0, out=log)
        cm = sandbox.api.get("ConfigMap", sc.NAMESPACE, f"{sc.ROLLOUT}-stable-model") or {}
        stable_config = yaml.safe_load((cm.get("data") or {}).get("model.yaml") or "{}")
    assert not run.error, f"{run.error}\n--- timeline ---\n{log.getvalue()}"
    yield run, stable_config


def _run(story: StoryRun, key: str) -> ScenarioRun:
    return next(r for r in story.runs if r.scenario.key == key)


def _in(story: StoryRun, run: ScenarioRun) -> list[RequestRecord]:
    return [r for r in story.records if run.started <= r.started <= run.ended]


def test_broken_version_is_rolled_back_by_the_shadow_stage_with_no_user_answer_from_it(
        story: tuple[StoryRun, dict[str, str]]) -> None:
    run, _ = story
    broken = _run(run, "shadow-errors")
    assert broken.ok, broken.detail
    assert "shadow-error-rate" in broken.detail
    assert broken.shadow_copies > 0  # it was judged on copies of stable's requests ...
    users = _in(run, broken)
    assert users  # ... while users kept being answered, by stable alone
    assert not [r for r in users if r.version == broken.scenario.version or r.track == "canary"]
    assert not [r for r in users if r.failed]
    stage = [s for s in run.samples if broken.started <= s.at <= broken.ended and s.stage == "shadow"]
    assert stage and all(s.weight == 0 and s.routed_weight == 0 for s in stage)


def test_good_version_passes_the_stage_and_goes_on_to_its_weights(story: tuple[StoryRun, dict[str, str]]) -> None:
    run, stable_config = story
    good = _run(run, "shadow-good")
    assert good.ok, good.detail
    samples = [s for s in run.samples if good.started <= s.at <= good.ended]
    first_stage = next(i for i, s in enumerate(samples) if s.stage == "shadow")
    later_weights = {s.weight for s in samples[first_stage:] if not s.stage}
    assert {25, 50} & later_weights  # after the stage, the steps' weights
    assert good.shadow_copies > 0 and good.user_answers_from_version > 0
    # the stage is over: stable carries no copy setting any more
    assert stable_config.get("version") == good.scenario.version and "shadow" not in stable_config


def test_no_request_lost_and_none_failed(story: tuple[StoryRun, dict[str, str]]) -> None:
    run, _ = story
    assert run.records and not [r for r in run.records if r.lost]
    assert not unexpected_failures(run) and not [r for r in run.records if r.failed]
    assert sum(run.restarts.values()) == 0
