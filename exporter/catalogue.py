"""The metric catalogue: every metric the exporter exposes, in one place.

The metric builders take their help text and label names from here, `docs/metrics.md` is
generated from it, and the tests check the live exposition, the dashboards and the alert rules
against it. A metric that is not in this catalogue cannot be emitted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

Kind = Literal["gauge", "counter"]


@dataclass(frozen=True)
class MetricSpec:
    name: str  # the exposed sample name (a counter's ends in _total)
    kind: Kind
    help: str
    labels: tuple[str, ...]
    source: str  # exporter | postgres | pgbouncer | prefect


def _spec(name: str, kind: Kind, source: str, labels: str, help_text: str) -> MetricSpec:
    return MetricSpec(name, kind, help_text, tuple(labels.split()), source)


# PgBouncer: (column or key, metric name suffix, meaning), shared with metrics/pgbouncer.py.
POOL_COLUMNS: tuple[tuple[str, ...], ...] = (
    ("cl_active", "client_active_connections",
     "clients linked to a server connection or idle with no query waiting."),
    ("cl_waiting", "client_waiting_connections",
     "clients that sent a query and wait for a server connection: the pool is exhausted."),
    ("cl_active_cancel_req", "client_active_cancel_connections",
     "clients that forwarded a cancel request to the server."),
    ("cl_waiting_cancel_req", "client_waiting_cancel_connections",
     "clients whose cancel request is not yet forwarded."),
    ("sv_active", "server_active_connections", "server connections linked to a client."),
    ("sv_active_cancel", "server_active_cancel_connections",
     "server connections forwarding a cancel request."),
    ("sv_being_canceled", "server_being_canceled_connections",
     "server connections whose query is being cancelled."),
    ("sv_idle", "server_idle_connections", "server connections idle and ready to use."),
    ("sv_used", "server_used_connections",
     "server connections idle long enough to need server_check_query."),
    ("sv_tested", "server_testing_connections",
     "server connections running server_reset_query or server_check_query."),
    ("sv_login", "server_login_connections", "server connections logging in."),
)

DATABASE_COLUMNS: tuple[tuple[str, ...], ...] = (
    ("pool_size", "server connections allowed per pool (user) of this database."),
    ("min_pool_size", "server connections kept open at least."),
    ("reserve_pool", "extra server connections allowed when clients wait "
                     "(reserve_pool, reserve_pool_size since 1.24)."),
    ("max_connections", "server connections allowed for the database in all (0 = no limit)."),
    ("current_connections", "server connections open for the database."),
    ("paused", "1 if the database is PAUSEd."),
    ("disabled", "1 if the database is DISABLEd."),
)

STATS_TOTALS_COLUMNS: tuple[tuple[str, ...], ...] = (
    ("xact_count", "sql_transactions_pooled_total", "SQL transactions pooled."),
    ("query_count", "queries_pooled_total", "SQL queries pooled."),
    ("bytes_received", "received_bytes_total", "bytes received from clients."),
    ("bytes_sent", "sent_bytes_total", "bytes sent to clients."),
    ("xact_time", "server_in_transaction_seconds_total",
     "time server connections spent in transactions."),
    ("query_time", "queries_duration_seconds_total",
     "time server connections spent running queries."),
    ("wait_time", "client_wait_seconds_total",
     "time clients spent waiting for a server connection."),
    ("server_assignment_count", "server_assignments_total",
     "server connections assigned to clients (PgBouncer 1.23+)."),
    ("client_parse_count", "client_parses_total", "Parse messages from clients (1.24+)."),
    ("server_parse_count", "server_parses_total", "Parse messages sent to servers (1.24+)."),
    ("bind_count", "binds_total", "Bind messages from clients (1.24+)."),
)

CONFIG_KEYS: tuple[tuple[str, ...], ...] = (
    ("max_client_conn", "max_client_connections",
     ": client connections PgBouncer accepts in all."),
    ("max_user_connections", "max_user_connections",
     ": server connections per user (0 = no limit)."),
    ("max_db_connections", "max_db_connections",
     ": server connections per database (0 = no limit)."),
    ("default_pool_size", "default_pool_size", ": server connections per pool."),
    ("reserve_pool_size", "reserve_pool_size", ": extra connections when clients wait."),
    ("query_wait_timeout", "query_wait_timeout_seconds",
     ", seconds: a client waiting longer for a server is disconnected (0 = never)."),
    ("idle_transaction_timeout", "idle_transaction_timeout_seconds",
     ", seconds: a server idle in transaction longer is closed (0 = never)."),
    ("query_timeout", "query_timeout_seconds",
     ", seconds: queries running longer are cancelled (0 = never)."),
)

LIST_ITEMS: tuple[tuple[str, ...], ...] = (
    ("databases", "databases", "databases configured."),
    ("users", "users", "users known."),
    ("pools", "pools", "pools."),
    ("free_clients", "free_clients", "free client slots."),
    ("used_clients", "used_clients", "client connections in use."),
    ("login_clients", "login_clients", "clients logging in."),
    ("free_servers", "free_servers", "free server slots."),
    ("used_servers", "used_servers", "server connections in use."),
    ("dns_names", "cached_dns_names", "DNS names cached."),
    ("dns_zones", "cached_dns_zones", "DNS zones cached."),
    ("dns_queries", "in_flight_dns_queries", "DNS queries in flight."),
)

SPECS: tuple[MetricSpec, ...] = (
    # --- the exporter itself -------------------------------------------------------------
    _spec("prefect_pg_exporter_build_info", "gauge", "exporter", "version python_version",
          "Always 1; the exporter's version and Python version as labels."),
    _spec("prefect_pg_exporter_source_up", "gauge", "exporter", "source target",
          "1 if the last poll of this source succeeded, else 0."),
    _spec("prefect_pg_exporter_source_last_success_timestamp_seconds", "gauge", "exporter",
          "source target",
          "Unix time of the last successful poll (0 = never). Staleness: time() minus this."),
    _spec("prefect_pg_exporter_source_poll_duration_seconds", "gauge", "exporter",
          "source target", "Wall time of the last poll of this source, successful or not."),
    _spec("prefect_pg_exporter_source_polls_total", "counter", "exporter", "source target",
          "Polls attempted for this source."),
    _spec("prefect_pg_exporter_source_errors_total", "counter", "exporter",
          "source target reason",
          "Failed polls by reason: timeout, connect (cannot reach or log in), query, other."),
    _spec("prefect_pg_exporter_finding", "gauge", "exporter", "check severity",
          "1 while the diagnosis has an active finding of this check (the same as "
          "`prefect-pg-exporter doctor`); listed with evidence on the exporter's / page."),
    # --- PostgreSQL ------------------------------------------------------------------------
    _spec("postgres_up", "gauge", "postgres", "target",
          "1 if the last poll of this PostgreSQL succeeded, else 0."),
    _spec("postgres_server_info", "gauge", "postgres", "target version",
          "Always 1; the server version as a label."),
    _spec("postgres_connections", "gauge", "postgres",
          "target datname usename application_name state",
          "Client backends by database, role, application and state (the exporter's own "
          "session excluded). Label values beyond the top N fold into 'other'."),
    _spec("postgres_max_connections", "gauge", "postgres", "target",
          "The max_connections setting."),
    _spec("postgres_superuser_reserved_connections", "gauge", "postgres", "target",
          "The superuser_reserved_connections setting: slots ordinary roles cannot use."),
    _spec("postgres_transaction_max_age_seconds", "gauge", "postgres",
          "target datname application_name state",
          "Age of the oldest open transaction (now - xact_start) per database, application and "
          "state: active, idle in transaction, idle in transaction (aborted)."),
    _spec("postgres_client_read_in_transaction_sessions", "gauge", "postgres", "target",
          "Sessions inside a transaction waiting on Client/ClientRead: the client stalled "
          "mid-transaction. Plain idle sessions are not counted."),
    _spec("postgres_client_read_in_transaction_max_age_seconds", "gauge", "postgres", "target",
          "How long the longest such stall has lasted (now - state_change); 0 when none."),
    _spec("postgres_wait_event_sessions", "gauge", "postgres",
          "target wait_event_type wait_event",
          "Non-idle client sessions by wait event ('' = running on CPU, not waiting)."),
    _spec("postgres_blocked_sessions", "gauge", "postgres", "target",
          "Sessions waiting on a heavyweight lock held by another session."),
    _spec("postgres_blocked_max_wait_seconds", "gauge", "postgres", "target",
          "Longest wait among blocked sessions (now - state_change of the waiting statement); "
          "0 when none."),
    _spec("postgres_blocking_sessions", "gauge", "postgres", "target",
          "Distinct sessions that block at least one other session (pg_blocking_pids)."),
    _spec("postgres_oldest_transaction_age_seconds", "gauge", "postgres",
          "target rank pid datname usename application_name client_addr state wait_event",
          "The N oldest open transactions (rank 1 = oldest) with who holds them; value = age. "
          "Bounded by --top-transactions; 0 disables."),
    _spec("postgres_listen_sessions", "gauge", "postgres", "target channel",
          "Sessions whose last statement is LISTEN, by channel. One Prefect background-services "
          "copy holds one LISTEN \"prefect_automation_changes\"."),
    _spec("postgres_setting_seconds", "gauge", "postgres", "target name",
          "Timeout settings in seconds (0 = disabled): idle_in_transaction_session_timeout, "
          "statement_timeout, lock_timeout, tcp_keepalives_idle."),
    _spec("postgres_table_live_tuples", "gauge", "postgres", "target schema table",
          "Estimated live rows of Prefect's hot tables."),
    _spec("postgres_table_dead_tuples", "gauge", "postgres", "target schema table",
          "Estimated dead rows of Prefect's hot tables, waiting for vacuum."),
    _spec("postgres_table_last_vacuum_timestamp_seconds", "gauge", "postgres",
          "target schema table",
          "Unix time of the last manual VACUUM of a hot table (0 = never)."),
    _spec("postgres_table_last_autovacuum_timestamp_seconds", "gauge", "postgres",
          "target schema table",
          "Unix time of the last autovacuum of a hot table (0 = never)."),
    # --- PgBouncer (names of prometheus-community/pgbouncer_exporter where they overlap) ----
    _spec("pgbouncer_up", "gauge", "pgbouncer", "target",
          "1 if the last poll of this PgBouncer's admin console succeeded, else 0."),
    _spec("pgbouncer_version_info", "gauge", "pgbouncer", "target version",
          "Always 1; the PgBouncer version (SHOW VERSION) as a label."),
    *(_spec(f"pgbouncer_pools_{name}", "gauge", "pgbouncer", "target database user",
            f"SHOW POOLS {column}: {meaning}")
      for column, name, meaning in POOL_COLUMNS),
    _spec("pgbouncer_pools_client_maxwait_seconds", "gauge", "pgbouncer", "target database user",
          "How long the oldest waiting client of the pool has waited (maxwait + maxwait_us, "
          "microsecond precision); 0 when none waits."),
    _spec("pgbouncer_pools_mode_info", "gauge", "pgbouncer", "target database user pool_mode",
          "Always 1; the pool's pool_mode (session, transaction, statement)."),
    *(_spec(f"pgbouncer_databases_{name}", "gauge", "pgbouncer",
            "target name host port database force_user pool_mode", f"SHOW DATABASES: {meaning}")
      for name, meaning in DATABASE_COLUMNS),
    *(_spec(f"pgbouncer_stats_totals_{name}", "counter", "pgbouncer", "target database",
            f"SHOW STATS_TOTALS {column}: {meaning}")
      for column, name, meaning in STATS_TOTALS_COLUMNS),
    *(_spec(f"pgbouncer_config_{name}", "gauge", "pgbouncer", "target",
            f"SHOW CONFIG {key}{meaning}")
      for key, name, meaning in CONFIG_KEYS),
    _spec("pgbouncer_config_pool_mode_info", "gauge", "pgbouncer", "target pool_mode",
          "Always 1; the global pool_mode. Transaction pooling needs Prefect's asyncpg statement "
          "caches off."),
    *(_spec(f"pgbouncer_{name}", "gauge", "pgbouncer", "target", f"SHOW LISTS {item}: {meaning}")
      for item, name, meaning in LIST_ITEMS),
    # --- Prefect API --------------------------------------------------------------------------
    _spec("prefect_api_up", "gauge", "prefect", "target",
          "1 if the last poll of the Prefect API succeeded, else 0."),
    _spec("prefect_server_info", "gauge", "prefect", "target version",
          "Always 1; the Prefect server version (GET /admin/version; '' where not offered)."),
    _spec("prefect_flow_runs", "gauge", "prefect", "target state_type",
          "Flow runs now in each current state type: SCHEDULED, PENDING, RUNNING, CANCELLING, "
          "PAUSED (not a history: finished runs are not counted)."),
    _spec("prefect_scheduled_backlog_runs", "gauge", "prefect", "target work_pool",
          "SCHEDULED runs whose expected start is in the past (Late ones included). "
          "work_pool 'other': runs in no work pool or in pools beyond the top N."),
    _spec("prefect_scheduled_backlog_max_delay_seconds", "gauge", "prefect", "target work_pool",
          "How far past its expected start the most overdue SCHEDULED run is; 0 when none."),
    _spec("prefect_late_runs", "gauge", "prefect", "target work_pool",
          "Runs in state Late (marked by the server's late_runs service)."),
    _spec("prefect_upcoming_runs", "gauge", "prefect", "target work_pool",
          "SCHEDULED runs expected to start within the horizon (--prefect-upcoming-horizon-"
          "seconds, default 1 h)."),
    _spec("prefect_scheduled_runs", "gauge", "prefect", "target",
          "Every SCHEDULED run expected to start in the future: catches a scheduler creating "
          "far too many runs."),
    _spec("prefect_work_pool_runs_in_flight", "gauge", "prefect", "target work_pool",
          "Runs PENDING or RUNNING in the pool (what its concurrency limit counts)."),
    _spec("prefect_work_pool_info", "gauge", "prefect", "target work_pool type",
          "Always 1; the work pool's type (process, kubernetes, docker, ...)."),
    _spec("prefect_work_pool_status", "gauge", "prefect", "target work_pool status",
          "1 for the pool's current status, 0 for the others: READY, NOT_READY (no online "
          "worker), PAUSED."),
    _spec("prefect_work_pool_paused", "gauge", "prefect", "target work_pool",
          "1 if the work pool is paused."),
    _spec("prefect_work_pool_concurrency_limit", "gauge", "prefect", "target work_pool",
          "The pool's concurrency limit; absent when unlimited."),
    _spec("prefect_work_pool_workers", "gauge", "prefect", "target work_pool",
          "Workers known to the pool."),
    _spec("prefect_work_pool_online_workers", "gauge", "prefect", "target work_pool",
          "Workers whose heartbeat is recent (status ONLINE)."),
    _spec("prefect_work_pool_last_heartbeat_timestamp_seconds", "gauge", "prefect",
          "target work_pool", "Unix time of the freshest worker heartbeat; absent with no worker."),
    _spec("prefect_work_queue_paused", "gauge", "prefect", "target work_pool work_queue",
          "1 if the work queue is paused."),
    _spec("prefect_work_queue_concurrency_limit", "gauge", "prefect",
          "target work_pool work_queue", "The queue's concurrency limit; absent when unlimited."),
    _spec("prefect_server_setting", "gauge", "prefect", "target name",
          "Numeric server settings from GET /admin/settings by JSON path (durations in seconds, "
          "booleans 0/1): database pool_size, max_overflow, asyncpg statement caches, scheduler "
          "and late_runs knobs."),
    _spec("prefect_api_requests_total", "counter", "prefect", "target endpoint",
          "The exporter's own requests to the Prefect API, by endpoint."),
    _spec("prefect_api_request_errors_total", "counter", "prefect", "target endpoint",
          "Of those, the ones that failed (transport error, HTTP 4xx/5xx, bad JSON)."),
    _spec("prefect_api_request_duration_seconds_total", "counter", "prefect", "target endpoint",
          "Time spent in those requests; divided by the requests, the mean latency."),
)

CATALOGUE: dict[str, MetricSpec] = {spec.name: spec for spec in SPECS}


def family(name: str) -> GaugeMetricFamily | CounterMetricFamily:
    """A fresh, empty metric family for a catalogued metric."""
    spec = CATALOGUE[name]
    if spec.kind == "counter":
        return CounterMetricFamily(name.removesuffix("_total"), spec.help, labels=spec.labels)
    return GaugeMetricFamily(name, spec.help, labels=spec.labels)


def render_markdown() -> str:
    """The catalogue as the Markdown page docs/metrics.md (a test keeps that file in sync)."""
    lines = [
        "# Metric catalogue",
        "",
        "Generated from `exporter/catalogue.py` by `python -m exporter.catalogue`; "
        "do not edit by hand.",
        "Every per-target series carries `target`, the name of the configured target.",
        "",
    ]
    for source in ("exporter", "postgres", "pgbouncer", "prefect"):
        specs = [s for s in SPECS if s.source == source]
        if not specs:
            continue
        lines += [f"## {source}", "", "| metric | type | labels | meaning |", "|---|---|---|---|"]
        for s in specs:
            labels = ", ".join(f"`{label}`" for label in s.labels)
            lines.append(f"| `{s.name}` | {s.kind} | {labels} | {s.help} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(render_markdown(), end="")
