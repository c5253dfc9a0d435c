"""How the Prefect API writes times, durations and nested settings, read into plain numbers."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any


def iso(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_time(value: Any) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


_ISO_DURATION = re.compile(
    r"^P(?:(?P<d>\d+(?:\.\d+)?)D)?(?:T(?:(?P<h>\d+(?:\.\d+)?)H)?(?:(?P<m>\d+(?:\.\d+)?)M)?"
    r"(?:(?P<s>\d+(?:\.\d+)?)S)?)?$")


def setting_number(value: Any) -> float | None:
    """A setting as a number: booleans 0/1, numbers as they are, ISO 8601 durations in seconds."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        match = _ISO_DURATION.match(value)
        if match and value != "P":
            parts = {k: float(v) for k, v in match.groupdict().items() if v}
            return timedelta(days=parts.get("d", 0), hours=parts.get("h", 0),
                             minutes=parts.get("m", 0), seconds=parts.get("s", 0)).total_seconds()
        try:
            return float(value)
        except ValueError:
            return None
    return None


def dig(data: Any, path: str) -> Any:
    for key in path.split("."):
        if not isinstance(data, Mapping):
            return None
        data = data.get(key)
    return data
