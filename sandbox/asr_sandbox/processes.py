"""Subprocesses of the sandbox and the tests: started in their own process group, logs to a
file, always stopped; and free local ports for the servers they start."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path
from typing import Self, Sequence


def free_port() -> int:
    """A port on 127.0.0.1 that was free a moment ago (the caller binds it right away)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_process_group(proc: subprocess.Popen[bytes] | None, grace: float) -> None:
    """SIGTERM the process group `proc` leads (started with `start_new_session=True`), then
    SIGKILL it if it is still running after `grace` seconds. Nothing if it has exited."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    except ProcessLookupError:
        pass


def _kill_me_with_parent() -> None:
    """Linux: SIGKILL this child when the process that started it dies, even by SIGKILL (a test
    run killed by a timeout must not leave servers behind)."""
    import ctypes
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class ManagedProcess:
    """A child process whose output goes to `log_path`; `kill()` sends SIGKILL (a crash),
    `stop()` SIGTERM then SIGKILL. Never touches processes it did not start."""

    def __init__(self, argv: Sequence[str], log_path: Path, env: dict[str, str] | None = None,
                 cwd: Path | None = None, die_with_parent: bool = False) -> None:
        self.die_with_parent = die_with_parent
        self.argv = list(argv)
        self.log_path = log_path
        self.env = env
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Self:
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT,
                                         env=self.env, cwd=self.cwd, start_new_session=True,
                                         preexec_fn=_kill_me_with_parent if self.die_with_parent else None)
        finally:
            log.close()
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the whole process group: no cleanup handler of the child runs."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self, grace: float = 5.0) -> None:
        stop_process_group(self.proc, grace)

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
