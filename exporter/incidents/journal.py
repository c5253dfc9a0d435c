"""Incident events as log lines, under a rate limit: a storm of incidents (hundreds of distinct
causes a minute) must not flood the log that on-call reads. At most `per_minute` lines a
minute; the rest are counted and said in one summary line when the minute is over. Pure: events
and the time in, lines out (recorder.py writes them)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from exporter.incidents.model import IncidentView
from exporter.incidents.tracker import IncidentEvent

MESSAGES = {"begin": "incident begin", "update": "incident update", "end": "incident end"}
LEVELS = {"begin": "warning", "update": "warning", "end": "info"}
SUPPRESSED = "incident log events suppressed"


@dataclass(frozen=True)
class LogLine:
    level: str  # a structlog method: info | warning
    message: str
    fields: dict[str, Any]


# not in a log line: the id is `incident`; the evidence is spread; the cause and the last
# time seen say nothing an event's own time and evidence do not
_NOT_LOGGED = frozenset({"id", "evidence", "cause", "last_seen_at"})


def fields_of(incident: IncidentView) -> dict[str, Any]:
    """One flat record per event, for JSON and logfmt alike: the incident, then its evidence
    (pid, application_name, statement, relation, pool, ...)."""
    flat: dict[str, Any] = {"incident": incident["id"]}
    flat.update({k: v for k, v in incident.items() if k not in _NOT_LOGGED and v is not None})
    flat.update(incident["evidence"])
    return flat


class Journal:
    def __init__(self, per_minute: int = 30, window_seconds: float = 60.0) -> None:
        self._per_window = per_minute
        self._window = window_seconds
        self._started: float | None = None
        self._written = 0
        self._suppressed: Counter[str] = Counter()

    def lines(self, events: Iterable[IncidentEvent], now: float) -> list[LogLine]:
        lines = self._roll(now)
        for event in events:
            if self._written < self._per_window:
                self._written += 1
                lines.append(LogLine(LEVELS[event.phase], MESSAGES[event.phase],
                                     fields_of(event.incident)))
            else:
                self._suppressed[f"{event.phase}:{event.incident['kind']}"] += 1
        return lines

    def _roll(self, now: float) -> list[LogLine]:
        if self._started is not None and now - self._started < self._window:
            return []
        lines = []
        if self._suppressed:
            lines.append(LogLine("warning", SUPPRESSED, {
                "suppressed": sum(self._suppressed.values()),
                "window_seconds": self._window,
                "by_event": dict(sorted(self._suppressed.items())),
                "see": "/incidents"}))
        self._started, self._written, self._suppressed = now, 0, Counter()
        return lines
