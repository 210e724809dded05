"""Canary analysis: PromQL templates, verdicts, and the Prometheus metric source."""
