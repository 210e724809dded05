"""Pure rules of the kopf adapter and the Prometheus source: retry backoff, the peering fallback's
message, and how a Prometheus failure is told to a person."""
from __future__ import annotations

import requests

from asr_operator.analysis.prometheus_source import describe_query_error
from asr_operator.handlers import error_backoff_seconds, missing_peering_message, peering_object_paths


def test_failed_ticks_back_off_exponentially_up_to_five_minutes() -> None:
    assert [error_backoff_seconds(n) for n in range(1, 9)] == [5, 10, 20, 40, 80, 160, 300, 300]


def test_peering_objects_are_looked_for_where_kopf_looks() -> None:
    assert peering_object_paths("asr-rollout", ["a", "b"], clusterwide=False) == [
        "/apis/kopf.dev/v1/namespaces/a/kopfpeerings", "/apis/kopf.dev/v1/namespaces/b/kopfpeerings"]
    assert peering_object_paths("asr-rollout", [], clusterwide=True) == ["/apis/kopf.dev/v1/clusterkopfpeerings"]


def test_missing_peering_message_names_the_object_and_both_ways_out() -> None:
    text = missing_peering_message("asr-rollout", ["speech"], clusterwide=False)
    assert "KopfPeering asr-rollout in namespace(s) speech does not exist" in text
    assert "--standalone" in text and "peering.yaml" in text and "one replica" in text
    assert "ClusterKopfPeering asr-rollout" in missing_peering_message("asr-rollout", [], clusterwide=True)


def test_prometheus_errors_say_the_cause_without_the_url() -> None:
    refused = requests.exceptions.ConnectionError(
        "HTTPConnectionPool(host='p', port=9090): Max retries exceeded with url: /api/v1/query?query=sum%28rate%28x%7B")
    text = describe_query_error("http://p:9090", refused, 3.0)
    assert text.startswith("Prometheus at http://p:9090 is unreachable") and "%28" not in text
    assert "did not answer within 3s" in describe_query_error("http://p:9090", requests.exceptions.ReadTimeout(), 3.0)
    bad_query = Exception('HTTP Status Code 400 (b\'{"status":"error","errorType":"bad_data","error":"1:5: parse error: '
                          'unexpected end of input"}\')')
    assert describe_query_error("http://p:9090", bad_query, 3.0) == (
        "Prometheus at http://p:9090 refused the query: 1:5: parse error: unexpected end of input")
    long = describe_query_error("http://p:9090", Exception("word " * 200), 3.0)
    assert long.endswith(" …") and "wor …" not in long  # cut between words
