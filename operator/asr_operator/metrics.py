"""The operator's own Prometheus metrics, served on --metrics-port."""
from __future__ import annotations

import datetime
import logging
from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from .durations import format_time

log = logging.getLogger("asr_operator.metrics")
PHASES = ("Pending", "Progressing", "Paused", "Promoting", "Succeeded", "RollingBack", "RolledBack", "Failed")


class OperatorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        labels = ["namespace", "rollout"]
        self.phase = Gauge("asr_rollout_phase", "1 for the rollout's current phase", [*labels, "phase"],
                           registry=self.registry)
        self.weight = Gauge("asr_rollout_canary_weight", "Canary traffic weight in percent", labels,
                            registry=self.registry)
        self.step = Gauge("asr_rollout_current_step", "Index of the current strategy step", labels,
                          registry=self.registry)
        self.verdicts = Counter("asr_rollout_analysis_verdicts_total", "Analysis measurements by verdict",
                                [*labels, "metric", "verdict"], registry=self.registry)
        self.rollbacks = Counter("asr_rollout_rollbacks_total", "Rollbacks started", labels, registry=self.registry)
        self.promotions = Counter("asr_rollout_promotions_total", "Promotions completed", labels,
                                  registry=self.registry)
        self.tick_lag = Histogram("asr_rollout_tick_lag_seconds",
                                  "How late a scheduled reconcile tick woke up (event-loop saturation)",
                                  buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
                                  registry=self.registry)
        self.reconcile_errors = Counter("asr_rollout_reconcile_errors_total", "Reconcile ticks that raised",
                                        labels, registry=self.registry)

    def serve(self, port: int) -> None:
        if port <= 0:
            return
        try:
            start_http_server(port, registry=self.registry)
        except OSError as error:
            log.error("metrics port %d unavailable (%s); running without /metrics. Pick a free --metrics-port.",
                      port, error)

    def record(self, namespace: str, rollout: str, old: Mapping[str, Any], decision: Any,
               now: datetime.datetime) -> None:
        new = decision.status
        phase = str(new.get("phase") or "")
        for known in PHASES:
            self.phase.labels(namespace, rollout, known).set(1 if known == phase else 0)
        self.weight.labels(namespace, rollout).set(int(new.get("canaryWeight") or 0))
        self.step.labels(namespace, rollout).set(int(new.get("currentStep") or 0))
        analysis = new.get("analysis") or {}
        if analysis.get("lastRun") == format_time(now):
            for metric in analysis.get("metrics") or []:
                self.verdicts.labels(namespace, rollout, metric.get("name", ""), metric.get("phase", "")).inc()
        before = old.get("phase")
        if phase == "RollingBack" and before != "RollingBack":
            self.rollbacks.labels(namespace, rollout).inc()
        if phase == "Succeeded" and before == "Promoting":
            self.promotions.labels(namespace, rollout).inc()

    def error(self, namespace: str, rollout: str) -> None:
        self.reconcile_errors.labels(namespace, rollout).inc()

    def forget(self, namespace: str, rollout: str) -> None:
        """Drop every series of a deleted rollout (else /metrics reports it forever)."""
        labels = {"namespace": namespace, "rollout": rollout}
        for metric in (self.phase, self.weight, self.step, self.verdicts, self.rollbacks, self.promotions,
                       self.reconcile_errors):
            metric.remove_by_labels(labels)
