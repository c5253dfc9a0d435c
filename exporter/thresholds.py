"""The thresholds: one set of numbers behind the alert rules, the doctor, the findings metric and
the dashboards, so that what pages and what the diagnosis says always agree.

Two words, one meaning each: *overrides* are the values a user set (--set, the environment,
the config file; `Config.thresholds` holds them), *thresholds* are every value, resolved: the
defaults with the overrides applied (`thresholds()`, typed `Thresholds`), which is what the
checks, the incidents and the rules read."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import NewType


@dataclass(frozen=True)
class Threshold:
    default: float
    meaning: str


THRESHOLDS: dict[str, Threshold] = {
    "idle_in_transaction_warning_seconds": Threshold(300, "idle in transaction: warning after"),
    "idle_in_transaction_critical_seconds": Threshold(900, "idle in transaction: page after"),
    "active_transaction_warning_seconds": Threshold(600, "an active transaction: warning after"),
    "active_transaction_critical_seconds": Threshold(1800, "an active transaction: page after"),
    "blocked_wait_critical_seconds": Threshold(60, "a session blocked on a lock: page after"),
    "client_read_stall_critical_seconds": Threshold(
        60, "an active statement whose client went silent (ClientRead): page after"),
    "pgbouncer_waiting_clients_warning": Threshold(0, "clients waiting in a pool: more than"),
    "pgbouncer_maxwait_critical_seconds": Threshold(
        5, "the oldest client waiting for a server connection: page after"),
    "connections_warning_ratio": Threshold(
        0.85, "client backends / (max_connections - superuser_reserved): warning above"),
    "connections_critical_ratio": Threshold(0.95, "the same ratio: page above"),
    "late_runs_warning": Threshold(0, "Late runs in a work pool: more than"),
    "backlog_delay_warning_seconds": Threshold(
        300, "the most overdue SCHEDULED run: warning after"),
    "scheduled_runs_warning": Threshold(
        10000, "future SCHEDULED runs in all (a scheduler creating too many): more than"),
    "listen_sessions_warning": Threshold(
        1, "LISTEN prefect_automation_changes sessions (copies of the services): more than"),
    "source_stale_seconds": Threshold(120, "seconds since a source's last successful poll"),
    "dead_tuples_warning": Threshold(100000, "dead tuples in a hot Prefect table: more than"),
    "dead_tuples_warning_ratio": Threshold(0.2, "and dead / live tuples above"),
    "stale_statistics_warning_rows": Threshold(
        10000, "rows changed in a hot Prefect table since its last ANALYZE: more than"),
    "stale_statistics_warning_ratio": Threshold(
        0.2, "and changed / live rows above (autovacuum analyzes at 0.1 by default)"),
    "invalid_indexes_warning": Threshold(
        0, "invalid indexes (a failed CREATE INDEX CONCURRENTLY) in the watched database: "
           "more than"),
    "deadlocks_warning": Threshold(0, "deadlocks in a database within 15 minutes: more than"),
    "overdue_unmarked_runs_warning": Threshold(
        0, "runs overdue past late_runs.after_seconds + 2 loops, not marked Late: more than"),
    "deployments_without_future_runs_warning": Threshold(
        0, "scheduled deployments (an auto-scheduled run within a day) with no future run: "
           "more than"),
    "retention_lag_warning_seconds": Threshold(
        3600, "the oldest event (or flow run) past its retention period, by more than"),
    "unretained_rows_warning_seconds": Threshold(
        30 * 86400, "rows of a big Prefect table no retention deletes (log, flow_run, ... "
                    "without db_vacuum's flow_runs): older than"),
    "unread_table_warning_bytes": Threshold(
        1024 ** 3, "a big Prefect table whose oldest row the exporter's role may not read: the "
                   "doctor says what to grant (info) above this size"),
    "event_pipeline_stall_seconds": Threshold(
        600, "no new event for this long while flow runs keep starting"),
    "api_ready_warning_seconds": Threshold(
        2, "GET /api/ready (a connection out of the API's database pool): slower than"),
    "api_pool_saturated_ready_seconds": Threshold(
        0.5, "the API server's own database pool is saturated when GET /api/ready is slower "
             "than this"),
    "api_pool_saturated_ratio": Threshold(
        5, "and GET /api/ready is slower than GET /api/health by more than this factor (with "
            "no PgBouncer waiters, lock waits or old idle transactions to explain it)"),
    "stuck_runs_warning": Threshold(
        0, "flow runs unfinished for longer than --stuck-run-seconds, per pool and state: "
           "more than"),
    "zombie_runs_warning": Threshold(
        0, "RUNNING flow runs without a heartbeat for --heartbeat-timeout-seconds: more than"),
    "concurrency_slots_leak_seconds": Threshold(
        600, "a concurrency limit full while fewer of its possible holders run: for"),
    "failed_runs_warning_ratio": Threshold(
        0.25, "FAILED / ended flow runs in the outcome window, per work pool: above"),
    "crashed_runs_warning_ratio": Threshold(
        0.1, "CRASHED / ended flow runs in the outcome window, per work pool: above"),
    "ended_runs_minimum": Threshold(
        5, "flow runs ended in the window before a failure ratio counts: at least"),
    "database_size_limit_bytes": Threshold(
        0, "a database's size budget, e.g. its volume's size (0 = none: no growth alert)"),
    "database_full_warning_days": Threshold(
        7, "warn when, at the last 6 h's growth, a database reaches its budget within"),
    "redis_memory_warning_ratio": Threshold(0.8, "Redis used_memory / maxmemory: warning above"),
    "redis_memory_critical_ratio": Threshold(0.95, "the same ratio: page above"),
    "redis_undelivered_warning": Threshold(
        1000, "events not yet delivered to Prefect's event persister (it reads): more than"),
    "redis_dead_consumer_seconds": Threshold(
        3600, "a stream consumer idle this long while another of its group reads is a dead one "
        "(Docket never removes its workers' consumers): info above"),
}

# Every threshold resolved; made only by thresholds(), so a function that takes Thresholds cannot
# be handed overrides by mistake.
Thresholds = NewType("Thresholds", Mapping[str, float])


def thresholds(overrides: Mapping[str, float] | None = None) -> Thresholds:
    """Every threshold: the defaults, with the overrides given."""
    values = {name: t.default for name, t in THRESHOLDS.items()}
    for name, value in (overrides or {}).items():
        if name not in THRESHOLDS:
            raise ValueError(f"unknown threshold {name!r} (python -m exporter.alerting "
                             "--thresholds lists them)")
        values[name] = value
    return Thresholds(values)


def parse_overrides(items: Iterable[str]) -> dict[str, float]:
    """`NAME=VALUE` items (from --set, or a comma-separated PREFECT_PG_EXPORTER_THRESHOLDS) into
    overrides; a malformed item, an unknown name or a value that is not a finite number
    >= 0 raises ValueError with a one-line message."""
    overrides: dict[str, float] = {}
    for item in items:
        name, sep, text = (part.strip() for part in item.partition("="))
        if not sep or not name:
            raise ValueError(f"{item.strip()!r} is not NAME=VALUE")
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"{name}={text!r}: not a number") from None
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{name}={text}: must be a finite number >= 0")
        overrides[name] = value
    thresholds(overrides)  # refuses unknown names
    return overrides


def split_items(text: str) -> list[str]:
    """'a=1, b=2' -> ['a=1', 'b=2'] (empty items ignored)."""
    return [item for item in text.split(",") if item.strip()]
