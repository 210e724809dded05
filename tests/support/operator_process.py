"""The real operator (`python -m asr_operator`) as a subprocess against the emulator."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Sequence

from tests.support.paths import REPO_ROOT
from tests.support.processes import ManagedProcess
from tests.support.prometheus import free_port


def operator_process(namespaces: Sequence[str], kubeconfig: Path, log_path: Path,
                     extra_args: Sequence[str] = ()) -> ManagedProcess:
    """`python -m asr_operator --standalone --disable-scanning --namespace NS...`, its own
    metrics on a free port, no alert webhook; KUBECONFIG points at the emulator."""
    argv = [sys.executable, "-m", "asr_operator", "--standalone", "--disable-scanning",
            "--metrics-port", str(free_port()), "--webhook-port", "0", "--verbose"]
    for namespace in namespaces:
        argv += ["--namespace", namespace]
    argv += list(extra_args)
    pythonpath = os.pathsep.join(str(REPO_ROOT / p) for p in ("operator", "sandbox", "."))
    env = dict(os.environ, KUBECONFIG=str(kubeconfig), PYTHONPATH=pythonpath, PYTHONUNBUFFERED="1")
    return ManagedProcess(argv, log_path, env=env, cwd=REPO_ROOT)
