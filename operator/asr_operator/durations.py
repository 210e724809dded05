"""Go-style duration strings (`30s`, `1m`, `1h30m`, `250ms`) and RFC 3339 timestamps."""
from __future__ import annotations

import datetime
import re

_UNIT_SECONDS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_WHOLE = re.compile(r"^(?:\d+(?:\.\d+)?(?:ns|us|µs|ms|s|m|h))+$")


def parse_duration(text: str) -> float:
    """Seconds in a Go-style duration; raises ValueError with a hint on anything else."""
    if not isinstance(text, str):
        raise ValueError(f"{text!r} is not a duration string; write e.g. 30s, 1m, 1h30m")
    if text == "0":
        return 0.0
    if not _WHOLE.match(text):
        raise ValueError(f"{text!r} is not a duration; write e.g. 30s, 1m, 1h30m (units ns us ms s m h)")
    return sum(float(number) * _UNIT_SECONDS[unit] for number, unit in _PART.findall(text))


def format_time(moment: datetime.datetime) -> str:
    """RFC 3339 in UTC with a `Z`, the way Kubernetes writes timestamps."""
    return moment.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str | None) -> datetime.datetime | None:
    if not text:
        return None
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


def seconds_between(earlier: str | None, later: datetime.datetime) -> float | None:
    start = parse_time(earlier)
    return None if start is None else (later - start).total_seconds()
