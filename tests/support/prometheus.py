"""A real Prometheus server for tests: Debian's `prometheus` binary on 127.0.0.1, a temporary
TSDB, a 1 s scrape interval and static targets; ready once the first scrape is queryable."""
from __future__ import annotations

import shutil
import socket
import time
from pathlib import Path
from typing import Any

import requests
import yaml

from tests.support.processes import ManagedProcess


def free_port() -> int:
    """A port that was free a moment ago (the caller binds it right away)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrometheusServer:
    def __init__(self, workdir: Path, targets: list[str], scrape_interval: str = "1s",
                 job: str = "asr-pods") -> None:
        self.workdir = workdir
        self.targets = targets
        self.scrape_interval = scrape_interval
        self.job = job
        self.port = 0
        self.process: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _write_config(self) -> Path:
        config = {
            "global": {"scrape_interval": self.scrape_interval, "evaluation_interval": self.scrape_interval,
                       "scrape_timeout": self.scrape_interval},
            "scrape_configs": [{"job_name": self.job, "static_configs": [{"targets": self.targets}]}],
        }
        path = self.workdir / "prometheus.yml"
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        return path

    def start(self, timeout: float = 60.0) -> "PrometheusServer":
        binary = shutil.which("prometheus")
        if binary is None:
            raise RuntimeError("`prometheus` is not installed: run `make system-packages` "
                               "(Debian package `prometheus`)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self._write_config()
        self.port = free_port()
        self.process = ManagedProcess([
            binary, f"--config.file={config}", f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn",
            "--storage.tsdb.retention.time=1h",
        ], self.workdir / "prometheus.log").start()
        self.wait_until_scraped(timeout)
        return self

    def wait_until_scraped(self, timeout: float) -> None:
        """Until every target has been scraped once and its `up` sample is queryable."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and not self.process.running:
                raise RuntimeError(f"prometheus exited:\n{self.process.log_tail()}")
            try:
                result = self.query(f'up{{job="{self.job}"}}')
                if len(result) >= len(self.targets):
                    return
            except (requests.RequestException, RuntimeError):
                pass
            time.sleep(0.25)
        log = self.process.log_tail() if self.process else ""
        raise RuntimeError(f"prometheus did not scrape {self.targets} within {timeout:.0f}s:\n{log}")

    def query(self, promql: str) -> list[dict[str, Any]]:
        response = requests.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=5)
        body = response.json()
        if body.get("status") != "success":
            raise RuntimeError(f"query {promql!r} failed: {body}")
        return body["data"]["result"]

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def __enter__(self) -> "PrometheusServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
