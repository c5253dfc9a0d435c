"""Prometheus alerting and recording rules, generated so thresholds stay overridable.

    python -m exporter.alerting > alerts/prefect-pg-exporter.rules.yml       # the defaults
    python -m exporter.alerting --set idle_in_transaction_warning_seconds=120 > my.rules.yml
    python -m exporter.alerting --thresholds                                   # list them

Each alert carries `severity` (critical pages, warning and info do not), and the annotations
`summary`, `description` (with the offending value and labels) and `runbook_url` (an anchor per
alert in docs/runbooks.md). docs/alerts.md is generated from the same data.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from exporter import diagnosis
from exporter.finding import Check
from exporter.pgbouncer import checks as pgbouncer
from exporter.postgres import checks as postgres
from exporter.prefect import checks as prefect
from exporter.prefect import compat
from exporter.prefect.chain import DATABASE_BLOCKED
from exporter.prefect.snapshot import SHARED_DOCKET_SCHEMES
from exporter.redis import checks as redis
from exporter.redis.checks import DOCKET_GROUP, EVENTS_STREAM, PERSISTER_GROUP
from exporter.thresholds import THRESHOLDS, parse_overrides, thresholds

RUNBOOK_BASE_URL = (
    "https://github.com/prefect-pg-exporter/prefect-pg-exporter/blob/main/docs/runbooks.md")


@dataclass(frozen=True)
class Alert:
    name: str
    severity: str  # critical | warning | info
    expr: str  # may use {threshold_name} placeholders
    for_seconds: int
    summary: str
    description: str  # Prometheus template text
    # The doctor's check that sees the same condition: on the same data both fire or neither
    # (with a finding of at least this severity). tests/unit/test_parity.py holds them to it.
    check: Check | None = None

    def rule(self, t: Mapping[str, float], for_scale: float, runbook: str,
             annotations: bool = True) -> dict[str, Any]:
        duration = max(1, round(self.for_seconds * for_scale))
        rule: dict[str, Any] = {
            "alert": self.name,
            "expr": " ".join(self.expr.format(**{k: _num(v) for k, v in t.items()}).split()),
            "for": f"{duration}s" if duration < 60 or duration % 60 else f"{duration // 60}m",
            "labels": {"severity": self.severity},
        }
        if annotations:
            rule["annotations"] = {
                "summary": self.summary,
                "description": self.description,
                "runbook_url": f"{runbook}#{self.name.lower()}",
            }
        return rule


def _num(value: float) -> str:
    return f"{value:g}"


RECORDING_RULES: tuple[tuple[str, str], ...] = (
    ("prefect_pg:postgres_client_backends:sum", "sum by (target) (postgres_connections)"),
    ("prefect_pg:postgres_connection_budget:ratio",
     "sum by (target) (postgres_connections) / on (target) "
     "(postgres_max_connections - postgres_superuser_reserved_connections)"),
    ("prefect_pg:postgres_idle_in_transaction_max_age_seconds:max",
     'max by (target) (postgres_transaction_max_age_seconds{state=~"idle in transaction.*"})'),
    ("prefect_pg:pgbouncer_client_waiting_connections:sum",
     "sum by (target) (pgbouncer_pools_client_waiting_connections)"),
    ("prefect_pg:prefect_late_runs:sum", "sum by (target) (prefect_late_runs)"),
    # growth against cleanup, per hot table: > 0 means rows pile up faster than they go
    ("prefect_pg:postgres_table_net_growth_rows:rate1h",
     "rate(postgres_table_inserted_rows_total[1h]) - rate(postgres_table_deleted_rows_total[1h])"),
    # the retention backlog per table: how far its oldest row is past the retention that
    # should have deleted it (the longest, where several Prefect targets say)
    ("prefect_pg:prefect_table_retention_lag_seconds",
     "prefect_table_oldest_row_age_seconds - on (table) group_left () "
     "max by (table) (prefect_table_retention_seconds)"),
)

# A work pool with nobody to take its runs: PrefectWorkPoolWithoutWorkers names that cause, so
# the Late and backlog alerts of the same pool stay quiet (one page, the root cause).
UNSERVED = "(prefect_work_pool_online_workers == 0 or prefect_work_pool_paused == 1)"

# Docket's workers group: a dead worker stays listed; a Docket nobody works for has none
DOCKET_ACTIVE = f'redis_stream_group_consumers_active{{{{group="{DOCKET_GROUP}"}}}}'
DOCKET_CONSUMERS = f'redis_stream_group_consumers{{{{group="{DOCKET_GROUP}"}}}}'
DOCKET_UNDELIVERED = f'redis_stream_group_undelivered_messages{{{{group="{DOCKET_GROUP}"}}}}'
# The event persister's backlog on Prefect's events stream (prefect-redis).
PERSISTER = ("redis_stream_group_undelivered_messages"
             f'{{{{stream="{EVENTS_STREAM}",group="{PERSISTER_GROUP}"}}}}')

# Opt-in (alerts/compat/): the names of prometheus-community/pgbouncer_exporter up to 0.10
# (SHOW STATS), which the pgbouncer-mixin's dashboards and older dashboards still query. 0.11
# moved to SHOW STATS_TOTALS and pgbouncer_stats_totals_*, the names this exporter uses.
PGBOUNCER_EXPORTER_0_10_NAMES: tuple[tuple[str, str], ...] = tuple(
    (f"pgbouncer_stats_{suffix}", f"pgbouncer_stats_totals_{suffix}") for suffix in (
        "queries_pooled_total", "queries_duration_seconds_total", "received_bytes_total",
        "sent_bytes_total", "client_wait_seconds_total", "sql_transactions_pooled_total",
        "server_in_transaction_seconds_total"))


def compat_rule_groups() -> dict[str, Any]:
    return {"groups": [{"name": "prefect-pg-exporter.pgbouncer-exporter-0.10-names",
                        "rules": [{"record": old, "expr": new}
                                  for old, new in PGBOUNCER_EXPORTER_0_10_NAMES]}]}


ALERTS: tuple[Alert, ...] = (
    Alert("PostgresIdleInTransaction", "warning",
          'max by (target, datname, application_name) (postgres_transaction_max_age_seconds'
          '{{state=~"idle in transaction.*"}}) > {idle_in_transaction_warning_seconds}', 60,
          "A session has been idle in transaction for {{ $value | humanizeDuration }}",
          "{{ $labels.application_name }} on {{ $labels.datname }} ({{ $labels.target }}) "
          "holds a transaction open without running anything: its row locks block writers "
          "(INSERT INTO task_run ...). See postgres_oldest_transaction_age_seconds for its pid.",
          check=postgres.IDLE_IN_TRANSACTION_CHECK),
    Alert("PostgresIdleInTransactionStuck", "critical",
          'max by (target, datname, application_name) (postgres_transaction_max_age_seconds'
          '{{state=~"idle in transaction.*"}}) > {idle_in_transaction_critical_seconds}', 60,
          "A session is stuck idle in transaction for {{ $value | humanizeDuration }}",
          "{{ $labels.application_name }} on {{ $labels.datname }} ({{ $labels.target }}) has "
          "held its transaction open for {{ $value | humanizeDuration }}. Terminate it if it "
          "blocks others; set idle_in_transaction_session_timeout.",
          check=postgres.IDLE_IN_TRANSACTION_CHECK),
    Alert("PostgresLongTransaction", "warning",
          'max by (target, datname, application_name) (postgres_transaction_max_age_seconds'
          '{{state="active"}}) > {active_transaction_warning_seconds}', 60,
          "A transaction has been running for {{ $value | humanizeDuration }}",
          "An active transaction of {{ $labels.application_name }} on {{ $labels.datname }} "
          "({{ $labels.target }}) is {{ $value | humanizeDuration }} old; it holds its locks "
          "and keeps vacuum from cleaning up.",
          check=postgres.LONG_TRANSACTION),
    Alert("PostgresLongTransactionCritical", "critical",
          'max by (target, datname, application_name) (postgres_transaction_max_age_seconds'
          '{{state="active"}}) > {active_transaction_critical_seconds}', 60,
          "A transaction has been running for {{ $value | humanizeDuration }}",
          "An active transaction of {{ $labels.application_name }} on {{ $labels.datname }} "
          "({{ $labels.target }}) is {{ $value | humanizeDuration }} old.",
          check=postgres.LONG_TRANSACTION),
    Alert("PostgresSessionsBlocked", "critical",
          "postgres_blocked_max_wait_seconds > {blocked_wait_critical_seconds}", 60,
          "Sessions wait on locks for {{ $value | humanizeDuration }}",
          "On {{ $labels.target }} a session has waited {{ $value | humanizeDuration }} for a "
          "lock another session holds. postgres_blocked_sessions says how many wait, "
          "postgres_blocking_sessions how many hold; `prefect-pg-exporter doctor` names the root "
          "blocker.",
          check=postgres.LOCK_CHAIN),
    Alert("PostgresClientReadStall", "critical",
          "postgres_client_read_in_transaction_max_age_seconds > "
          "{client_read_stall_critical_seconds}", 60,
          "A client has been silent mid-statement for {{ $value | humanizeDuration }}",
          "On {{ $labels.target }} an active statement waits on ClientRead: its client (an "
          "event loop blocked, a proxy, a stalled COPY) stopped sending mid-statement while "
          "holding its locks. postgres_client_read_in_transaction_sessions says how many.",
          check=postgres.CLIENT_READ_STALL),
    Alert("PgBouncerClientsWaiting", "warning",
          "pgbouncer_pools_client_waiting_connections > {pgbouncer_waiting_clients_warning}", 60,
          "{{ $value }} clients wait for a server connection in pool "
          "{{ $labels.database }}/{{ $labels.user }}",
          "PgBouncer {{ $labels.target }}: every server connection of pool "
          "{{ $labels.database }}/{{ $labels.user }} is busy and clients queue; SQLAlchemy pool "
          "timeouts follow.",
          check=pgbouncer.POOL_WAITING),
    Alert("PgBouncerPoolExhausted", "critical",
          "pgbouncer_pools_client_maxwait_seconds > {pgbouncer_maxwait_critical_seconds}", 60,
          "Clients wait {{ $value | humanizeDuration }} for a server connection",
          "PgBouncer {{ $labels.target }} pool {{ $labels.database }}/{{ $labels.user }}: the "
          "oldest waiting client has waited {{ $value | humanizeDuration }}. The pool is "
          "exhausted: find what holds its server connections (long or idle transactions).",
          check=pgbouncer.POOL_WAITING),
    Alert("PostgresConnectionsNearLimit", "warning",
          "prefect_pg:postgres_connection_budget:ratio > {connections_warning_ratio}", 300,
          "{{ $value | humanizePercentage }} of max_connections in use",
          "{{ $labels.target }}: client backends use {{ $value | humanizePercentage }} of "
          "max_connections - superuser_reserved_connections. Replicas x (pool_size + "
          "max_overflow) must fit.",
          check=postgres.CONNECTION_BUDGET),
    Alert("PostgresConnectionsExhausted", "critical",
          "prefect_pg:postgres_connection_budget:ratio > {connections_critical_ratio}", 120,
          "{{ $value | humanizePercentage }} of max_connections in use",
          "{{ $labels.target }}: new connections are about to be refused (FATAL: sorry, too "
          "many clients already).",
          check=postgres.CONNECTION_BUDGET),
    Alert("PrefectLateRuns", "warning",
          "prefect_late_runs > {late_runs_warning} and delta(prefect_late_runs[15m]) >= 0 "
          "unless on (target, work_pool) " + UNSERVED, 300,
          "{{ $value }} Late flow runs in work pool {{ $labels.work_pool }}",
          "{{ $labels.target }}: runs in work pool {{ $labels.work_pool }} passed their "
          "start time and were marked Late, and the count is not going down. Are workers "
          "online, is the pool paused, is the database keeping up?",
          check=prefect.LATE_RUNS),
    Alert("PrefectScheduledBacklogDelay", "warning",
          "prefect_scheduled_backlog_max_delay_seconds > {backlog_delay_warning_seconds} "
          "unless on (target, work_pool) " + UNSERVED, 300,
          "The most overdue run in {{ $labels.work_pool }} is "
          "{{ $value | humanizeDuration }} late",
          "{{ $labels.target }}: SCHEDULED runs in work pool {{ $labels.work_pool }} are not "
          "being picked up.",
          check=prefect.SCHEDULED_BACKLOG),
    Alert("PrefectWorkPoolWithoutWorkers", "warning",
          "prefect_scheduled_backlog_runs > 0 and on (target, work_pool) "
          "(prefect_work_pool_online_workers == 0 or prefect_work_pool_paused == 1)", 300,
          "Work pool {{ $labels.work_pool }} has overdue runs and no worker to take them",
          "{{ $labels.target }}: {{ $value }} overdue runs in {{ $labels.work_pool }}, which "
          "is paused or has no online worker.",
          check=prefect.WORK_POOL_UNSERVED),
    Alert("PrefectTooManyScheduledRuns", "warning",
          "prefect_scheduled_runs > {scheduled_runs_warning}", 900,
          "{{ $value }} future SCHEDULED runs",
          "{{ $labels.target }}: the scheduler has created far more future runs than it needs; "
          "check PREFECT_SERVER_SERVICES_SCHEDULER_MAX_RUNS and MAX_SCHEDULED_TIME.",
          check=prefect.SCHEDULER_HORIZON),
    Alert("PrefectDuplicatedBackgroundServices", "warning",
          'postgres_listen_sessions{{channel="prefect_automation_changes"}} > '
          "{listen_sessions_warning} unless on () prefect_server_docket_info{{scheme=~"
          f'"{"|".join(SHARED_DOCKET_SCHEMES)}"}}}}', 300,
          "{{ $value }} copies of Prefect's background services are running",
          "{{ $labels.target }}: {{ $value }} sessions LISTEN on prefect_automation_changes; "
          "each copy of the services holds one. Several copies duplicate every loop and contend "
          "on the database: run the services once (`prefect server services start`) and the "
          "API replicas with --no-services. (Quiet where Prefect's docket is on Redis: "
          "several service replicas are then supported.)",
          check=postgres.DUPLICATED_SERVICES),
    Alert("PrefectPgExporterSourceDown", "warning",
          "prefect_pg_exporter_source_up == 0", 120,
          "The exporter cannot read {{ $labels.source }} {{ $labels.target }}",
          "prefect-pg-exporter's polls of {{ $labels.source }} {{ $labels.target }} fail; its "
          "metrics are missing. The exporter's / page shows the last error.",
          check=diagnosis.SOURCE_DOWN),
    Alert("PrefectPgExporterSourceStale", "warning",
          "time() - prefect_pg_exporter_source_last_success_timestamp_seconds > "
          "{source_stale_seconds} and prefect_pg_exporter_source_last_success_timestamp_seconds "
          "> 0", 60,
          "No fresh data from {{ $labels.source }} {{ $labels.target }} for "
          "{{ $value | humanizeDuration }}",
          "The last successful poll of {{ $labels.source }} {{ $labels.target }} is "
          "{{ $value | humanizeDuration }} old."),
    Alert("PostgresNoIdleInTransactionTimeout", "warning",
          'postgres_setting_seconds{{name="idle_in_transaction_session_timeout"}} == 0', 3600,
          "idle_in_transaction_session_timeout is off",
          "{{ $labels.target }}: nothing ends a session left idle in transaction; one stuck "
          "client can hold locks forever.",
          check=postgres.NO_IDLE_IN_TRANSACTION_TIMEOUT),
    Alert("PostgresNoStatementTimeout", "info",
          'postgres_setting_seconds{{name="statement_timeout"}} == 0', 3600,
          "statement_timeout is off",
          "{{ $labels.target }}: no statement is ever cancelled for running too long.",
          check=postgres.NO_STATEMENT_TIMEOUT),
    Alert("PrefectStatementCacheWithTransactionPooling", "warning",
          'count(pgbouncer_pools_mode_info{{pool_mode="transaction"}} unless on (target) '
          "(pgbouncer_config_max_prepared_statements > 0)) > 0 and on () "
          "count(prefect_server_setting) > 0 unless on () "
          "(count(prefect_server_setting{{name=~"
          '"server.database.sqlalchemy.connect_args.(prepared_)?statement_cache_size"}} == 0) '
          ">= 2)", 600,
          "PgBouncer transaction pooling with Prefect's asyncpg statement caches on",
          "PgBouncer pools in transaction mode (without max_prepared_statements) but the Prefect "
          "server does not report statement_cache_size=0 and prepared_statement_cache_size=0: "
          "expect `prepared statement \"__asyncpg_stmt_...\" does not exist`. Set "
          "PREFECT_SERVER_DATABASE_SQLALCHEMY_CONNECT_ARGS_STATEMENT_CACHE_SIZE=0 and "
          "..._PREPARED_STATEMENT_CACHE_SIZE=0.",
          check=compat.STATEMENT_CACHE),
    Alert("PrefectLateRunsServiceStalled", "warning",
          "prefect_overdue_unmarked_runs > {overdue_unmarked_runs_warning}", 180,
          "Overdue runs in {{ $labels.work_pool }} are not being marked Late",
          "{{ $labels.target }}: {{ $value }} SCHEDULED runs in work pool "
          "{{ $labels.work_pool }} are overdue by more than late_runs.after_seconds plus two "
          "loops and still not Late: Prefect's late_runs service is not running (the "
          "background services are down, stalled, or run with --no-services everywhere).",
          check=prefect.LATE_RUNS_SERVICE_STALLED),
    Alert("PrefectSchedulerStalled", "warning",
          "prefect_deployments_without_future_runs > {deployments_without_future_runs_warning}",
          600,
          "{{ $value }} scheduled deployments have no future run",
          "{{ $labels.target }}: deployments that had auto-scheduled runs within the last day "
          "have none left in the future: Prefect's scheduler service is not creating runs "
          "(down, stalled, or disabled). Deactivating a schedule also deletes its future runs.",
          check=prefect.SCHEDULER_STALLED),
    Alert("PrefectRetentionLagging", "warning",
          "prefect_retention_lag_seconds > {retention_lag_warning_seconds}", 1800,
          "Prefect's {{ $labels.kind }} cleanup is {{ $value | humanizeDuration }} behind",
          "{{ $labels.target }}: rows of kind {{ $labels.kind }} older than their retention "
          "period are still there: the database grows (events and event_resources first). "
          "Prefect deletes old events in its event persister (before 3.6.21) or db_vacuum "
          "service (3.6.21+); check the services run and their logs.",
          check=prefect.EVENTS_RETENTION_LAGGING),
    Alert("PrefectEventPipelineStalled", "warning",
          "prefect_events_newest_age_seconds > {event_pipeline_stall_seconds} and on (target) "
          "(prefect_events_newest_age_seconds - prefect_flow_run_last_start_age_seconds > 60)",
          300,
          "No new Prefect event for {{ $value | humanizeDuration }} while runs start",
          "{{ $labels.target }}: flow runs started after the newest event, which is "
          "{{ $value | humanizeDuration }} old: the event persister (or the messaging between "
          "the API and the services) has stopped. Automations and the UI's event feed are "
          "blind meanwhile.",
          check=prefect.EVENT_PIPELINE_STALLED),
    Alert("PrefectApiSlow", "warning",
          "prefect_api_ready_duration_seconds > {api_ready_warning_seconds}", 300,
          "Prefect's API takes {{ $value | humanizeDuration }} to reach its database",
          "{{ $labels.target }}: GET /api/ready, one connection out of the API server's "
          "SQLAlchemy pool, takes {{ $value | humanizeDuration }}: that pool is exhausted or "
          "the database is slow. QueuePool timeouts follow; look at pool_size + max_overflow "
          "and what holds the connections.",
          check=prefect.API_SLOW),
    Alert("PrefectApiPoolSaturated", "warning",
          "prefect_api_ready_duration_seconds > {api_pool_saturated_ready_seconds} "
          "and prefect_api_ready_duration_seconds "
          "> {api_pool_saturated_ratio} * prefect_api_health_duration_seconds "
          # PgBouncer or PostgreSQL explain a slow /ready: then it is their alert, not this one
          "unless on () (max(pgbouncer_pools_client_waiting_connections) "
          "> {pgbouncer_waiting_clients_warning}) "
          "unless on () (max(postgres_blocked_sessions) > 0) "
          "unless on () (max(postgres_transaction_max_age_seconds"
          '{{state=~"idle in transaction.*"}}) > {idle_in_transaction_warning_seconds})', 120,
          "Prefect's own database pool is saturated",
          "{{ $labels.target }}: GET /api/ready, which waits for a connection from the API "
          "server's SQLAlchemy pool, takes {{ $value | humanizeDuration }} while GET "
          "/api/health answers at once, and PgBouncer has no waiting clients nor PostgreSQL "
          "lock waits: the server's own pool is too small for its load. Raise "
          "PREFECT_SERVER_DATABASE_SQLALCHEMY_POOL_SIZE / MAX_OVERFLOW within the connection "
          "budget, or add API replicas.",
          check=prefect.API_POOL_SATURATED),
    # the doctor's join of Prefect's sessions to the lock tree and PgBouncer's pools, per root
    Alert("PrefectDatabaseBlocked", "warning",
          "sum by (target) (prefect_database_blocked_roots) > 0", 60,
          "Prefect's database work waits behind {{ $value }} session(s) on PostgreSQL",
          "{{ $labels.target }}: Prefect's own database sessions wait on a lock held by another "
          "session (or its PgBouncer pool's clients wait for what that session holds): the API "
          "requests that need those tables hang. `prefect-pg-exporter doctor` names the root "
          "(pid, application, table) and /incidents keeps it after it is gone.",
          check=DATABASE_BLOCKED),
    Alert("PrefectDatabaseBlockedCritical", "critical",
          'sum by (target) (prefect_database_blocked_roots{{severity="critical"}}) > 0', 60,
          "Prefect's API hangs behind {{ $value }} session(s) on PostgreSQL",
          "{{ $labels.target }}: one of Prefect's database sessions has waited longer than "
          "blocked_wait_critical_seconds on a lock, or the API could not be read while they "
          "wait: its requests time out. Terminate the root the doctor names "
          "(SELECT pg_terminate_backend(pid)), not the waiters.",
          check=DATABASE_BLOCKED),
    Alert("PrefectStuckRuns", "warning",
          "prefect_flow_runs_stuck > {stuck_runs_warning}", 600,
          "{{ $value }} flow runs stuck in {{ $labels.state_type }} in {{ $labels.work_pool }}",
          "{{ $labels.target }}: flow runs of work pool {{ $labels.work_pool }} have been "
          "{{ $labels.state_type }} for longer than the stuck threshold: they hold their pool's "
          "and their tags' concurrency slots. prefect_flow_run_oldest_state_age_seconds says "
          "how long.",
          check=prefect.STUCK_RUNS),
    Alert("PrefectZombieRuns", "warning",
          "prefect_flow_runs_without_heartbeat > {zombie_runs_warning}", 300,
          "{{ $value }} RUNNING flow runs in {{ $labels.work_pool }} stopped sending heartbeats",
          "{{ $labels.target }}: RUNNING flow runs of work pool {{ $labels.work_pool }} sent no "
          "heartbeat within the timeout: their process died (OOM kill, node lost, worker killed) "
          "and they will stay RUNNING, holding their slots, until marked Crashed.",
          check=prefect.ZOMBIE_RUNS),
    Alert("PrefectConcurrencySlotsLeaked", "warning",
          "prefect_concurrency_limit_saturated_seconds > {concurrency_slots_leak_seconds} "
          "and on (target, limit) (prefect_concurrency_limit_active_slots > "
          "prefect_concurrency_limit_holders_running)", 60,
          "Concurrency limit {{ $labels.limit }} is full with fewer holders running",
          "{{ $labels.target }}: limit {{ $labels.limit }} has been full for "
          "{{ $value | humanizeDuration }} while fewer runs that could hold it are running than "
          "it has active slots: slots leaked (runs that ended without releasing them); "
          "everything waiting on it waits forever.",
          check=prefect.SLOTS_LEAKED),
    Alert("PrefectWorkQueueNotPolled", "warning",
          "prefect_work_queue_unpolled_deployments > 0 and on (target, work_pool) "
          "prefect_work_pool_online_workers > 0", 600,
          "No worker polls work queue {{ $labels.work_queue }} of {{ $labels.work_pool }}",
          "{{ $labels.target }}: work queue {{ $labels.work_queue }} is NOT_READY although its "
          "pool {{ $labels.work_pool }} has online workers: they poll other queues. Its "
          "{{ $value }} deployment(s) are NOT_READY and their runs wait.",
          check=prefect.QUEUE_UNPOLLED),
    Alert("PrefectFlowRunsFailing", "warning",
          'sum by (target, work_pool) (prefect_flow_runs_ended{{state_type="FAILED"}}) / '
          "sum by (target, work_pool) (prefect_flow_runs_ended) > {failed_runs_warning_ratio} "
          "and on (target, work_pool) sum by (target, work_pool) (prefect_flow_runs_ended) >= "
          "{ended_runs_minimum}", 600,
          "{{ $value | humanizePercentage }} of the flow runs ended in "
          "{{ $labels.work_pool }} failed",
          "{{ $labels.target }}: within the outcome window, {{ $value | humanizePercentage }} "
          "of the runs that ended in work pool {{ $labels.work_pool }} FAILED (their code "
          "raised).",
          check=prefect.FAILED_RUNS),
    Alert("PrefectFlowRunsCrashing", "warning",
          'sum by (target, work_pool) (prefect_flow_runs_ended{{state_type="CRASHED"}}) / '
          "sum by (target, work_pool) (prefect_flow_runs_ended) > {crashed_runs_warning_ratio} "
          "and on (target, work_pool) sum by (target, work_pool) (prefect_flow_runs_ended) >= "
          "{ended_runs_minimum}", 600,
          "{{ $value | humanizePercentage }} of the flow runs ended in "
          "{{ $labels.work_pool }} crashed",
          "{{ $labels.target }}: within the outcome window, {{ $value | humanizePercentage }} "
          "of the runs that ended in work pool {{ $labels.work_pool }} CRASHED: their "
          "infrastructure failed (process killed, pod evicted, image pull), not their code.",
          check=prefect.CRASHED_RUNS),
    # Prefect in HA (prefect-redis, Docket): what the services leave in Redis
    Alert("PrefectServicesDown", "critical",
          f"{DOCKET_ACTIVE} == 0 and on (target, db, stream, group) "
          f"({DOCKET_CONSUMERS} > 0 or {DOCKET_UNDELIVERED} > 0) "
          f"unless on (target) (max by (target) ({DOCKET_ACTIVE}) > 0)", 120,
          "Prefect's background services are not running (no active Docket worker)",
          "{{ $labels.target }}: no consumer of Docket's {{ $labels.group }} group on "
          "{{ $labels.stream }} has read for longer than the consumer idle limit: the "
          "`prefect server services start` process is dead, stuck or cut off from Redis, while "
          "the API replicas keep answering their health checks. Nothing is scheduled, no run "
          "is marked Late, automations and event persistence stop.",
          check=redis.SERVICES_DOWN),
    Alert("PrefectEventsNotPersisted", "critical",
          f"{PERSISTER} > 0 and on (target, db, stream, group) "
          "redis_stream_group_consumers_active == 0", 120,
          "{{ $value }} Prefect events wait and no event persister reads them",
          "{{ $labels.target }}: {{ $value }} events on stream {{ $labels.stream }} are not yet "
          "delivered to the event-persister group, which has no active consumer: events are "
          "missing from the UI and the event feed until the background services read them.",
          check=redis.EVENTS_NOT_PERSISTED),
    Alert("PrefectEventPersisterBehind", "warning",
          f"{PERSISTER} > {{redis_undelivered_warning}} or ({PERSISTER} > 0 and on (target, db, "
          "stream, group) redis_stream_group_consumers_active == 0)", 600,
          "Prefect's event persister is {{ $value }} events behind",
          "{{ $labels.target }}: {{ $value }} events on {{ $labels.stream }} are not yet "
          "delivered to the event-persister group: it reads slower than the API publishes "
          "(database slow, services overloaded) or not at all.",
          check=redis.EVENTS_NOT_PERSISTED),
    Alert("RedisStreamGroupAbandoned", "warning",
          f'redis_stream_group_consumers_active{{{{group!~"{DOCKET_GROUP}|{PERSISTER_GROUP}"}}}}'
          " == 0 and on (target, db, stream, group) redis_stream_group_undelivered_messages > 0 "
          "and on (target, db, stream) (max by (target, db, stream) "
          "(redis_stream_group_consumers_active) > 0)", 1800,
          "Consumer group {{ $labels.group }} on {{ $labels.stream }} is no longer read",
          "{{ $labels.target }}: group {{ $labels.group }} has no active consumer while another "
          "group of {{ $labels.stream }} reads on: its entries are not processed, and where "
          "prefect-redis trims to what every group has read the stream grows "
          "(redis_stream_oldest_entry_age_seconds). XGROUP DESTROY it if nothing is meant to "
          "read it (prefect #18606).",
          check=redis.GROUP_ABANDONED),
    Alert("RedisMemoryNearMax", "warning",
          "redis_memory_used_bytes / redis_memory_max_bytes > {redis_memory_warning_ratio} "
          "and on (target) redis_memory_max_bytes > 0", 300,
          "Redis uses {{ $value | humanizePercentage }} of its maxmemory",
          "{{ $labels.target }}: at maxmemory, with noeviction, Prefect's writes (events, "
          "Docket's tasks, leases) fail; with an eviction policy its streams may be evicted. "
          "Look for an untrimmed stream or an abandoned group first.",
          check=redis.MEMORY_NEAR_MAX),
    Alert("RedisMemoryExhausted", "critical",
          "redis_memory_used_bytes / redis_memory_max_bytes > {redis_memory_critical_ratio} "
          "and on (target) redis_memory_max_bytes > 0", 120,
          "Redis uses {{ $value | humanizePercentage }} of its maxmemory",
          "{{ $labels.target }}: Redis is about to refuse writes (OOM command not allowed) or "
          "evict Prefect's keys.",
          check=redis.MEMORY_NEAR_MAX),
    Alert("RedisDown", "critical", "redis_up == 0", 60,
          "Redis {{ $labels.target }} is unreachable",
          "The exporter cannot read Redis {{ $labels.target }}. With Prefect on Redis, events "
          "are neither published nor persisted, automations and Docket's background services "
          "(scheduling, Late marking) stop, while the API replicas may still pass their health "
          "checks. Bring Redis back, then restart the services process (prefect #22436)."),
    Alert("PostgresDatabaseFilling", "warning",
          "predict_linear(postgres_database_size_bytes[6h], {database_full_warning_days} * 86400)"
          " > {database_size_limit_bytes} and on () (vector({database_size_limit_bytes}) > 0)",
          1800,
          "Database {{ $labels.datname }} reaches its size budget within days",
          "{{ $labels.target }}: at the last 6 hours' growth, {{ $labels.datname }} will pass "
          "its size budget (database_size_limit_bytes) within the warning window. Prefect's "
          "events, event_resources and log tables grow fastest: check retention "
          "(prefect_retention_lag_seconds) and prefect_pg:postgres_table_net_growth_rows:rate1h.",
          check=postgres.DATABASE_GROWING),
    Alert("PostgresHotTableBloat", "warning",
          "postgres_table_dead_tuples > {dead_tuples_warning} and postgres_table_dead_tuples / "
          "(postgres_table_live_tuples + 1) > {dead_tuples_warning_ratio}", 3600,
          "{{ $labels.schema }}.{{ $labels.table }} has {{ $value }} dead tuples",
          "{{ $labels.target }}: autovacuum is not keeping up with {{ $labels.table }}; "
          "check its last (auto)vacuum time and long transactions holding back the horizon.",
          check=postgres.HOT_TABLE_BLOAT),
    Alert("PrefectTableRetentionBacklog", "warning",
          "prefect_pg:prefect_table_retention_lag_seconds > {retention_lag_warning_seconds}",
          1800,
          "{{ $labels.table }} holds rows {{ $value | humanizeDuration }} past their retention",
          "{{ $labels.target }}: the oldest row of {{ $labels.schema }}.{{ $labels.table }} "
          "(by {{ $labels.column }}) is older than the retention Prefect applies to it "
          "(prefect_table_retention_seconds) by {{ $value | humanizeDuration }}: the service "
          "that deletes them (event persister, db_vacuum) is not running or not keeping up.",
          check=postgres.TABLE_RETENTION_BACKLOG),
    Alert("PrefectTableUnretainedRows", "warning",
          "prefect_table_oldest_row_age_seconds > {unretained_rows_warning_seconds} unless on "
          "(table) prefect_table_retention_seconds", 3600,
          "{{ $labels.table }} holds rows {{ $value | humanizeDuration }} old that nothing "
          "deletes",
          "{{ $labels.target }}: no retention of this Prefect release deletes "
          "{{ $labels.schema }}.{{ $labels.table }} (flow runs, logs, artifacts without "
          "db_vacuum's flow_runs; event_resources on 2.x), and its rows go back "
          "{{ $value | humanizeDuration }}. `prefect-pg-exporter doctor` says how to clean it "
          "for this release.",
          check=postgres.TABLE_UNRETAINED_ROWS),
    Alert("PostgresHotTableStaleStatistics", "warning",
          "postgres_table_modified_since_analyze_rows > {stale_statistics_warning_rows} and "
          "postgres_table_modified_since_analyze_rows / (postgres_table_live_tuples + 1) > "
          "{stale_statistics_warning_ratio}", 3600,
          "{{ $labels.schema }}.{{ $labels.table }}: {{ $value }} rows changed since its last "
          "ANALYZE",
          "{{ $labels.target }}: the planner's statistics for {{ $labels.table }} are far "
          "behind its rows; Prefect's /flow_runs/filter, /count and /history pick slow plans. "
          "ANALYZE it, and check its autovacuum settings and long transactions.",
          check=postgres.STALE_STATISTICS),
    Alert("PostgresInvalidIndex", "warning",
          "postgres_invalid_indexes > {invalid_indexes_warning}", 900,
          "{{ $value }} invalid index(es) in the watched database",
          "{{ $labels.target }}: a CREATE INDEX CONCURRENTLY or REINDEX CONCURRENTLY failed "
          "(Prefect 3.9 migrations build indexes so) and left an INVALID index: the planner "
          "ignores it, writes still maintain it. `prefect-pg-exporter doctor` names each and "
          "its repair.",
          check=postgres.INVALID_INDEX),
    # Prefect's database is the one the exporter watches (its DSN's); the server's others are
    # someone else's: said, not paged on with Prefect's runbook
    Alert("PostgresDeadlocks", "warning",
          "increase(postgres_deadlocks_total[15m]) > {deadlocks_warning} "
          "and on (target, datname) postgres_watched_database_info", 0,
          "{{ $value | humanize }} deadlock(s) in Prefect's database {{ $labels.datname }} "
          "within 15 minutes",
          "{{ $labels.target }}: PostgreSQL detected deadlocks in {{ $labels.datname }}, the "
          "database the exporter watches, and cancelled a transaction of each. In Prefect: "
          "background services run more than once (the task-run recorder in HA, "
          "mark_deployments_ready), see the runbook."),
    Alert("PostgresDeadlocksOtherDatabase", "info",
          "increase(postgres_deadlocks_total[15m]) > {deadlocks_warning} "
          "unless on (target, datname) postgres_watched_database_info", 0,
          "{{ $value | humanize }} deadlock(s) in database {{ $labels.datname }}, not Prefect's, "
          "within 15 minutes",
          "{{ $labels.target }}: PostgreSQL detected deadlocks in {{ $labels.datname }}, a "
          "database of the server other than the one the exporter watches for Prefect "
          "(\"other\" gathers those beyond the top N by size). Prefect is not involved: tell "
          "that database's owners."),
)


def rule_groups(overrides: Mapping[str, float] | None = None, for_scale: float = 1.0,
                runbook: str = RUNBOOK_BASE_URL, annotations: bool = True) -> dict[str, Any]:
    """The rule file's content. Without annotations for `promtool test rules`, which compares
    expanded annotations verbatim: the unit tests check expressions, `for` and labels, and
    `promtool check rules` and the live test check the templates."""
    t = thresholds(overrides)
    return {"groups": [
        {"name": "prefect-pg-exporter.recording",
         "rules": [{"record": name, "expr": expr} for name, expr in RECORDING_RULES]},
        {"name": "prefect-pg-exporter.alerts",
         "rules": [alert.rule(t, for_scale, runbook, annotations) for alert in ALERTS]},
    ]}


def render_yaml(groups: Mapping[str, Any]) -> str:
    import yaml  # imported here: only the generator writes YAML (the web config reads it)

    header = ("# Generated by `python -m exporter.alerting`; edit exporter/alerting.py or "
              "override thresholds\n# with --set name=value, do not edit this file by hand.\n")
    return header + yaml.safe_dump(dict(groups), sort_keys=False, width=10_000)


def render_markdown() -> str:
    lines = ["# Alerts", "",
             "Generated from `exporter/alerting.py` by `python -m exporter.alerting --markdown`.",
             "Thresholds are overridable: `python -m exporter.alerting --set NAME=VALUE ...`.",
             "", "## Thresholds", "", "| name | default | meaning |", "|---|---|---|"]
    lines += [f"| `{n}` | {_num(t.default)} | {t.meaning} |" for n, t in THRESHOLDS.items()]
    lines += ["", "## Rules", "", "| alert | severity | for | expression |", "|---|---|---|---|"]
    for rule in rule_groups()["groups"][1]["rules"]:
        expr = rule["expr"].replace("|", "\\|")
        lines.append(f"| [{rule['alert']}](runbooks.md#{rule['alert'].lower()}) | "
                     f"{rule['labels']['severity']} | {rule['for']} | `{expr}` |")
    lines += ["", "## Recording rules", "", "| record | expression |", "|---|---|"]
    lines += [f"| `{name}` | `{expr}` |" for name, expr in RECORDING_RULES]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m exporter.alerting", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="override a threshold")
    parser.add_argument("--for-scale", type=float, default=1.0,
                        help="multiply every `for:` (tests use a short copy)")
    parser.add_argument("--runbook-base-url", default=RUNBOOK_BASE_URL)
    parser.add_argument("--thresholds", action="store_true", help="list thresholds and exit")
    parser.add_argument("--markdown", action="store_true", help="print docs/alerts.md")
    parser.add_argument("--pgbouncer-0.10-names", dest="compat", action="store_true",
                        help="print the opt-in recording rules for pgbouncer_exporter <= 0.10 "
                             "names (alerts/compat/)")
    args = parser.parse_args(argv)
    if args.thresholds:
        for name, t in THRESHOLDS.items():
            print(f"{name} = {_num(t.default)}  # {t.meaning}")
        return 0
    if args.markdown:
        print(render_markdown(), end="")
        return 0
    if args.compat:
        print(render_yaml(compat_rule_groups()), end="")
        return 0
    try:
        overrides = parse_overrides(args.set)
    except ValueError as exc:
        print(f"error: --set {exc}", file=sys.stderr)
        return 2
    try:
        groups = rule_groups(overrides, args.for_scale, args.runbook_base_url)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(render_yaml(groups), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
