"""The server's settings from GET /admin/settings: the ones the diagnosis and the metrics use."""

from __future__ import annotations

import re
from typing import Any

from exporter.prefect.values import dig, setting_number

# Settings read from GET /admin/settings, by JSON path. Durations come as ISO 8601 strings.
SETTING_PATHS = (
    "server.database.sqlalchemy.pool_size",
    "server.database.sqlalchemy.max_overflow",
    "server.database.sqlalchemy.pool_timeout",
    "server.database.sqlalchemy.pool_recycle",
    "server.database.sqlalchemy.connect_args.statement_cache_size",
    "server.database.sqlalchemy.connect_args.prepared_statement_cache_size",
    "server.services.scheduler.enabled",
    "server.services.scheduler.loop_seconds",
    "server.services.scheduler.max_runs",
    "server.services.scheduler.min_runs",
    "server.services.scheduler.max_scheduled_time",
    "server.services.scheduler.min_scheduled_time",
    "server.services.late_runs.enabled",
    "server.services.late_runs.loop_seconds",
    "server.services.late_runs.after_seconds",
    "server.events.retention_period",
    "server.services.db_vacuum.loop_seconds",
    "server.services.db_vacuum.retention_period",
)
LATE_AFTER = "server.services.late_runs.after_seconds"
LATE_LOOP = "server.services.late_runs.loop_seconds"
EVENTS_RETENTION = "server.events.retention_period"
RUNS_RETENTION = "server.services.db_vacuum.retention_period"
# Prefect's defaults, for servers that do not say (Prefect Cloud has no /admin/settings)
DEFAULTS = {LATE_AFTER: 15.0, LATE_LOOP: 5.0, EVENTS_RETENTION: 7 * 86400.0}
TEXT_SETTING_PATHS = ("server.database.sqlalchemy.connect_args.application_name",)


def parse_settings(data: Any) -> tuple[dict[str, float], dict[str, str]]:
    numbers = {p: n for p in SETTING_PATHS if (n := setting_number(dig(data, p))) is not None}
    texts = {p: v for p in TEXT_SETTING_PATHS if isinstance(v := dig(data, p), str)}
    return numbers, texts


DOCKET_URL = "server.docket.url"  # Prefect 3.6+: memory:// (one services process) or redis://
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def docket_scheme(data: Any) -> str:
    """Only the scheme of the docket URL ('memory', 'redis', ...; '' where the server has no
    docket). Prefect does not redact this setting and a Redis URL may hold a password: the rest
    of the URL is never kept, logged or exported."""
    match = _SCHEME.match(value) if isinstance(value := dig(data, DOCKET_URL), str) else None
    return match[1].lower() if match else ""


VACUUM_ENABLED = "server.services.db_vacuum.enabled"


def vacuum_kinds(data: Any) -> frozenset[str] | None:
    """What Prefect's db_vacuum service deletes (3.6.19+): a list of kinds, or true (events and
    flow runs), false (events only: event trimming cannot be turned off), null (nothing).
    None where the server has no db_vacuum (older versions trim events elsewhere)."""
    value = dig(data, VACUUM_ENABLED)
    if isinstance(value, list):
        return frozenset(str(v) for v in value)
    if value is True:
        return frozenset({"events", "flow_runs"})
    if value is False:
        return frozenset({"events"})
    return None if dig(data, "server.services.db_vacuum") is None else frozenset()
