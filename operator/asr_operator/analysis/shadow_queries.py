"""PromQL for the shadow stage: the canary judged on copies of stable's live requests.

The canary exports its shadow work under names of their own (docs/contracts.md), apart from
user traffic, so a shadow copy never counts toward the user-facing error rate or minRequests:

- asr_shadow_requests_total{code}            copies the canary answered (503: it shed the copy)
- asr_shadow_request_duration_seconds        seconds to transcribe a copy
- asr_shadow_real_time_factor                processing seconds per audio second
- asr_shadow_char_edits_total                character edits from stable's transcript to the canary's
- asr_shadow_reference_chars_total           characters of stable's transcripts (the CER denominator)

A 503 is load shedding, not a model error: it is left out of the error rate and of the request
count (the canary has proven nothing on a copy it did not transcribe).
"""
from __future__ import annotations

from .queries import QueryScope, _selector, error_share_query, mean_query, p99_query, window_text

SHADOW_ERROR_RATE = "shadow-error-rate"
SHADOW_P99 = "shadow-p99-latency-seconds"
SHADOW_RTF = "shadow-real-time-factor"
SHADOW_CER = "shadow-cer"
SHADOW_METRICS = (SHADOW_ERROR_RATE, SHADOW_P99, SHADOW_RTF, SHADOW_CER)

_ANSWERED = ',code!="503"'
_ERRORS = ',code=~"5..",code!="503"'


def shadow_request_count_query(scope: QueryScope, window_seconds: float) -> str:
    """Copies the canary transcribed (or failed on) in the window: what minRequests counts in the stage."""
    return f"sum(increase(asr_shadow_requests_total{_selector(scope, _ANSWERED)}[{window_text(window_seconds)}]))"


def shadow_error_rate_query(scope: QueryScope, window_seconds: float) -> str:
    return error_share_query("asr_shadow_requests_total", scope, window_seconds, _ERRORS, _ANSWERED)


def shadow_p99_latency_query(scope: QueryScope, window_seconds: float) -> str:
    return p99_query("asr_shadow_request_duration_seconds", scope, window_seconds)


def shadow_real_time_factor_query(scope: QueryScope, window_seconds: float) -> str:
    return mean_query("asr_shadow_real_time_factor", scope, window_seconds)


def shadow_cer_query(scope: QueryScope, window_seconds: float) -> str:
    """CER of the canary against stable's transcripts over the window (micro average: all edits
    over all reference characters). `> 0` on the denominator: copies of silence alone (no
    reference characters) give no value, Inconclusive, rather than a division by zero."""
    window = window_text(window_seconds)
    return (f"sum(increase(asr_shadow_char_edits_total{_selector(scope)}[{window}])) / "
            f"(sum(increase(asr_shadow_reference_chars_total{_selector(scope)}[{window}])) > 0)")


def shadow_query(name: str, scope: QueryScope, window_seconds: float) -> str:
    builders = {SHADOW_ERROR_RATE: shadow_error_rate_query, SHADOW_P99: shadow_p99_latency_query,
                SHADOW_RTF: shadow_real_time_factor_query, SHADOW_CER: shadow_cer_query}
    if name not in builders:
        raise KeyError(f"no shadow query named {name!r}; shadow metrics are {', '.join(SHADOW_METRICS)}")
    return builders[name](scope, window_seconds)
