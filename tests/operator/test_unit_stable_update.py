"""spec.strategy.stableUpdate (hot | rolling | auto): how the stable pods take a promoted or
rolled-back version, as decide() tables on the pure state machine (the World of
test_unit_state_machine applies the actions to plain dicts)."""
from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

import pytest

from asr_operator import children
from asr_operator.analysis import queries
from asr_operator.spec import ModelRef, PodTemplate, parse_spec
from asr_operator.state_machine import EnsureDeployment, Observations, wants
from asr_operator.state_machine.children_plan import (
    every_pod_has_room, model_revision, stable_pod_revision, stable_update_mode,
)
from tests.operator.test_unit_state_machine import T0, World, canary_world, rollout_spec, settled


@pytest.mark.parametrize("setting, room, mode", [
    ("hot", False, "hot"), ("hot", None, "hot"),          # hot is today's behaviour, whatever the room
    ("rolling", True, "rolling"),
    ("auto", True, "hot"), ("auto", False, "rolling"),
    ("auto", None, "rolling"),                             # unknown room: a restart, never an OOM
])
def test_stable_update_mode(setting: str, room: bool | None, mode: str) -> None:
    assert stable_update_mode(setting, room) == mode


@pytest.mark.parametrize("values, pods, expected", [
    ([1.0, 1.0], 2, True),
    ([1.0, 0.0], 2, False),
    ([1.0], 2, None),            # a pod that reports nothing: unknown
    ([0.0], 2, False),           # one pod without room is enough to say no
    ([], 0, None),
])
def test_every_pod_has_room(values: list[float], pods: int, expected: bool | None) -> None:
    assert every_pod_has_room(values, pods) is expected


def test_the_revision_moves_only_with_the_stable_version_under_rolling() -> None:
    v2 = ModelRef("m", "v2", "m/v2", sha256="ab" * 32)
    assert model_revision(v2) == "v2@" + "ab" * 8
    assert model_revision(ModelRef("m", "v2", "m/v2")) == "v2@m/v2"
    assert stable_pod_revision("rolling", v2, "v1@m/v1", stable_changed=True) == model_revision(v2)
    assert stable_pod_revision("rolling", v2, "v1@m/v1", stable_changed=False) == "v1@m/v1"
    assert stable_pod_revision("hot", v2, "v1@m/v1", stable_changed=True) == "v1@m/v1"  # no restart


def with_update(setting: str) -> dict[str, Any]:
    spec = rollout_spec("v1", [{"setWeight": 100}])
    spec["strategy"]["stableUpdate"] = setting
    return spec


class RoomWorld(World):
    """World, plus the stable pods' asr_model_can_load_beside as Prometheus would answer it."""

    room: bool | None = None

    def observe(self, analysis: Any) -> Observations:
        obs = super().observe(analysis)
        spec = self.spec()
        asked = not isinstance(spec, Exception) and wants(spec, self.status, self.now).stable_room  # type: ignore[arg-type]
        return replace(obs, stable_has_room=self.room if asked else None)


def stable_revisions(world: World) -> list[str | None]:
    seen: list[str | None] = []
    for decision in world.decisions:
        for action in decision.actions:
            if isinstance(action, EnsureDeployment) and action.track == "stable":
                if not seen or seen[-1] != action.model_revision:
                    seen.append(action.model_revision)
    return seen


def promote_v2(setting: str, room: bool | None = None) -> RoomWorld:
    world = RoomWorld(with_update(setting))
    world.room = room
    settled(world)
    world.set_spec_version("v2")
    world.run(lambda w: w.phase == "Succeeded" and w.status["stableVersion"] == "v2")
    return world


@pytest.mark.parametrize("setting, room, revisions, mode", [
    ("hot", None, [None], "hot"),                                      # today: the template never changes
    ("rolling", None, ["v1@paraformer-tiny/v1", "v2@paraformer-tiny/v2"], "rolling"),
    ("auto", True, ["v1@paraformer-tiny/v1"], "hot"),                  # first version: no pod reported yet
    ("auto", False, ["v1@paraformer-tiny/v1", "v2@paraformer-tiny/v2"], "rolling"),
    ("auto", None, ["v1@paraformer-tiny/v1", "v2@paraformer-tiny/v2"], "rolling"),
])
def test_promotion_by_stable_update(setting: str, room: bool | None, revisions: list[str | None], mode: str) -> None:
    world = promote_v2(setting, room)
    assert stable_revisions(world) == revisions
    assert world.status["stableUpdate"] == mode
    # either way the stable ConfigMap is the source of truth for the model path
    assert world.configmaps["stable"].version == "v2"


def test_rolling_rollback_reverts_the_configmap_and_the_pod_revision() -> None:
    world = RoomWorld(with_update("rolling"))
    settled(world)
    world.set_spec_version("v2")
    world.served = {"v1": 2}  # the new pods never serve v2: the promotion times out
    world.run(lambda w: w.phase == "Promoting")
    assert world.status["stablePodRevision"] == "v2@paraformer-tiny/v2"
    world.tick(301)
    assert world.phase == "RollingBack"
    assert world.configmaps["stable"].version == "v1"
    assert world.status["stablePodRevision"] == "v1@paraformer-tiny/v1"
    assert stable_revisions(world)[-1] == "v1@paraformer-tiny/v1"


def test_auto_asks_prometheus_only_while_a_version_can_change() -> None:
    spec = parse_spec(with_update("auto"))
    assert not wants(spec, {"phase": "Succeeded"}, T0).stable_room
    assert wants(spec, {"phase": "Promoting"}, T0).stable_room
    assert not wants(parse_spec(with_update("hot")), {"phase": "Promoting"}, T0).stable_room


def test_stable_update_is_checked() -> None:
    from asr_operator.spec import InvalidSpec

    with pytest.raises(InvalidSpec, match="spec.strategy.stableUpdate: 'blue-green' is not one of hot, rolling, auto"):
        parse_spec(with_update("blue-green"))
    assert parse_spec(rollout_spec("v1")).strategy.stable_update == "hot"


def test_the_pod_template_carries_the_revision_only_when_given() -> None:
    template = PodTemplate.from_status(None) or parse_spec(rollout_spec("v1")).template
    plain = children.deployment("ns", "r", "stable", 2, "v1", template, {})
    assert "annotations" not in plain["spec"]["template"]["metadata"]
    rolled = children.deployment("ns", "r", "stable", 2, "v1", template, {}, "v2@m/v2")
    assert rolled["spec"]["template"]["metadata"]["annotations"] == {children.MODEL_REVISION_ANNOTATION: "v2@m/v2"}
    assert copy.deepcopy(rolled["spec"]["template"]["metadata"]["labels"]) == plain["spec"]["template"]["metadata"]["labels"]


def test_can_load_beside_query_is_per_pod_of_one_track() -> None:
    assert queries.can_load_beside_query("speech", "meeting-zh", "stable") == (
        'max by (pod) (asr_model_can_load_beside{namespace="speech",rollout="meeting-zh",track="stable"})')
