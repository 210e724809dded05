"""A real Prometheus for the sandbox: Debian's `prometheus` on 127.0.0.1, a temporary TSDB, a 1 s
scrape interval, and its targets in a `file_sd_configs` file that the node agent rewrites as
pods come and go (Prometheus re-reads it by itself, as it would a Kubernetes service discovery).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import requests
import yaml


def free_port() -> int:
    """A port that was free a moment ago (the caller binds it right away)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrometheusRunner:
    """`targets` are written to `<workdir>/targets/<job>.json`; `set_targets` rewrites one job."""

    JOBS = ("asr-pods", "asr-operator")

    def __init__(self, workdir: Path, scrape_interval: str = "1s") -> None:
        self.workdir = Path(workdir)
        self.scrape_interval = scrape_interval
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "prometheus.log"

    def _targets_file(self, job: str) -> Path:
        return self.workdir / "targets" / f"{job}.json"

    def set_targets(self, job: str, targets: list[tuple[str, dict[str, str]]]) -> None:
        """Replace a job's targets: `[(host:port, extra labels)]`. Written atomically (rename),
        so Prometheus never reads half a file."""
        groups = [{"targets": [address], "labels": labels} for address, labels in sorted(targets)]
        path = self._targets_file(job)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(groups, indent=1))
        os.replace(tmp, path)

    def _write_config(self) -> Path:
        config: dict[str, Any] = {
            "global": {"scrape_interval": self.scrape_interval, "evaluation_interval": self.scrape_interval,
                       "scrape_timeout": self.scrape_interval},
            "scrape_configs": [
                {"job_name": job, "file_sd_configs": [{"files": [str(self._targets_file(job))],
                                                        "refresh_interval": "1s"}]}
                for job in self.JOBS
            ],
        }
        path = self.workdir / "prometheus.yml"
        path.write_text(yaml.safe_dump(config))
        return path

    def start(self, timeout_s: float = 60.0) -> "PrometheusRunner":
        binary = shutil.which("prometheus")
        if binary is None:
            raise RuntimeError("`prometheus` is not installed: run `make system-packages` "
                               "(the Debian package `prometheus`)")
        (self.workdir / "targets").mkdir(parents=True, exist_ok=True)
        for job in self.JOBS:
            if not self._targets_file(job).exists():
                self.set_targets(job, [])
        config = self._write_config()
        self.port = free_port()
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen([
                binary, f"--config.file={config}", f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn",
                "--storage.tsdb.retention.time=1h",
            ], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.proc.returncode}: "
                                   f"{self.log_path.read_text(errors='replace')[-2000:]}")
            try:
                if requests.get(f"{self.url}/-/ready", timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"prometheus not ready within {timeout_s:.0f} s; log: {self.log_path}")

    def query(self, promql: str) -> list[dict[str, Any]]:
        body = requests.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=5).json()
        if body.get("status") != "success":
            raise RuntimeError(f"query {promql!r} failed: {body}")
        return body["data"]["result"]

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def __enter__(self) -> "PrometheusRunner":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
