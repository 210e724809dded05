"""Where measurements come from: the MetricSource interface and its Prometheus implementation.

Prometheus is asked through `prometheus-api-client` (a blocking client, so each query runs in a
worker thread) with a short timeout and no retries: an unreachable Prometheus must turn into an
Error verdict within one tick, not stall the tick.
"""
from __future__ import annotations

import abc
import asyncio
import math
from collections.abc import Mapping
from typing import Any

from .verdict import QueryFailed

Sample = tuple[Mapping[str, str], float]


class MetricSource(abc.ABC):
    @abc.abstractmethod
    async def query(self, promql: str) -> list[Sample]:
        """Instant vector (or scalar as one sample). Raises QueryFailed when it cannot answer."""

    async def query_value(self, promql: str) -> float | None:
        """The single value of a query, None when it returned nothing."""
        samples = await self.query(promql)
        if not samples:
            return None
        if len(samples) > 1:
            raise QueryFailed(f"expected one series, got {len(samples)}; aggregate the query (e.g. sum(...))")
        return samples[0][1]


def _parse_result(result: Any) -> list[Sample]:
    """Vector results are lists of {metric, value: [t, "v"]}; scalars are [t, "v"]."""
    if isinstance(result, list) and len(result) == 2 and not isinstance(result[0], dict):
        return [({}, float(result[1]))]
    samples: list[Sample] = []
    for item in result or []:
        value = item.get("value")
        if value is None:
            raise QueryFailed("a range vector came back; the query must return an instant vector")
        samples.append((dict(item.get("metric") or {}), float(value[1])))
    return samples


def describe_query_error(address: str, error: BaseException, timeout_seconds: float) -> str:
    """What went wrong asking Prometheus, said for a person reading `status.message`: the cause
    and what to check, never the request URL (it holds the whole URL-encoded query)."""
    import requests
    if isinstance(error, requests.exceptions.ConnectionError):
        if isinstance(error, requests.exceptions.ConnectTimeout):
            cause = f"did not accept a connection within {timeout_seconds:g}s"
        else:
            cause = "is unreachable (connection refused or no such host)"
        return (f"Prometheus at {address} {cause}; check spec.analysis.prometheus.address "
                "and that Prometheus runs and is reachable from the operator")
    if isinstance(error, requests.exceptions.Timeout):
        return f"Prometheus at {address} did not answer within {timeout_seconds:g}s; it may be overloaded"
    text = str(error)
    # prometheus-api-client: "HTTP Status Code 400 (b'{...\"error\":\"parse error...\"}')"
    marker = '"error":"'
    if marker in text:
        detail = text.split(marker, 1)[1].split('"', 1)[0]
        return f"Prometheus at {address} refused the query: {_shorten(detail, 240)}"
    return f"Prometheus at {address}: {type(error).__name__}: {_shorten(text, 240)}"


def _shorten(text: str, limit: int) -> str:
    """At most `limit` characters, cut at a word boundary with an ellipsis."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    return text[:limit].rsplit(" ", 1)[0] + " …"


class PrometheusSource(MetricSource):
    def __init__(self, address: str, timeout_seconds: float = 3.0):
        from prometheus_api_client import PrometheusConnect
        from urllib3.util.retry import Retry

        self.address = address
        self._timeout = timeout_seconds
        self._client = PrometheusConnect(url=address, disable_ssl=False, retry=Retry(total=0),
                                         timeout=timeout_seconds)

    def _query_blocking(self, promql: str) -> list[Sample]:
        try:
            return _parse_result(self._client.custom_query(promql))
        except QueryFailed:
            raise
        except Exception as error:  # connection refused, timeout, HTTP 400 on bad PromQL, bad JSON
            raise QueryFailed(describe_query_error(self.address, error, self._timeout)) from error

    async def query(self, promql: str) -> list[Sample]:
        return await asyncio.to_thread(self._query_blocking, promql)


class SourcePool:
    """One client per Prometheus address, shared by every rollout that names it."""

    def __init__(self, timeout_seconds: float = 3.0):
        self._timeout = timeout_seconds
        self._sources: dict[str, MetricSource] = {}

    def get(self, address: str) -> MetricSource:
        if address not in self._sources:
            self._sources[address] = PrometheusSource(address, self._timeout)
        return self._sources[address]


def finite_or_none(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else value
