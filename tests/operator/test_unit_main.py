"""The operator's command line and peering settings (docs/contracts.md, "Operator process")."""
from __future__ import annotations

import subprocess
import sys

import pytest

from asr_operator.__main__ import parse_args, peering_options
from asr_sandbox.paths import REPO_ROOT


def test_flags() -> None:
    args = parse_args(["--namespace", "a", "-n", "b", "--standalone", "--disable-scanning",
                       "--metrics-port", "0", "--webhook-port", "9000", "--verbose"])
    assert (args.namespace, args.standalone, args.disable_scanning, args.metrics_port, args.webhook_port,
            args.verbose) == (["a", "b"], True, True, 0, 9000, True)
    defaults = parse_args([])
    assert (defaults.namespace, defaults.metrics_port, defaults.webhook_port) == ([], 8080, 8081)


def test_a_bad_port_is_refused_with_a_hint(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--metrics-port", "70000"])
    assert "use a port 1..65535, or 0 to turn it off" in capsys.readouterr().err


def test_peering_from_env() -> None:
    assert peering_options({"ASR_PEERING_NAME": "p", "ASR_PEERING_PRIORITY": "7"}) == peering_options(
        {"ASR_PEERING_NAME": "p", "ASR_PEERING_PRIORITY": "7"})
    fixed = peering_options({"ASR_PEERING_PRIORITY": "7"})
    assert (fixed.name, fixed.priority) == ("asr-rollout", 7)
    drawn = {peering_options({}).priority for _ in range(5)}
    assert all(1 <= p < 2**31 for p in drawn) and len(drawn) > 1  # replicas must not tie
    with pytest.raises(SystemExit, match="ASR_PEERING_PRIORITY='high' is not an integer"):
        peering_options({"ASR_PEERING_PRIORITY": "high"})


def test_help_runs_without_a_cluster() -> None:
    result = subprocess.run([sys.executable, "-m", "asr_operator", "--help"], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=60, env={"PYTHONPATH": str(REPO_ROOT / "operator"), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0 and "--disable-scanning" in result.stdout


def test_the_event_handler_runs_on_the_event_loop() -> None:
    """kopf runs a sync handler in a worker thread, where asyncio.Event.set() (waking a rollout's
    daemon) is not thread-safe: `poke` must be a coroutine function."""
    import asyncio

    from asr_operator import handlers
    assert asyncio.iscoroutinefunction(handlers.poke)
