"""Grafana dashboards, generated so metric names stay those of the catalogue.

    python -m exporter.dashboards dashboards/      # writes one JSON file per dashboard

Every dashboard has a `datasource` variable (any Prometheus) and a multi-value `target`
variable; panels use only core Grafana panel types (stat, timeseries, table, bargauge), so no
plugin is needed. The tests run every panel's query against a real Prometheus scraping the real
exporter on the lab while the incidents are reproduced.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exporter.alerting import RUNBOOK_BASE_URL
from exporter.thresholds import thresholds

DS = {"type": "prometheus", "uid": "${datasource}"}
# The alert rules' thresholds colour the stats: yellow at the warning, red where it pages.
TH = thresholds()


def above(name: str) -> float:
    """The first count past a 'more than N' threshold (Grafana steps start at a value)."""
    return TH[name] + 1
T = 'target=~"$target"'
GREEN, YELLOW, RED = "green", "yellow", "red"


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""
    instant: bool = False


@dataclass(frozen=True)
class Panel:
    title: str
    kind: str  # stat | timeseries | table | bargauge
    queries: tuple[Query, ...]
    unit: str = "short"
    steps: tuple[tuple[float | None, str], ...] = ((None, GREEN),)
    width: int = 8
    height: int = 8
    description: str = ""
    mappings: tuple[dict[str, Any], ...] = field(default=())
    # data only where the setup has it (Prefect's own /api/metrics scraped): the live test
    # runs its queries but does not require data
    optional: bool = False


def stat(title: str, expr: str, unit: str = "short", warn: float | None = None,
         crit: float | None = None, description: str = "", width: int = 4,
         mappings: tuple[dict[str, Any], ...] = ()) -> Panel:
    steps: list[tuple[float | None, str]] = [(None, GREEN)]
    if warn is not None:
        steps.append((warn, YELLOW))
    if crit is not None:
        steps.append((crit, RED))
    return Panel(title, "stat", (Query(expr, instant=True),), unit, tuple(steps), width, 5,
                 description, mappings)


def up_stat(title: str, expr: str, description: str = "") -> Panel:
    """Red when any target of the layer is down, green when all are up."""
    down_up = ({"type": "value", "options": {"0": {"text": "DOWN", "color": RED},
                                             "1": {"text": "UP", "color": GREEN}}},)
    return Panel(title, "stat", (Query(expr, instant=True),), "short",
                 ((None, RED), (1, GREEN)), 4, 5, description, down_up)


def series(title: str, *queries: Query, unit: str = "short", width: int = 12,
           description: str = "") -> Panel:
    return Panel(title, "timeseries", queries, unit, ((None, GREEN),), width, 8, description)


def table(title: str, *queries: Query, unit: str = "short", width: int = 24,
          description: str = "") -> Panel:
    return Panel(title, "table", queries, unit, ((None, GREEN),), width, 8, description)


def q(expr: str, legend: str = "") -> Query:
    return Query(expr, legend)


# ---- the dashboards ------------------------------------------------------------------------

OVERVIEW = (
    up_stat("PostgreSQL", f"min(postgres_up{{{T}}})"),
    up_stat("PgBouncer", f"min(pgbouncer_up{{{T}}})"),
    up_stat("Prefect API", f"min(prefect_api_up{{{T}}})"),
    stat("Oldest idle in transaction", "max(prefect_pg:postgres_idle_in_transaction_max_age_"
         f"seconds:max{{{T}}}) or vector(0)", "s", TH["idle_in_transaction_warning_seconds"],
         TH["idle_in_transaction_critical_seconds"],
         "The longest a session has sat idle inside a transaction, holding its locks."),
    stat("Blocked sessions", f"sum(postgres_blocked_sessions{{{T}}})", "short", 1, 5),
    stat("Pool waiters", f"sum(pgbouncer_pools_client_waiting_connections{{{T}}}) or vector(0)",
         "short", above("pgbouncer_waiting_clients_warning"), None,
         "PgBouncer clients waiting for a server connection."),
    stat("Late runs", f"sum(prefect_late_runs{{{T}}}) or vector(0)", "short",
         above("late_runs_warning")),
    stat("Connection budget used", f"max(prefect_pg:postgres_connection_budget:ratio{{{T}}})",
         "percentunit", TH["connections_warning_ratio"], TH["connections_critical_ratio"],
         "Client backends / (max_connections - superuser_reserved_connections)."),
    stat("ClientRead stalls", f"sum(postgres_client_read_in_transaction_sessions{{{T}}})",
         "short", 1, 3, "Sessions inside a transaction whose client stopped talking."),
    stat("Services copies (LISTEN)", "sum(postgres_listen_sessions{channel=\"prefect_automation_"
         f"changes\",{T}}}) or vector(0)", "short", above("listen_sessions_warning")),
    stat("Backlog max delay", f"max(prefect_scheduled_backlog_max_delay_seconds{{{T}}})", "s",
         TH["backlog_delay_warning_seconds"]),
    stat("Exporter sources down", f"count(prefect_pg_exporter_source_up{{{T}}} == 0) "
         "or vector(0)", "short", None, 1),
    table("Oldest transactions: who holds them",
          Query(f"postgres_oldest_transaction_age_seconds{{{T}}}", instant=True), unit="s",
          description="pid, role, application, client address, state and wait event of the N "
                      "oldest open transactions; value = age."),
    series("Transaction age by state", q(f"max by (target, state) (postgres_transaction_max_age_"
                                         f"seconds{{{T}}})", "{{target}} {{state}}"), unit="s"),
    series("Pool waiters and maxwait",
           q(f"sum by (target, database, user) (pgbouncer_pools_client_waiting_connections"
             f"{{{T}}})", "{{target}} {{database}}/{{user}} waiting"),
           q(f"max by (target) (pgbouncer_pools_client_maxwait_seconds{{{T}}})",
             "{{target}} maxwait s")),
    series("Blocked sessions and longest wait",
           q(f"postgres_blocked_sessions{{{T}}}", "{{target}} blocked"),
           q(f"postgres_blocked_max_wait_seconds{{{T}}}", "{{target}} longest wait s")),
    series("Late runs and backlog by work pool",
           q(f"sum by (work_pool) (prefect_late_runs{{{T}}})", "{{work_pool}} late"),
           q(f"sum by (work_pool) (prefect_scheduled_backlog_runs{{{T}}})",
             "{{work_pool}} overdue")),
    table("Exporter sources", Query(f"prefect_pg_exporter_source_up{{{T}}}", instant=True),
          Query(f"time() - prefect_pg_exporter_source_last_success_timestamp_seconds{{{T}}}",
                instant=True)),
)

POSTGRES = (
    series("Client backends by state", q(f"sum by (target, state) (postgres_connections{{{T}}})",
                                         "{{target}} {{state}}")),
    series("Client backends by application",
           q(f"sum by (application_name) (postgres_connections{{{T}}})", "{{application_name}}")),
    series("Connection budget",
           q(f"prefect_pg:postgres_client_backends:sum{{{T}}}", "{{target}} backends"),
           q(f"postgres_max_connections{{{T}}} - postgres_superuser_reserved_connections{{{T}}}",
             "{{target}} usable limit")),
    series("Oldest transaction by application and state",
           q(f"postgres_transaction_max_age_seconds{{{T}}}",
             "{{application_name}} {{state}}"), unit="s"),
    series("Non-idle sessions by wait event",
           q(f"sum by (wait_event_type, wait_event) (postgres_wait_event_sessions{{{T}}})",
             "{{wait_event_type}} {{wait_event}}")),
    series("Locks: blocked and blocking sessions",
           q(f"postgres_blocked_sessions{{{T}}}", "{{target}} blocked"),
           q(f"postgres_blocking_sessions{{{T}}}", "{{target}} blocking")),
    series("ClientRead inside a transaction",
           q(f"postgres_client_read_in_transaction_sessions{{{T}}}", "{{target}} sessions"),
           q(f"postgres_client_read_in_transaction_max_age_seconds{{{T}}}",
             "{{target}} longest s")),
    series("LISTEN sessions by channel", q(f"postgres_listen_sessions{{{T}}}", "{{channel}}")),
    table("Oldest transactions", Query(f"postgres_oldest_transaction_age_seconds{{{T}}}",
                                       instant=True), unit="s"),
    table("Safety-net settings (seconds, 0 = off)",
          Query(f"postgres_setting_seconds{{{T}}}", instant=True), unit="s", width=12),
    table("Server", Query(f"postgres_server_info{{{T}}}", instant=True), width=12),
    series("Database size", q(f"postgres_database_size_bytes{{{T}}}", "{{target}} {{datname}}"),
           unit="bytes", description="pg_database_size. PostgresDatabaseFilling warns when, at "
                                      "the last 6 h's growth, one passes its size budget."),
    series("Hot tables: size (heap + indexes + TOAST)",
           q(f"postgres_table_size_bytes{{{T}}}", "{{schema}}.{{table}}"), unit="bytes"),
    series("Hot tables: rows inserted minus deleted per second (growth against cleanup)",
           q(f"prefect_pg:postgres_table_net_growth_rows:rate1h{{{T}}}", "{{schema}}.{{table}}"),
           description="Above 0 for long: rows pile up faster than Prefect's retention deletes "
                       "them."),
    series("Hot tables: dead tuples", q(f"postgres_table_dead_tuples{{{T}}}",
                                        "{{schema}}.{{table}}")),
    series("Hot tables: time since last vacuum (manual or auto)",
           q(f"time() - ((postgres_table_last_autovacuum_timestamp_seconds{{{T}}} > "
             f"postgres_table_last_vacuum_timestamp_seconds{{{T}}}) or (postgres_table_last_"
             f"vacuum_timestamp_seconds{{{T}}} > 0))", "{{schema}}.{{table}}"), unit="s"),
    series("Hot tables: rows changed since the last ANALYZE, share of live rows",
           q(f"postgres_table_modified_since_analyze_rows{{{T}}} / "
             f"(postgres_table_live_tuples{{{T}}} + 1)", "{{schema}}.{{table}}"),
           unit="percentunit",
           description="Stale planner statistics: PostgresHotTableStaleStatistics warns above "
                       f"{TH['stale_statistics_warning_ratio']:g} (and "
                       f"{TH['stale_statistics_warning_rows']:g} rows)."),
    series("Hot tables: time since last ANALYZE (manual or auto)",
           q(f"time() - (postgres_table_last_analyze_timestamp_seconds{{{T}}} > 0)",
             "{{schema}}.{{table}}"), unit="s"),
    stat("Invalid indexes", f"sum(postgres_invalid_indexes{{{T}}})",
         warn=above("invalid_indexes_warning"),
         description="Left by a failed CREATE INDEX CONCURRENTLY: `prefect-pg-exporter doctor` "
                     "names each and its repair."),
    stat("Deadlocks (1h)", f"sum(increase(postgres_deadlocks_total{{{T}}}[1h]))",
         warn=above("deadlocks_warning")),
    series("Deadlocks per database (15 min)",
           q(f"increase(postgres_deadlocks_total{{{T}}}[15m])", "{{target}} {{datname}}"),
           width=8),
    series("Slowest statements: execution seconds per second, by queryid",
           q(f"topk(10, rate(postgres_statement_seconds_total{{{T}}}[5m]))",
             "{{target}} {{queryid}}"), unit="s",
           description="pg_stat_statements' top N by total time (read once a minute); the "
                       "statement of each queryid, masked, is on the exporter's /statements."),
    series("Slowest statements: mean seconds per call (5 min)",
           q(f"rate(postgres_statement_seconds_total{{{T}}}[5m]) / "
             f"rate(postgres_statement_calls_total{{{T}}}[5m])", "{{target}} {{queryid}}"),
           unit="s"),
    table("Index builds running (share of the phase done)",
          Query(f"postgres_index_build_done_ratio{{{T}}}", instant=True), unit="percentunit",
          width=8),
)

PGBOUNCER = (
    series("Clients waiting by pool",
           q(f"pgbouncer_pools_client_waiting_connections{{{T}}}",
             "{{target}} {{database}}/{{user}}")),
    series("Oldest waiting client (maxwait)",
           q(f"pgbouncer_pools_client_maxwait_seconds{{{T}}}", "{{target}} {{database}}/{{user}}"),
           unit="s"),
    series("Server connections by pool vs pool size",
           q(f"pgbouncer_pools_server_active_connections{{{T}}}",
             "{{target}} {{database}}/{{user}} active"),
           q(f"pgbouncer_pools_server_idle_connections{{{T}}}",
             "{{target}} {{database}}/{{user}} idle"),
           q(f"pgbouncer_databases_pool_size{{{T}}}", "{{target}} {{name}} pool_size")),
    series("Active clients by pool", q(f"pgbouncer_pools_client_active_connections{{{T}}}",
                                       "{{target}} {{database}}/{{user}}")),
    series("Queries and transactions per second",
           q(f"sum by (target, database) (rate(pgbouncer_stats_totals_queries_pooled_total"
             f"{{{T}}}[$__rate_interval]))", "{{target}} {{database}} queries/s"),
           q(f"sum by (target, database) (rate(pgbouncer_stats_totals_sql_transactions_pooled"
             f"_total{{{T}}}[$__rate_interval]))", "{{target}} {{database}} xact/s")),
    series("Client wait time per second",
           q(f"sum by (target, database) (rate(pgbouncer_stats_totals_client_wait_seconds_total"
             f"{{{T}}}[$__rate_interval]))", "{{target}} {{database}}"), unit="s",
           description="Seconds clients spent waiting for a server connection, per second."),
    series("Client connections vs max_client_conn",
           q(f"pgbouncer_used_clients{{{T}}}", "{{target}} used"),
           q(f"pgbouncer_config_max_client_connections{{{T}}}", "{{target}} max_client_conn")),
    table("Pools and modes", Query(f"pgbouncer_pools_mode_info{{{T}}}", instant=True), width=12),
    table("Version", Query(f"pgbouncer_version_info{{{T}}}", instant=True), width=12),
)

PREFECT = (
    series("Flow runs by state type", q(f"prefect_flow_runs{{{T}}}", "{{state_type}}")),
    series("Overdue SCHEDULED runs by work pool",
           q(f"prefect_scheduled_backlog_runs{{{T}}}", "{{work_pool}}")),
    series("Most overdue run by work pool",
           q(f"prefect_scheduled_backlog_max_delay_seconds{{{T}}}", "{{work_pool}}"), unit="s"),
    series("Late runs by work pool", q(f"prefect_late_runs{{{T}}}", "{{work_pool}}")),
    series("Upcoming runs (within the horizon)",
           q(f"prefect_upcoming_runs{{{T}}}", "{{work_pool}}")),
    series("All future SCHEDULED runs", q(f"prefect_scheduled_runs{{{T}}}", "{{target}}")),
    series("Work pools: online workers and runs in flight",
           q(f"prefect_work_pool_online_workers{{{T}}}", "{{work_pool}} online workers"),
           q(f"prefect_work_pool_runs_in_flight{{{T}}}", "{{work_pool}} in flight")),
    table("Work pool status", Query(f"prefect_work_pool_status{{{T}}} == 1", instant=True),
          width=12),
    table("Paused work pools and queues",
          Query(f"prefect_work_pool_paused{{{T}}}", instant=True),
          Query(f"prefect_work_queue_paused{{{T}}}", instant=True), width=12),
    series("Exporter's API requests per second and mean latency",
           q(f"sum by (endpoint) (rate(prefect_api_requests_total{{{T}}}[$__rate_interval]))",
             "{{endpoint}} req/s"),
           q(f"sum(rate(prefect_api_request_duration_seconds_total{{{T}}}[$__rate_interval])) / "
             f"sum(rate(prefect_api_requests_total{{{T}}}[$__rate_interval]))", "mean s")),
    series("Stuck runs by state (longer than --stuck-run-seconds)",
           q(f"sum by (state_type) (prefect_flow_runs_stuck{{{T}}})", "{{state_type}}"),
           q(f"max by (state_type) (prefect_flow_run_oldest_state_age_seconds{{{T}}}) / 3600",
             "{{state_type}} oldest, hours")),
    series("RUNNING runs without heartbeat (zombies)",
           q(f"sum by (work_pool) (prefect_flow_runs_without_heartbeat{{{T}}})",
             "{{work_pool}}"),
           q(f"prefect_flow_run_heartbeats_seen{{{T}}}", "{{target}} heartbeats seen")),
    series("Flow runs ended in the outcome window, by state",
           q(f"sum by (state_type) (prefect_flow_runs_ended{{{T}}})", "{{state_type}}")),
    series("Concurrency limits: active slots, slots and possible holders running",
           q(f"prefect_concurrency_limit_active_slots{{{T}}}", "{{limit}} active"),
           q(f"prefect_concurrency_limit_slots{{{T}}}", "{{limit}} slots"),
           q(f"prefect_concurrency_limit_holders_running{{{T}}}", "{{limit}} holders running")),
    table("Work queues: status and time since a worker polled them",
          Query(f"prefect_work_queue_status{{{T}}} == 1", instant=True),
          Query(f"prefect_work_queue_last_polled_age_seconds{{{T}}}", instant=True)),
    series("Deployments by status (from their work queue)",
           q(f"prefect_deployments{{{T}}}", "{{status}}")),
    series("Background services: what they left undone",
           q(f"sum by (target) (prefect_overdue_unmarked_runs{{{T}}})",
             "{{target}} overdue runs not marked Late (late_runs service)"),
           q(f"prefect_deployments_without_future_runs{{{T}}}",
             "{{target}} scheduled deployments without a future run (scheduler)"),
           description="Prefect has no health endpoint for its services: above 0, one is not "
                       "running."),
    series("API to database round trip (GET /api/ready vs /api/health)",
           q(f"prefect_api_ready_duration_seconds{{{T}}}", "{{target}} ready"),
           q(f"prefect_api_health_duration_seconds{{{T}}}", "{{target}} health"), unit="s",
           description="Ready takes one connection out of the API's SQLAlchemy pool, health "
                       "none: ready far above health is that pool saturated."),
    series("Events: newest age and cleanup lag",
           q(f"prefect_events_newest_age_seconds{{{T}}}", "{{target}} newest event age"),
           q(f"prefect_retention_lag_seconds{{{T}}}", "{{target}} {{kind}} cleanup lag"),
           unit="s"),
    series("Big tables: how far back each goes, and its retention",
           q(f"prefect_table_oldest_row_age_seconds{{{T}}}", "{{table}} oldest ({{column}})"),
           q(f"prefect_table_retention_seconds{{{T}}}", "{{table}} retention"),
           unit="s",
           description="The oldest row per table (where the exporter's role may read that one "
                       "column, see the doctor) against the retention Prefect applies to it; "
                       "a table without a retention line is never cleaned by this release. "
                       "PrefectTableRetentionBacklog: an hour past its line."),
    table("Server settings", Query(f"prefect_server_setting{{{T}}}", instant=True)),
    table("Server version", Query(f"prefect_server_info{{{T}}}", instant=True), width=12),
)

# Prefect in HA: the replicas, Redis, and what the services leave there (exporter/redis/)
DOCKET = 'group="docket-workers"'
PERSISTER = 'stream="events",group="event-persister"'
# Prefect's own /api/metrics (PREFECT_SERVER_METRICS_ENABLED), scraped by Prometheus from each
# replica as job "prefect-api" (deploy/compose): its names, not the exporter's
PREFECT_OWN_METRICS = ("prefect_worker_channel_connections_total",
                       "prefect_worker_channel_heartbeat_failures_total")
PREFECT_JOB = 'job="prefect-api"'


def alive_stat(title: str, expr: str, description: str = "") -> Panel:
    """Red at 0, green from 1: something that must be running."""
    return Panel(title, "stat", (Query(expr, instant=True),), "short",
                 ((None, RED), (1, GREEN)), 4, 5, description)


HA = (
    up_stat("Redis", f"min(redis_up{{{T}}})"),
    alive_stat("Active Docket workers", f"sum(redis_stream_group_consumers_active{{{DOCKET},"
               f"{T}}}) or vector(0)",
               "Consumers of Docket's docket-workers group that read within the idle limit: "
               "0 = Prefect's background services are not running."),
    stat("Events waiting for the persister", f"sum(redis_stream_group_undelivered_messages"
         f"{{{PERSISTER},{T}}}) or vector(0)", "short", above("redis_undelivered_warning"),
         None, "Events on the stream not yet delivered to the event-persister group (judged "
               "from the ids)."),
    stat("Redis memory / maxmemory", f"max(redis_memory_used_bytes{{{T}}} / "
         f"(redis_memory_max_bytes{{{T}}} > 0)) or vector(0)", "percentunit",
         TH["redis_memory_warning_ratio"], TH["redis_memory_critical_ratio"],
         "0 when no maxmemory is set."),
    alive_stat("API replicas up", f"sum(prefect_api_up{{{T}}}) or vector(0)",
               "Prefect API targets answering; the table below names the one down."),
    stat("Abandoned groups", f"count(redis_stream_group_consumers_active{{{T}}} == 0 and on "
         f"(target, db, stream, group) redis_stream_group_undelivered_messages{{{T}}} > 0) or "
         "vector(0)", "short", 1, None,
         "Groups with entries to read and no active consumer: their entries are not "
         "processed, and they may hold the stream's trimming."),
    table("API replicas", Query(f"prefect_api_up{{{T}}}", instant=True), width=8,
          description="1 = answering. Name each replica as its own target to see which one "
                      "is down."),
    series("Consumer groups: active consumers",
           q(f"redis_stream_group_consumers_active{{{T}}}", "{{stream}} {{group}}"), width=8),
    series("Consumer groups: undelivered and pending",
           q(f"redis_stream_group_undelivered_messages{{{T}}}",
             "{{stream}} {{group}} undelivered"),
           q(f"redis_stream_group_messages_pending{{{T}}}", "{{stream}} {{group}} pending"),
           width=8),
    series("Streams: length", q(f"redis_stream_length{{{T}}}", "{{target}} {{stream}}")),
    series("Streams: oldest entry age", q(f"redis_stream_oldest_entry_age_seconds{{{T}}}",
                                          "{{target}} {{stream}}"), unit="s",
           description="Growing without bound: the stream is not trimmed (an abandoned "
                       "group)."),
    series("Redis memory", q(f"redis_memory_used_bytes{{{T}}}", "{{target}} used"),
           q(f"redis_memory_max_bytes{{{T}}}", "{{target}} maxmemory (0: none)"), unit="bytes"),
    series("Redis clients and commands per poll",
           q(f"redis_connected_clients{{{T}}}", "{{target}} clients"),
           q(f"redis_poll_commands{{{T}}}", "{{target}} exporter commands per poll")),
    Panel("Prefect's own metrics: worker channel per replica", "timeseries",
          (q(f"sum by (instance, event) (rate(prefect_worker_channel_connections_total"
             f"{{{PREFECT_JOB}}}[$__rate_interval]))", "{{instance}} {{event}}/s"),
           q(f"rate(prefect_worker_channel_heartbeat_failures_total{{{PREFECT_JOB}}}"
             "[$__rate_interval])", "{{instance}} heartbeat failures/s")),
          width=12, height=8, optional=True,
          description="From each replica's /api/metrics (PREFECT_SERVER_METRICS_ENABLED=true), "
                      "scraped by Prometheus as job prefect-api; empty when not scraped. "
                      "Prefect 3.8.8 serves these counters and its process metrics."),
    Panel("Prefect's own metrics: replica memory and CPU", "timeseries",
          (q(f"process_resident_memory_bytes{{{PREFECT_JOB}}}", "{{instance}} RSS"),
           q(f"rate(process_cpu_seconds_total{{{PREFECT_JOB}}}[$__rate_interval]) * 1e9",
             "{{instance}} CPU (ns/s)")),
          "bytes", width=12, height=8, optional=True,
          description="The replicas' own process metrics, from /api/metrics."),
)

DASHBOARDS: dict[str, tuple[str, tuple[Panel, ...]]] = {
    "overview": ("Prefect database: on-call overview", OVERVIEW),
    "postgres": ("Prefect database: PostgreSQL activity and locks", POSTGRES),
    "pgbouncer": ("Prefect database: PgBouncer pools", PGBOUNCER),
    "prefect": ("Prefect database: scheduling and work pools", PREFECT),
    "ha": ("Prefect HA: API replicas, Redis and Docket", HA),
}
OPTIONAL_TITLES = frozenset(p.title for _, panels in DASHBOARDS.values() for p in panels
                            if p.optional)


def _layout(panels: Sequence[Panel]) -> Iterator[tuple[Panel, dict[str, int]]]:
    x = y = row_height = 0
    for panel in panels:
        if x + panel.width > 24:
            x, y, row_height = 0, y + row_height, 0
        yield panel, {"x": x, "y": y, "w": panel.width, "h": panel.height}
        x += panel.width
        row_height = max(row_height, panel.height)


def _panel(panel: Panel, panel_id: int, pos: dict[str, int]) -> dict[str, Any]:
    targets = [{"datasource": DS, "expr": query.expr, "legendFormat": query.legend,
                "refId": chr(ord("A") + i), "instant": query.instant,
                "range": not query.instant, **({"format": "table"} if panel.kind == "table"
                                               else {})}
               for i, query in enumerate(panel.queries)]
    spec: dict[str, Any] = {
        "id": panel_id, "type": panel.kind, "title": panel.title, "gridPos": pos,
        "datasource": DS, "targets": targets, "description": panel.description,
        "fieldConfig": {"defaults": {
            "unit": panel.unit, "mappings": list(panel.mappings),
            "thresholds": {"mode": "absolute", "steps": [
                {"value": value, "color": color} for value, color in panel.steps]},
            **({"color": {"mode": "thresholds"}} if panel.kind == "stat" else {}),
        }, "overrides": []},
        "options": {},
    }
    if panel.kind == "stat":
        spec["options"] = {"colorMode": "background", "graphMode": "none",
                           "reduceOptions": {"calcs": ["lastNotNull"], "values": False}}
    if panel.kind == "table" and len(panel.queries) > 1:
        spec["transformations"] = [{"id": "merge", "options": {}}]
    return spec


def dashboard(uid: str, title: str, panels: Sequence[Panel]) -> dict[str, Any]:
    return {
        "uid": f"prefect-pg-{uid}", "title": title, "tags": ["prefect", "postgres", "pgbouncer"],
        "timezone": "browser", "schemaVersion": 39, "version": 1, "editable": True,
        "refresh": "30s", "time": {"from": "now-3h", "to": "now"},
        "templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus",
             "label": "Data source", "current": {}, "hide": 0},
            {"name": "target", "type": "query", "datasource": DS, "label": "Target",
             "query": {"query": "label_values(prefect_pg_exporter_source_up, target)",
                       "refId": "targets"},
             "definition": "label_values(prefect_pg_exporter_source_up, target)",
             "multi": True, "includeAll": True, "allValue": ".*", "refresh": 2, "current": {},
             "hide": 0},
        ]},
        "links": [{"title": "Runbooks", "type": "link", "targetBlank": True,
                   "url": RUNBOOK_BASE_URL}],
        "panels": [_panel(p, i, pos) for i, (p, pos) in enumerate(_layout(panels), start=1)],
    }


def render_all() -> dict[str, str]:
    return {f"{uid}.json": json.dumps(dashboard(uid, title, panels), indent=2) + "\n"
            for uid, (title, panels) in DASHBOARDS.items()}


def panel_queries() -> Iterator[tuple[str, str, str]]:
    """(dashboard, panel title, expr) for every query of every panel."""
    for uid, (_, panels) in DASHBOARDS.items():
        for panel in panels:
            for query in panel.queries:
                yield uid, panel.title, query.expr


def main(argv: Sequence[str]) -> int:
    out = Path(argv[0] if argv else "dashboards")
    out.mkdir(parents=True, exist_ok=True)
    for name, text in render_all().items():
        (out / name).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
