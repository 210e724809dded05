"""Two operator replicas, as the chart runs them (replicaCount: 2, peering on), are safe:
kopf peering lets exactly one of them reconcile while the other stands by, and when the working
one stops (a rolling update, a drained node) the standby takes over.

Both replicas are the real operator with the chart's flags and env (the peering priority is
left unset, so each draws a random one, as in the cluster), against the API emulator with the
KopfPeering object the chart renders. Each replica logs in with its own token, so the
emulator's request log tells which replica wrote what.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from asr_sandbox.kube_emulator import EmulatorServer
from asr_sandbox.processes import free_port
from tests.deploy.operator_run import (
    NAMESPACE, RO, RecordingEmulator, deployment_controller, emulated_cluster, example_rollout,
    kubeconfig_for, phase, start_operator,
)
from tests.support.kube import KubeClient, wait_for

VALUES = {"replicaCount": 2, "watchNamespaces": [NAMESPACE], "verbose": True}
PEERING = ("kopf.dev/v1", "kopfpeerings")
REPLICAS = ("asr-rollout-a", "asr-rollout-b")


def writes_by(api: EmulatorServer, recorder: RecordingEmulator, replica: str) -> list[str]:
    """Writes to rollouts and their children that this replica made (peering keep-alives aside)."""
    def collect() -> list[str]:
        return [f"{r.method} {r.path}" for i, r in enumerate(recorder.request_log)
                if recorder.credentials.get(i) == f"Bearer token-{replica}"
                and r.verb in ("create", "patch", "update", "delete") and r.resource != "kopfpeerings"]
    return api.call(collect)  # type: ignore[no-any-return]


def paused(log: str) -> bool:
    """Whether kopf's last word on peering in this log leaves the operator paused. kopf starts
    paused until it has read the peering object; a standby that joins second never resumes,
    one that was alone first logs that it pauses in favour of the new, higher peer."""
    return log.rfind("Resuming operations after the pause") < log.rfind("Pausing operations in favour of") \
        or "Resuming operations after the pause" not in log


def peers(kube: KubeClient) -> dict[str, Any]:
    return kube.get(*PEERING, NAMESPACE, "asr-rollout").get("status") or {}


def test_one_replica_works_the_other_stands_by_and_takes_over(tmp_path: Path) -> None:
    with emulated_cluster(VALUES) as (api, recorder, kube):
        operators = {
            pod: start_operator(VALUES, kubeconfig_for(tmp_path / f"kubeconfig-{pod}", api.url, f"token-{pod}"),
                                tmp_path / f"{pod}.log", pod, free_port())
            for pod in REPLICAS}
        try:
            def logs() -> str:
                return "\n".join(f"--- {pod}\n{op.log_tail(2000)}" for pod, op in operators.items())

            # Both replicas announce themselves in the chart's KopfPeering, each with its own priority.
            seen = wait_for(lambda: set(REPLICAS) <= set(peers(kube)) and peers(kube), 30,
                            "both replicas in the peering object", context=logs)
            assert seen[REPLICAS[0]]["priority"] != seen[REPLICAS[1]]["priority"]
            active, standby = sorted(REPLICAS, key=lambda pod: seen[pod]["priority"], reverse=True)
            # The standby may have been alone first: wait until it has seen the higher peer.
            wait_for(lambda: paused(operators[standby].log_tail(1_000_000)), 30, f"{standby} to stand by",
                     context=logs)

            with deployment_controller(kube):
                kube.create(example_rollout("examples/rollout-replica-ratio.yaml", "call-center"))
                wait_for(lambda: phase(kube, "call-center") == "Succeeded", 30, "the first version", context=logs)
                assert writes_by(api, recorder, active)
                assert writes_by(api, recorder, standby) == [], "the standby replica wrote while paused"

                # The working replica stops; its peering record goes with it, the standby resumes.
                operators[active].stop()
                kube.patch(*RO, NAMESPACE, "call-center",
                           {"spec": {"model": {"version": "v2.1.0", "path": "sensevoice-small/v2.1.0"}}})
                wait_for(lambda: phase(kube, "call-center") == "Paused", 30,
                         "the former standby to start the canary", context=logs)
                assert writes_by(api, recorder, standby)
        finally:
            for operator in operators.values():
                operator.stop()
