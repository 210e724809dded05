"""A real Prometheus for the sandbox and the tests: Debian's `prometheus` on 127.0.0.1, a
temporary TSDB, a 1 s scrape interval, and its targets in `file_sd_configs` files that the node
agent rewrites as pods come and go (Prometheus re-reads them by itself, as it would a Kubernetes
service discovery). Tests that know their targets up front pass them as `targets`: `start()`
then returns only once each has been scraped and its `up` sample is queryable.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import requests
import yaml

from asr_sandbox.processes import ManagedProcess, free_port

__all__ = ["PrometheusRunner", "free_port"]


class PrometheusRunner:
    """`targets` are written to `<workdir>/targets/<job>.json`; `set_targets` rewrites one job."""

    JOBS = ("asr-pods", "asr-operator")

    def __init__(self, workdir: Path, scrape_interval: str = "1s",
                 targets: Mapping[str, Sequence[str]] | None = None) -> None:
        # Absolute: Prometheus resolves relative file_sd paths against its config file's folder.
        self.workdir = Path(workdir).resolve()
        self.scrape_interval = scrape_interval
        self.initial_targets = {job: list(addresses) for job, addresses in (targets or {}).items()}
        self.jobs = tuple(dict.fromkeys([*self.JOBS, *self.initial_targets]))
        self.port = 0
        self.process: ManagedProcess | None = None

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
                for job in self.jobs
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
        for job in self.jobs:
            if job in self.initial_targets:
                self.set_targets(job, [(address, {}) for address in self.initial_targets[job]])
            elif not self._targets_file(job).exists():
                self.set_targets(job, [])
        config = self._write_config()
        self.port = free_port()
        self.process = ManagedProcess([
            binary, f"--config.file={config}", f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn",
            "--storage.tsdb.retention.time=1h",
        ], self.log_path).start()
        deadline = time.monotonic() + timeout_s
        self._wait_until(deadline, self._ready, "ready")
        for job, addresses in self.initial_targets.items():
            self._wait_until(deadline, lambda: len(self.query(f'up{{job="{job}"}}')) >= len(addresses),
                             f"scraping {addresses}")
        return self

    def _ready(self) -> bool:
        return requests.get(f"{self.url}/-/ready", timeout=1).status_code == 200

    def _wait_until(self, deadline: float, condition: Any, what: str) -> None:
        while time.monotonic() < deadline:
            if self.process is not None and not self.process.running:
                raise RuntimeError(f"prometheus exited: {self.process.log_tail(2000)}")
            try:
                if condition():
                    return
            except (requests.RequestException, RuntimeError):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"prometheus not {what} in time; log: {self.log_path}")

    def query(self, promql: str) -> list[dict[str, Any]]:
        body = requests.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=5).json()
        if body.get("status") != "success":
            raise RuntimeError(f"query {promql!r} failed: {body}")
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(grace=10)

    def __enter__(self) -> "PrometheusRunner":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
