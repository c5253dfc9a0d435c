"""The server's settings from GET /admin/settings: the ones the diagnosis and the metrics use.

Four shapes, read into the same canonical paths (those of 3.1.13+), so prefect_server_setting and
the doctor name a setting alike on every version:

- 2.x: flat, upper-case environment names: PREFECT_SQLALCHEMY_POOL_SIZE; durations in seconds.
- 3.0.0-3.0.10: flat, lower-case without the prefix: sqlalchemy_pool_size; ISO 8601 durations.
- 3.0.11-3.1.12: nested, the pool sizes beside the database: server.database.sqlalchemy_pool_size.
- 3.1.13+: nested with a `sqlalchemy` group: server.database.sqlalchemy.pool_size.

Only the listed settings are read: the answer also holds server.docket.url, a Redis URL with its
password in clear (Prefect does not redact it), which is never kept.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from exporter.prefect.values import dig, setting_number

# Settings read from GET /admin/settings, by their canonical (3.1.13+) path.
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

# Before 3.1.13 the pool sizes sat beside the database settings (3.0.11-3.1.12, nested).
_LEGACY_NESTED = {
    "server.database.sqlalchemy.pool_size": "server.database.sqlalchemy_pool_size",
    "server.database.sqlalchemy.max_overflow": "server.database.sqlalchemy_max_overflow",
}
# The flat names of 3.0.0-3.0.10; 2.x's are the same, upper-case, behind PREFECT_
# (api_services_late_runs_after_seconds, PREFECT_API_SERVICES_LATE_RUNS_AFTER_SECONDS). Settings
# missing here did not exist then (pool_timeout, pool_recycle, connect_args: 3.1.13 and later).
_FLAT = {
    "server.database.sqlalchemy.pool_size": "sqlalchemy_pool_size",
    "server.database.sqlalchemy.max_overflow": "sqlalchemy_max_overflow",
    **{f"server.services.{service}.{name}": f"api_services_{service}_{name}"
       for service, names in (
           ("scheduler", ("enabled", "loop_seconds", "max_runs", "min_runs",
                          "max_scheduled_time", "min_scheduled_time")),
           ("late_runs", ("enabled", "loop_seconds", "after_seconds")))
       for name in names},
}


def settings_shape(data: Any) -> str:
    """Which of the four shapes an answer has: '2.x', '3.0-flat', 'nested' (3.0.11 and later;
    the two nested shapes differ only in the pool sizes' keys), or '' (not settings)."""
    if not isinstance(data, Mapping) or not data:
        return ""
    if isinstance(data.get("server"), Mapping):
        return "nested"
    if any(isinstance(k, str) and k.startswith("PREFECT_") for k in data):
        return "2.x"
    return "3.0-flat"


def read_setting(data: Any, path: str, shape: str) -> Any:
    """The value of a canonical setting in an answer of that shape; None where it has none."""
    if shape == "nested":
        value = dig(data, path)
        legacy = _LEGACY_NESTED.get(path)
        return dig(data, legacy) if value is None and legacy else value
    flat = _FLAT.get(path)
    if flat is None:
        return None
    return data.get("PREFECT_" + flat.upper() if shape == "2.x" else flat)


def parse_settings(data: Any) -> tuple[dict[str, float], dict[str, str]]:
    shape = settings_shape(data)
    if not shape:
        return {}, {}
    numbers = {p: n for p in SETTING_PATHS
               if (n := setting_number(read_setting(data, p, shape))) is not None}
    texts = {p: v for p in TEXT_SETTING_PATHS
             if isinstance(v := read_setting(data, p, shape), str)}
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
