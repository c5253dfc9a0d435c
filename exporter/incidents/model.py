"""What an incident is made of: an observation (what one snapshot shows of it, pure data the
source kinds produce) and its evidence, bounded so that memory stays small whatever the
database holds."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NotRequired, TypedDict

from exporter.incidents.fingerprint import MAX_LENGTH as MAX_STATEMENT_LENGTH

# An evidence value: JSON- and log-friendly, and small
Evidence = str | int | float | bool | None | list[str] | list[int]

SEVERITY_ORDER = {"warning": 1, "critical": 2}
MAX_TEXT = 128  # characters of an evidence string that is not a statement
MAX_ITEMS = 10  # items of an evidence list (pids, statements, applications)
MAX_KEYS = 24  # evidence entries per incident


@dataclass(frozen=True)
class Observation:
    """One incident as one snapshot shows it.

    kind: the doctor's check of the same condition (lock_chain, ...), which begins and ends
    exactly when that finding appears and goes. cause: what makes two observations the same
    incident (the application holding the locks, the pool): a storm of short blocks by one
    application is one incident, counted. instances: what tells one occurrence from another
    inside it (the root blocker's pid). magnitude: how many sessions or clients it affects;
    more is worse."""

    kind: str
    target: str
    cause: tuple[tuple[str, str], ...]
    severity: str  # warning | critical, as the finding
    title: str
    evidence: Mapping[str, Evidence]
    magnitude: float = 1.0
    instances: tuple[str, ...] = ()

    @property
    def rank(self) -> tuple[int, float]:
        """How bad: severity first, then how many it affects."""
        return SEVERITY_ORDER.get(self.severity, 0), self.magnitude


class IncidentView(TypedDict):
    """An incident as it is shown: on /incidents (JSON), the landing page, and each log line of
    its events. The tracker makes it (Incident.as_dict); nothing after changes it."""

    id: int
    kind: str  # the doctor's check of the same condition (lock_chain, ...)
    source: str  # the source kind: postgres | pgbouncer | prefect | redis
    target: str
    status: Literal["active", "ended"]
    severity: str  # warning | critical
    title: str
    began_at: str | None  # ISO 8601, UTC
    ended_at: str | None
    last_seen_at: str | None
    duration_seconds: float
    occurrences: int
    end_reason: str | None  # resolved | target not read | not seen after restart
    cause: dict[str, str]
    evidence: dict[str, Evidence]


class IncidentsReport(TypedDict):
    """The body of /incidents; the landing page lists its incidents."""

    incidents: list[IncidentView]  # the open ones, then the ended ones kept, newest first
    untracked: NotRequired[int]  # observations not followed: too many incidents were open
    statements: NotRequired[bool]  # whether incidents carry the sessions' statements


def bounded(evidence: Mapping[str, Evidence]) -> dict[str, Evidence]:
    """The evidence with every string, list and the number of entries capped; statements
    (keys ending in "statement"/"statements") keep a fingerprint's length."""
    kept: dict[str, Evidence] = {}
    for key, value in list(evidence.items())[:MAX_KEYS]:
        limit = MAX_STATEMENT_LENGTH if key.endswith(("statement", "statements")) else MAX_TEXT
        kept[key] = _bounded_value(value, limit)
    return kept


def _bounded_value(value: Evidence, limit: int) -> Evidence:
    if isinstance(value, str):
        return _text(value, limit)
    if isinstance(value, float):
        return round(value, 1)
    if isinstance(value, list):
        return [_text(v, limit) if isinstance(v, str) else v
                for v in value[:MAX_ITEMS]]  # type: ignore[return-value]
    return value


def _text(value: str, limit: int) -> str:
    """Capped, encodable, and one line: an application name with a newline must not forge a
    log line (logfmt and console print values as they are)."""
    if len(value) > limit:
        value = value[:limit - 1] + "…"
    if not value.isprintable():
        value = "".join(c if c.isprintable() else "?" for c in value)
    return value.encode("utf-8", "replace").decode("utf-8")


def one_line(value: str, limit: int = 200) -> str:
    return _text(value, limit)


def distinct(values: Sequence[str], limit: int = MAX_ITEMS) -> list[str]:
    """The distinct non-empty values in their first order, at most limit."""
    return [v for v in dict.fromkeys(values) if v][:limit]


def evidence_of(evidence: Mapping[str, Any]) -> dict[str, Evidence]:
    """Drop the entries that say nothing (None, '', [])."""
    return {k: v for k, v in evidence.items() if v is not None and v != "" and v != []}
