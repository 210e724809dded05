"""Local-only tooling: test/demo assets, the demo, benchmarks, and the local stand-ins for a
cluster that the demo and the tests share (the Kubernetes API emulator, a real Prometheus).
Production code never imports it.

The two helpers below start real inference-server processes the way a pod runs them, and
write their model config the way a Kubernetes ConfigMap volume does; the demo, the server
benchmark and the server tests share them.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml


class ConfigMapDir:
    """A directory laid out like a mounted ConfigMap: `model.yaml -> ..data/model.yaml`,
    `..data -> ..<timestamp>/`. `swap()` replaces `..data` atomically (rename of a symlink),
    exactly as the kubelet does; `edit_in_place()` rewrites the file under it instead."""

    KEY = "model.yaml"

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._n = 0

    @property
    def path(self) -> Path:
        return self.root / self.KEY

    def swap(self, config: dict[str, Any]) -> None:
        self._n += 1
        target = self.root / f"..{time.strftime('%Y_%m_%d_%H_%M_%S')}.{os.getpid()}_{self._n}"
        target.mkdir()
        (target / self.KEY).write_text(yaml.safe_dump(config, sort_keys=False))
        data = self.root / "..data"
        old = os.readlink(data) if data.is_symlink() else None
        tmp = self.root / "..data_tmp"
        if tmp.is_symlink():
            tmp.unlink()
        tmp.symlink_to(target.name)
        os.replace(tmp, data)
        if not self.path.is_symlink():
            self.path.symlink_to(f"..data/{self.KEY}")
        if old:
            for f in (self.root / old).iterdir():
                f.unlink()
            (self.root / old).rmdir()

    def edit_in_place(self, config: dict[str, Any]) -> None:
        real = self.path.resolve()
        real.write_text(yaml.safe_dump(config, sort_keys=False))


class ServerProcess:
    """`python -m inference_server` on 127.0.0.1 with an OS-picked port, stopped with SIGTERM."""

    _LISTEN = re.compile(r"listening on 127\.0\.0\.1:(\d+)")

    def __init__(self, config_path: Path, models_root: Path, log_path: Path,
                 extra_args: list[str] | None = None, env: dict[str, str] | None = None) -> None:
        self.config_path = config_path
        self.models_root = models_root
        self.log_path = log_path
        self.extra_args = extra_args or []
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.port: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 180.0, wait_ready: bool = True) -> "ServerProcess":
        env = dict(os.environ, **self.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        cmd = [sys.executable, "-m", "inference_server", "--model-config", str(self.config_path),
               "--models-root", str(self.models_root), "--host", "127.0.0.1", "--port", "0",
               *self.extra_args]
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        try:
            self._wait_started(timeout_s, wait_ready)
        except BaseException:
            self.stop()  # never leave a half-started server behind
            raise
        return self

    def _wait_started(self, timeout_s: float, wait_ready: bool) -> None:
        deadline = time.monotonic() + timeout_s
        while self.port is None:
            self._check_alive()
            match = self._LISTEN.search(self.log_path.read_text(errors="replace"))
            if match:
                self.port = int(match.group(1))
            elif time.monotonic() > deadline:
                raise TimeoutError(f"server did not listen within {timeout_s} s; log: {self.log_path}")
            else:
                time.sleep(0.05)
        if wait_ready:
            self.wait_ready(deadline - time.monotonic())

    def _check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"server exited with {self.proc.returncode}; log:\n{self.log_tail()}")

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def get_json(self, path: str) -> tuple[int, Any]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=10) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            self._check_alive()
            try:
                status, _ = self.get_json("/readyz")
                if status == 200:
                    return
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"server not ready within {timeout_s:.0f} s; log:\n{self.log_tail()}")
            time.sleep(0.05)

    def wait_serving(self, version: str, timeout_s: float = 60.0) -> float:
        """Poll until /v1/models names `version` as serving; returns the seconds it took."""
        started = time.monotonic()
        while True:
            status, body = self.get_json("/v1/models")
            if status == 200 and body.get("serving") and body["serving"]["version"] == version:
                return time.monotonic() - started
            if time.monotonic() - started > timeout_s:
                raise TimeoutError(f"version {version} not serving after {timeout_s} s; {body}")
            time.sleep(0.01)

    def stop(self, timeout_s: float = 30.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def model_config(version: str, *, path: str | None = None, vad: bool = True, **extra: Any) -> dict[str, Any]:
    """A model config for a generated paraformer-tiny version (docs/contracts.md)."""
    config: dict[str, Any] = {"name": "paraformer-tiny", "version": version,
                              "path": path or f"paraformer-tiny/{version}"}
    if vad:
        config["vad_path"] = "fsmn-vad/v1"
    config.update(extra)
    return config
