"""`status.conditions`: set one (its transition time moves only when its status flips), read one."""
from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

from ..durations import format_time


def set_condition(status: dict[str, Any], kind: str, value: bool | None, reason: str, message: str,
                  now: datetime.datetime) -> None:
    """`value` None: Unknown (e.g. Healthy before a new canary's first analysis)."""
    conditions: list[dict[str, Any]] = status.setdefault("conditions", [])
    text = "Unknown" if value is None else "True" if value else "False"
    for condition in conditions:
        if condition.get("type") == kind:
            if condition.get("status") != text:
                condition["lastTransitionTime"] = format_time(now)
            condition.update(status=text, reason=reason, message=message)
            return
    conditions.append({"type": kind, "status": text, "reason": reason, "message": message,
                       "lastTransitionTime": format_time(now)})


def condition_of(status: Mapping[str, Any], kind: str) -> dict[str, Any] | None:
    for condition in status.get("conditions") or []:
        if condition.get("type") == kind:
            return dict(condition)
    return None
