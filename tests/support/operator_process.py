"""The real operator (`python -m asr_operator`) as a subprocess against the emulator."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Sequence

from asr_sandbox.paths import REPO_ROOT
from asr_sandbox.processes import ManagedProcess
from asr_sandbox.processes import free_port


class OperatorProcess(ManagedProcess):
    metrics_port: int = 0

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"


def operator_process(namespaces: Sequence[str], kubeconfig: Path, log_path: Path,
                     extra_args: Sequence[str] = ()) -> OperatorProcess:
    """`python -m asr_operator --standalone --disable-scanning --namespace NS...`, its own
    metrics on a free port, no alert webhook; KUBECONFIG points at the emulator."""
    metrics_port = free_port()
    argv = [sys.executable, "-m", "asr_operator", "--standalone", "--disable-scanning",
            "--metrics-port", str(metrics_port), "--webhook-port", "0", "--verbose"]
    for namespace in namespaces:
        argv += ["--namespace", namespace]
    argv += list(extra_args)
    pythonpath = os.pathsep.join(str(REPO_ROOT / p) for p in ("operator", "sandbox", "."))
    env = dict(os.environ, KUBECONFIG=str(kubeconfig), PYTHONPATH=pythonpath, PYTHONUNBUFFERED="1")
    process = OperatorProcess(argv, log_path, env=env, cwd=REPO_ROOT)
    process.metrics_port = metrics_port
    return process
