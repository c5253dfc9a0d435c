"""Alert rules: generated file in sync, `promtool check rules` clean, and a `promtool test
rules` case for every alert that fires when it should and stays quiet when it should not."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter import alerting
from exporter.catalogue import CATALOGUE
from tests.promtool import PROMTOOL, run_rule_tests

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "alerts" / "prefect-pg-exporter.rules.yml"

DB = 'target="db"'
IIT = f'{DB},datname="prefect",application_name="app"'
POOL = 'target="pgb",database="prefect",user="prefect"'
WP = 'target="prefect",work_pool="a"'
CACHE = 'name="server.database.sqlalchemy.connect_args.statement_cache_size"'
PREPARED = 'name="server.database.sqlalchemy.connect_args.prepared_statement_cache_size"'

# the database the exporter watches on target db: Prefect's
WATCHED = {f'postgres_watched_database_info{{{DB},datname="prefect"}}': "1x40"}
OLDEST = f'prefect_table_oldest_row_age_seconds{{{DB},schema="public"'
# (alert, input series {series: values}, eval time, expected labels or [] for quiet)
Case = tuple[str, dict[str, str], str, list[dict[str, str]]]
CASES: list[Case] = [
    ("PostgresIdleInTransaction",
     {f'postgres_transaction_max_age_seconds{{{IIT},state="idle in transaction"}}': "0+60x30"},
     "10m", [{"target": "db", "datname": "prefect", "application_name": "app"}]),
    ("PostgresIdleInTransaction",  # a short one stays quiet
     {f'postgres_transaction_max_age_seconds{{{IIT},state="idle in transaction"}}': "30x30"},
     "20m", []),
    ("PostgresIdleInTransaction",  # plain idle sessions have no transaction: quiet
     {f'postgres_connections{{{IIT},usename="u",state="idle"}}': "50x30"}, "20m", []),
    ("PostgresIdleInTransactionStuck",
     {f'postgres_transaction_max_age_seconds{{{IIT},state="idle in transaction (aborted)"}}':
      "0+60x30"},
     "20m", [{"target": "db", "datname": "prefect", "application_name": "app"}]),
    ("PostgresIdleInTransactionStuck",
     {f'postgres_transaction_max_age_seconds{{{IIT},state="idle in transaction"}}': "0+60x30"},
     "10m", []),
    ("PostgresLongTransaction",
     {f'postgres_transaction_max_age_seconds{{{IIT},state="active"}}': "0+60x40"},
     "15m", [{"target": "db", "datname": "prefect", "application_name": "app"}]),
    ("PostgresLongTransaction",
     {f'postgres_transaction_max_age_seconds{{{IIT},state="active"}}': "30x40"}, "15m", []),
    ("PostgresLongTransactionCritical",
     {f'postgres_transaction_max_age_seconds{{{IIT},state="active"}}': "0+60x40"}, "15m", []),
    ("PostgresLongTransactionCritical",
     {f'postgres_transaction_max_age_seconds{{{IIT},state="active"}}': "0+60x40"},
     "35m", [{"target": "db", "datname": "prefect", "application_name": "app"}]),
    ("PostgresSessionsBlocked", {f"postgres_blocked_max_wait_seconds{{{DB}}}": "0+60x10"},
     "5m", [{"target": "db"}]),
    ("PostgresSessionsBlocked", {f"postgres_blocked_max_wait_seconds{{{DB}}}": "0x10"},
     "5m", []),
    ("PostgresClientReadStall",
     {f"postgres_client_read_in_transaction_max_age_seconds{{{DB}}}": "0+60x10"},
     "5m", [{"target": "db"}]),
    ("PostgresClientReadStall",
     {f"postgres_client_read_in_transaction_max_age_seconds{{{DB}}}": "30x10"}, "5m", []),
    ("PgBouncerClientsWaiting", {f"pgbouncer_pools_client_waiting_connections{{{POOL}}}": "3x10"},
     "5m", [{"target": "pgb", "database": "prefect", "user": "prefect"}]),
    ("PgBouncerClientsWaiting", {f"pgbouncer_pools_client_waiting_connections{{{POOL}}}": "0x10"},
     "5m", []),
    ("PgBouncerPoolExhausted",
     {f"pgbouncer_pools_client_maxwait_seconds{{{POOL}}}": "0+60x10"},
     "5m", [{"target": "pgb", "database": "prefect", "user": "prefect"}]),
    ("PgBouncerPoolExhausted", {f"pgbouncer_pools_client_maxwait_seconds{{{POOL}}}": "2x10"},
     "5m", []),
    ("PostgresConnectionsNearLimit",
     {f'postgres_connections{{{IIT},usename="u",state="idle"}}': "90x20",
      f"postgres_max_connections{{{DB}}}": "100x20",
      f"postgres_superuser_reserved_connections{{{DB}}}": "3x20"}, "10m", [{"target": "db"}]),
    ("PostgresConnectionsExhausted",
     {f'postgres_connections{{{IIT},usename="u",state="idle"}}': "90x20",
      f"postgres_max_connections{{{DB}}}": "100x20",
      f"postgres_superuser_reserved_connections{{{DB}}}": "3x20"}, "10m", []),
    ("PostgresConnectionsExhausted",
     {f'postgres_connections{{{IIT},usename="u",state="active"}}': "60x20",
      f'postgres_connections{{{IIT},usename="u",state="idle"}}': "36x20",
      f"postgres_max_connections{{{DB}}}": "100x20",
      f"postgres_superuser_reserved_connections{{{DB}}}": "3x20"}, "10m", [{"target": "db"}]),
    ("PrefectLateRuns", {f"prefect_late_runs{{{WP}}}": "0 0 3 3 3 3 3 4 4 4 4 4 4 4 4 4"},
     "12m", [{"target": "prefect", "work_pool": "a"}]),
    ("PrefectLateRuns",  # going down: being worked off, quiet
     {f"prefect_late_runs{{{WP}}}": "30 28 26 24 22 20 18 16 14 12 10 8 6 4 2"}, "12m", []),
    ("PrefectLateRuns",  # nobody to take them: PrefectWorkPoolWithoutWorkers says so, quiet
     {f"prefect_late_runs{{{WP}}}": "4x20", f"prefect_work_pool_online_workers{{{WP}}}": "0x20",
      f"prefect_work_pool_paused{{{WP}}}": "0x20"}, "12m", []),
    ("PrefectScheduledBacklogDelay",
     {f"prefect_scheduled_backlog_max_delay_seconds{{{WP}}}": "600x20"},
     "10m", [{"target": "prefect", "work_pool": "a"}]),
    ("PrefectScheduledBacklogDelay",
     {f"prefect_scheduled_backlog_max_delay_seconds{{{WP}}}": "20x20"}, "10m", []),
    ("PrefectWorkPoolWithoutWorkers",
     {f"prefect_scheduled_backlog_runs{{{WP}}}": "5x20",
      f"prefect_work_pool_online_workers{{{WP}}}": "0x20",
      f"prefect_work_pool_paused{{{WP}}}": "0x20"},
     "10m", [{"target": "prefect", "work_pool": "a"}]),
    ("PrefectWorkPoolWithoutWorkers",
     {f"prefect_scheduled_backlog_runs{{{WP}}}": "5x20",
      f"prefect_work_pool_online_workers{{{WP}}}": "2x20",
      f"prefect_work_pool_paused{{{WP}}}": "0x20"}, "10m", []),
    ("PrefectTooManyScheduledRuns", {'prefect_scheduled_runs{target="prefect"}': "20000x30"},
     "20m", [{"target": "prefect"}]),
    ("PrefectTooManyScheduledRuns", {'prefect_scheduled_runs{target="prefect"}': "300x30"},
     "20m", []),
    ("PrefectDuplicatedBackgroundServices",
     {f'postgres_listen_sessions{{{DB},channel="prefect_automation_changes"}}': "2x20"},
     "10m", [{"target": "db", "channel": "prefect_automation_changes"}]),
    ("PrefectDuplicatedBackgroundServices",
     {f'postgres_listen_sessions{{{DB},channel="prefect_automation_changes"}}': "1x20"},
     "10m", []),
    ("PrefectDuplicatedBackgroundServices",  # a Redis docket: replicas are supported, quiet
     {f'postgres_listen_sessions{{{DB},channel="prefect_automation_changes"}}': "3x20",
      'prefect_server_docket_info{target="prefect",scheme="redis"}': "1x20"}, "10m", []),
    ("PrefectDuplicatedBackgroundServices",  # the default memory docket: fires
     {f'postgres_listen_sessions{{{DB},channel="prefect_automation_changes"}}': "2x20",
      'prefect_server_docket_info{target="prefect",scheme="memory"}': "1x20"},
     "10m", [{"target": "db", "channel": "prefect_automation_changes"}]),
    ("PrefectPgExporterSourceDown",
     {'prefect_pg_exporter_source_up{source="postgres",target="db"}': "0x10"},
     "5m", [{"source": "postgres", "target": "db"}]),
    ("PrefectPgExporterSourceDown",
     {'prefect_pg_exporter_source_up{source="postgres",target="db"}': "1x10"}, "5m", []),
    ("PrefectPgExporterSourceStale",
     {'prefect_pg_exporter_source_last_success_timestamp_seconds{source="postgres",target="db"}':
      "60x20"}, "10m", [{"source": "postgres", "target": "db"}]),
    ("PrefectPgExporterSourceStale",  # polled every minute: fresh
     {'prefect_pg_exporter_source_last_success_timestamp_seconds{source="postgres",target="db"}':
      "0+60x20"}, "10m", []),
    ("PostgresNoIdleInTransactionTimeout",
     {f'postgres_setting_seconds{{{DB},name="idle_in_transaction_session_timeout"}}': "0x150"},
     "2h", [{"target": "db", "name": "idle_in_transaction_session_timeout"}]),
    ("PostgresNoIdleInTransactionTimeout",
     {f'postgres_setting_seconds{{{DB},name="idle_in_transaction_session_timeout"}}': "60x150"},
     "2h", []),
    ("PostgresNoStatementTimeout",
     {f'postgres_setting_seconds{{{DB},name="statement_timeout"}}': "0x150"},
     "2h", [{"target": "db", "name": "statement_timeout"}]),
    ("PrefectStatementCacheWithTransactionPooling",
     {f'pgbouncer_pools_mode_info{{{POOL},pool_mode="transaction"}}': "1x30",
      f'prefect_server_setting{{target="prefect",{CACHE}}}': "100x30",
      f'prefect_server_setting{{target="prefect",{PREPARED}}}': "0x30"}, "20m", [{}]),
    ("PrefectStatementCacheWithTransactionPooling",
     {f'pgbouncer_pools_mode_info{{{POOL},pool_mode="transaction"}}': "1x30",
      f'prefect_server_setting{{target="prefect",{CACHE}}}': "0x30",
      f'prefect_server_setting{{target="prefect",{PREPARED}}}': "0x30"}, "20m", []),
    ("PrefectStatementCacheWithTransactionPooling",  # session pooling: quiet
     {f'pgbouncer_pools_mode_info{{{POOL},pool_mode="session"}}': "1x30",
      f'prefect_server_setting{{target="prefect",{CACHE}}}': "100x30"}, "20m", []),
    ("PrefectStatementCacheWithTransactionPooling",  # PgBouncer 1.21+ tracks them: quiet
     {f'pgbouncer_pools_mode_info{{{POOL},pool_mode="transaction"}}': "1x30",
      'pgbouncer_config_max_prepared_statements{target="pgb"}': "200x30",
      f'prefect_server_setting{{target="prefect",{CACHE}}}': "100x30"}, "20m", []),
    ("PrefectStatementCacheWithTransactionPooling",  # no settings to tell (Cloud): quiet
     {f'pgbouncer_pools_mode_info{{{POOL},pool_mode="transaction"}}': "1x30",
      'prefect_api_up{target="prefect"}': "1x30"}, "20m", []),
    ("PostgresHotTableBloat",
     {f'postgres_table_dead_tuples{{{DB},schema="public",table="log"}}': "200000x150",
      f'postgres_table_live_tuples{{{DB},schema="public",table="log"}}': "100000x150"},
     "2h", [{"target": "db", "schema": "public", "table": "log"}]),
    ("PostgresHotTableBloat",
     {f'postgres_table_dead_tuples{{{DB},schema="public",table="log"}}': "200000x150",
      f'postgres_table_live_tuples{{{DB},schema="public",table="log"}}': "10000000x150"},
     "2h", []),
    ("PostgresHotTableStaleStatistics",
     {f'postgres_table_modified_since_analyze_rows{{{DB},schema="public",table="log"}}':
      "30000x150",
      f'postgres_table_live_tuples{{{DB},schema="public",table="log"}}': "30000x150"},
     "2h", [{"target": "db", "schema": "public", "table": "log"}]),
    ("PostgresHotTableStaleStatistics",  # 50,000 of 10 million changed: autovacuum's to do
     {f'postgres_table_modified_since_analyze_rows{{{DB},schema="public",table="log"}}':
      "50000x150",
      f'postgres_table_live_tuples{{{DB},schema="public",table="log"}}': "10000000x150"},
     "2h", []),
    ("PostgresHotTableStaleStatistics",  # analyzed within the hour: quiet
     {f'postgres_table_modified_since_analyze_rows{{{DB},schema="public",table="log"}}':
      "30000x40 0x110",
      f'postgres_table_live_tuples{{{DB},schema="public",table="log"}}': "30000x150"},
     "2h", []),
    ("PrefectTableRetentionBacklog",  # events a day past the 7 days Prefect keeps
     {f'{OLDEST},table="events",column="occurred"}}': "691200x60",
      'prefect_table_retention_seconds{target="prefect",table="events"}': "604800x60"},
     "45m", [{"target": "db", "schema": "public", "table": "events", "column": "occurred"}]),
    ("PrefectTableRetentionBacklog",  # half an hour past: the next cleanup loop's, quiet
     {f'{OLDEST},table="events",column="occurred"}}': "606600x60",
      'prefect_table_retention_seconds{target="prefect",table="events"}': "604800x60"},
     "45m", []),
    ("PrefectTableRetentionBacklog",  # no retention for log: the other alert's case, quiet
     {f'{OLDEST},table="log",column="timestamp"}}': "3456000x60",
      'prefect_table_retention_seconds{target="prefect",table="events"}': "604800x60"},
     "45m", []),
    ("PrefectTableUnretainedRows",  # log rows 40 days old, nothing deletes them
     {f'{OLDEST},table="log",column="timestamp"}}': "3456000x90",
      'prefect_table_retention_seconds{target="prefect",table="events"}': "604800x90"},
     "80m", [{"target": "db", "schema": "public", "table": "log", "column": "timestamp"}]),
    ("PrefectTableUnretainedRows",  # db_vacuum keeps log rows 60 days: quiet
     {f'{OLDEST},table="log",column="timestamp"}}': "3456000x90",
      'prefect_table_retention_seconds{target="prefect",table="log"}': "5184000x90"},
     "80m", []),
    ("PostgresInvalidIndex", {f"postgres_invalid_indexes{{{DB}}}": "1x30"},
     "20m", [{"target": "db"}]),
    ("PostgresInvalidIndex", {f"postgres_invalid_indexes{{{DB}}}": "0x30"}, "20m", []),
    ("PostgresDeadlocks",
     {f'postgres_deadlocks_total{{{DB},datname="prefect"}}': "0x10 1x20", **WATCHED},
     "15m", [{"target": "db", "datname": "prefect"}]),
    ("PostgresDeadlocks",  # old deadlocks, none for the last 15 minutes: quiet
     {f'postgres_deadlocks_total{{{DB},datname="prefect"}}': "7x40", **WATCHED}, "30m", []),
    ("PostgresDeadlocks",  # the statistics reset (or a restart): not a deadlock
     {f'postgres_deadlocks_total{{{DB},datname="prefect"}}': "7x10 0x20", **WATCHED}, "15m",
     []),
    ("PostgresDeadlocks",  # another database of the server: not Prefect's alert
     {f'postgres_deadlocks_total{{{DB},datname="billing"}}': "0x10 1x20", **WATCHED}, "15m",
     []),
    ("PostgresDeadlocksOtherDatabase",  # ... but said, with its name
     {f'postgres_deadlocks_total{{{DB},datname="billing"}}': "0x10 1x20",
      f'postgres_deadlocks_total{{{DB},datname="prefect"}}': "0x30", **WATCHED}, "15m",
     [{"target": "db", "datname": "billing"}]),
    ("PostgresDeadlocksOtherDatabase",  # Prefect's own deadlocks are PostgresDeadlocks'
     {f'postgres_deadlocks_total{{{DB},datname="prefect"}}': "0x10 1x20", **WATCHED}, "15m",
     []),
    ("PostgresDeadlocks",  # a database of the same name on another server is not watched
     {'postgres_deadlocks_total{target="db2",datname="prefect"}': "0x10 1x20", **WATCHED},
     "15m", []),
]


CASES += [
    ("PrefectLateRunsServiceStalled", {f"prefect_overdue_unmarked_runs{{{WP}}}": "2x10"},
     "5m", [{"target": "prefect", "work_pool": "a"}]),
    ("PrefectLateRunsServiceStalled", {f"prefect_overdue_unmarked_runs{{{WP}}}": "0x10"},
     "5m", []),
    ("PrefectSchedulerStalled",
     {'prefect_deployments_without_future_runs{target="prefect"}': "1x20"},
     "15m", [{"target": "prefect"}]),
    ("PrefectSchedulerStalled",  # briefly: a scheduler loop away from refilling, quiet
     {'prefect_deployments_without_future_runs{target="prefect"}': "0 1 1 0 0 0 0 0 0 0 0 0"},
     "11m", []),
    ("PrefectRetentionLagging",
     {'prefect_retention_lag_seconds{target="prefect",kind="events"}': "7200x60"},
     "45m", [{"target": "prefect", "kind": "events"}]),
    ("PrefectRetentionLagging",  # behind by less than an hour: cleanup runs hourly, quiet
     {'prefect_retention_lag_seconds{target="prefect",kind="events"}': "1800x60"}, "45m", []),
    ("PrefectEventPipelineStalled",
     {'prefect_events_newest_age_seconds{target="prefect"}': "900+60x10",
      'prefect_flow_run_last_start_age_seconds{target="prefect"}': "30x10"},
     "8m", [{"target": "prefect"}]),
    ("PrefectEventPipelineStalled",  # old events, but nothing started since: quiet
     {'prefect_events_newest_age_seconds{target="prefect"}': "900+60x10",
      'prefect_flow_run_last_start_age_seconds{target="prefect"}': "2000+60x10"}, "8m", []),
    ("PrefectApiSlow", {'prefect_api_ready_duration_seconds{target="prefect"}': "4x10"},
     "8m", [{"target": "prefect"}]),
    ("PrefectApiSlow", {'prefect_api_ready_duration_seconds{target="prefect"}': "0.05x10"},
     "8m", []),
]
READY = 'prefect_api_ready_duration_seconds{target="prefect"}'
HEALTH = 'prefect_api_health_duration_seconds{target="prefect"}'
BLOCKED = 'prefect_database_blocked_roots{target="prefect",'
CASES += [
    ("PrefectApiPoolSaturated",  # ready 1.4 s, health 6 ms, nothing else waits
     {READY: "1.4x10", HEALTH: "0.006x10", f"pgbouncer_pools_client_waiting_connections{{{POOL}}}":
      "0x10", 'postgres_blocked_sessions{target="db"}': "0x10"},
     "5m", [{"target": "prefect"}]),
    ("PrefectApiPoolSaturated",  # quiet: ready fast
     {READY: "0.01x10", HEALTH: "0.002x10"}, "5m", []),
    ("PrefectApiPoolSaturated",  # quiet: health as slow as ready (the whole server is slow)
     {READY: "1.4x10", HEALTH: "1.2x10"}, "5m", []),
    ("PrefectApiPoolSaturated",  # quiet: PgBouncer's clients wait, its alert names the cause
     {READY: "1.4x10", HEALTH: "0.006x10",
      f"pgbouncer_pools_client_waiting_connections{{{POOL}}}": "12x10"}, "5m", []),
    ("PrefectApiPoolSaturated",  # quiet: sessions wait on locks
     {READY: "1.4x10", HEALTH: "0.006x10", 'postgres_blocked_sessions{target="db"}': "3x10"},
     "5m", []),
    ("PrefectApiPoolSaturated",  # quiet: a transaction idle for 10 minutes holds a connection
     {READY: "1.4x10", HEALTH: "0.006x10",
      f'postgres_transaction_max_age_seconds{{{IIT},state="idle in transaction"}}': "600x10"},
     "5m", []),
    ("PrefectDatabaseBlocked",  # one root, warning: fires after its minute
     {f'{BLOCKED}severity="warning"}}': "1x10", f'{BLOCKED}severity="critical"}}': "0x10"},
     "3m", [{"target": "prefect"}]),
    ("PrefectDatabaseBlocked",  # a critical one fires it too (the doctor's warning or above)
     {f'{BLOCKED}severity="warning"}}': "0x10", f'{BLOCKED}severity="critical"}}': "2x10"},
     "3m", [{"target": "prefect"}]),
    ("PrefectDatabaseBlocked",  # nothing blocked: quiet
     {f'{BLOCKED}severity="warning"}}': "0x10", f'{BLOCKED}severity="critical"}}': "0x10"},
     "3m", []),
    ("PrefectDatabaseBlocked",  # a block shorter than its `for`: quiet
     {f'{BLOCKED}severity="warning"}}': "0 1 0x8"}, "3m", []),
    ("PrefectDatabaseBlockedCritical",
     {f'{BLOCKED}severity="warning"}}': "1x10", f'{BLOCKED}severity="critical"}}': "1x10"},
     "3m", [{"target": "prefect"}]),
    ("PrefectDatabaseBlockedCritical",  # warning only: quiet
     {f'{BLOCKED}severity="warning"}}': "1x10", f'{BLOCKED}severity="critical"}}': "0x10"},
     "3m", []),
    ("PostgresDatabaseFilling",  # no size budget configured (the default): quiet
     {f'postgres_database_size_bytes{{{DB},datname="prefect"}}': "0+1e9x400"}, "6h", []),
]
ENDED = 'prefect_flow_runs_ended{target="prefect",work_pool="a",state_type="%s"}'
CASES += [
    ("PrefectStuckRuns",
     {f'prefect_flow_runs_stuck{{{WP},state_type="RUNNING"}}': "1x20"},
     "15m", [{"target": "prefect", "work_pool": "a", "state_type": "RUNNING"}]),
    ("PrefectStuckRuns", {f'prefect_flow_runs_stuck{{{WP},state_type="RUNNING"}}': "0x20"},
     "15m", []),
    ("PrefectZombieRuns", {f"prefect_flow_runs_without_heartbeat{{{WP}}}": "1x10"},
     "8m", [{"target": "prefect", "work_pool": "a"}]),
    ("PrefectZombieRuns", {f"prefect_flow_runs_without_heartbeat{{{WP}}}": "0x10"}, "8m", []),
    ("PrefectConcurrencySlotsLeaked",
     {'prefect_concurrency_limit_saturated_seconds{target="prefect",limit="etl"}': "700+60x10",
      'prefect_concurrency_limit_active_slots{target="prefect",limit="etl"}': "2x10",
      'prefect_concurrency_limit_holders_running{target="prefect",limit="etl"}': "0x10"},
     "5m", [{"target": "prefect", "limit": "etl"}]),
    ("PrefectConcurrencySlotsLeaked",  # full, but its holders run: quiet
     {'prefect_concurrency_limit_saturated_seconds{target="prefect",limit="etl"}': "700+60x10",
      'prefect_concurrency_limit_active_slots{target="prefect",limit="etl"}': "2x10",
      'prefect_concurrency_limit_holders_running{target="prefect",limit="etl"}': "2x10"},
     "5m", []),
    ("PrefectWorkQueueNotPolled",
     {'prefect_work_queue_unpolled_deployments{target="prefect",work_pool="a",'
      'work_queue="gpu"}': "2x20", f"prefect_work_pool_online_workers{{{WP}}}": "1x20"},
     "15m", [{"target": "prefect", "work_pool": "a", "work_queue": "gpu"}]),
    ("PrefectWorkQueueNotPolled",  # nobody online at all: PrefectWorkPoolWithoutWorkers' job
     {'prefect_work_queue_unpolled_deployments{target="prefect",work_pool="a",'
      'work_queue="gpu"}': "2x20", f"prefect_work_pool_online_workers{{{WP}}}": "0x20"},
     "15m", []),
    ("PrefectWorkQueueNotPolled",  # an unused queue: workers started with --work-queue
     {'prefect_work_queue_unpolled_deployments{target="prefect",work_pool="a",'
      'work_queue="default"}': "0x20", f"prefect_work_pool_online_workers{{{WP}}}": "1x20"},
     "15m", []),
    ("PrefectFlowRunsFailing",
     {ENDED % "COMPLETED": "6x20", ENDED % "FAILED": "4x20", ENDED % "CRASHED": "0x20"},
     "15m", [{"target": "prefect", "work_pool": "a"}]),
    ("PrefectFlowRunsFailing",  # 2 of 3: too few runs to judge
     {ENDED % "COMPLETED": "1x20", ENDED % "FAILED": "2x20"}, "15m", []),
    ("PrefectFlowRunsCrashing",
     {ENDED % "COMPLETED": "8x20", ENDED % "CRASHED": "2x20"},
     "15m", [{"target": "prefect", "work_pool": "a"}]),
    ("PrefectFlowRunsCrashing",
     {ENDED % "COMPLETED": "19x20", ENDED % "CRASHED": "1x20"}, "15m", []),
]
# Prefect in HA: Docket's workers group, the event persister, other groups, Redis itself
DOCKET = 'target="docket",db="db1",stream="prefect:stream",group="docket-workers"'
API_DOCKET = 'target="docket",db="db1",stream="prefect-server:stream",group="docket-workers"'
EVENTS = 'target="messaging",db="db0",stream="events"'
PERSISTER = f'{EVENTS},group="event-persister"'
TRIGGERS = f'{EVENTS},group="reactive-triggers"'
GHOST = f'{EVENTS},group="ephemeral-old"'
MEM = 'target="messaging"'
CASES += [
    ("PrefectServicesDown", {f"redis_stream_group_consumers_active{{{DOCKET}}}": "1 1 0x10",
                             f"redis_stream_group_consumers{{{DOCKET}}}": "1x12"},
     "8m", [{"target": "docket", "db": "db1", "stream": "prefect:stream",
             "group": "docket-workers"}]),
    ("PrefectServicesDown",  # a worker restarting within a minute: quiet
     {f"redis_stream_group_consumers_active{{{DOCKET}}}": "1 0 1 1 1 1 1 1 1 1",
      f"redis_stream_group_consumers{{{DOCKET}}}": "1x10"}, "8m", []),
    ("PrefectServicesDown",  # the API replicas' own Docket, never worked for, beside a live one
     {f"redis_stream_group_consumers_active{{{API_DOCKET}}}": "0x10",
      f"redis_stream_group_consumers{{{API_DOCKET}}}": "0x10",
      f"redis_stream_group_undelivered_messages{{{API_DOCKET}}}": "0x10",
      f"redis_stream_group_consumers_active{{{DOCKET}}}": "1x10",
      f"redis_stream_group_consumers{{{DOCKET}}}": "1x10"}, "8m", []),
    ("PrefectServicesDown",  # another group without consumers is not Docket's
     {f"redis_stream_group_consumers_active{{{TRIGGERS}}}": "0x10"}, "8m", []),
    ("PrefectEventsNotPersisted",
     {f"redis_stream_group_undelivered_messages{{{PERSISTER}}}": "5+5x10",
      f"redis_stream_group_consumers_active{{{PERSISTER}}}": "0x10"},
     "8m", [{"target": "messaging", "db": "db0", "stream": "events",
             "group": "event-persister"}]),
    ("PrefectEventsNotPersisted",  # a backlog being read: quiet
     {f"redis_stream_group_undelivered_messages{{{PERSISTER}}}": "50x10",
      f"redis_stream_group_consumers_active{{{PERSISTER}}}": "1x10"}, "8m", []),
    ("PrefectEventsNotPersisted",  # nobody reads, nothing waits (no event published): quiet
     {f"redis_stream_group_undelivered_messages{{{PERSISTER}}}": "0x10",
      f"redis_stream_group_consumers_active{{{PERSISTER}}}": "0x10"}, "8m", []),
    ("PrefectEventPersisterBehind",
     {f"redis_stream_group_undelivered_messages{{{PERSISTER}}}": "1500+100x20",
      f"redis_stream_group_consumers_active{{{PERSISTER}}}": "1x20"},
     "15m", [{"target": "messaging", "db": "db0", "stream": "events",
              "group": "event-persister"}]),
    ("PrefectEventPersisterBehind",
     {f"redis_stream_group_undelivered_messages{{{PERSISTER}}}": "200x20",
      f"redis_stream_group_consumers_active{{{PERSISTER}}}": "1x20"}, "15m", []),
    ("RedisStreamGroupAbandoned",
     {f"redis_stream_group_consumers_active{{{GHOST}}}": "0x40",
      f"redis_stream_group_undelivered_messages{{{GHOST}}}": "10+10x40",
      f"redis_stream_group_consumers_active{{{TRIGGERS}}}": "1x40"},
     "35m", [{"target": "messaging", "db": "db0", "stream": "events",
              "group": "ephemeral-old"}]),
    ("RedisStreamGroupAbandoned",  # every group stopped: the services are down, not this
     {f"redis_stream_group_consumers_active{{{GHOST}}}": "0x40",
      f"redis_stream_group_undelivered_messages{{{GHOST}}}": "10+10x40",
      f"redis_stream_group_consumers_active{{{TRIGGERS}}}": "0x40"}, "35m", []),
    ("RedisStreamGroupAbandoned",  # unread but caught up (nothing new on it): quiet
     {f"redis_stream_group_consumers_active{{{GHOST}}}": "0x40",
      f"redis_stream_group_undelivered_messages{{{GHOST}}}": "0x40",
      f"redis_stream_group_consumers_active{{{TRIGGERS}}}": "1x40"}, "35m", []),
    ("RedisMemoryNearMax", {f"redis_memory_used_bytes{{{MEM}}}": "85x10",
                            f"redis_memory_max_bytes{{{MEM}}}": "100x10"},
     "8m", [{"target": "messaging"}]),
    ("RedisMemoryNearMax",  # no maxmemory (0): no ratio, quiet
     {f"redis_memory_used_bytes{{{MEM}}}": "85e9x10",
      f"redis_memory_max_bytes{{{MEM}}}": "0x10"}, "8m", []),
    ("RedisMemoryExhausted", {f"redis_memory_used_bytes{{{MEM}}}": "97x10",
                              f"redis_memory_max_bytes{{{MEM}}}": "100x10"},
     "8m", [{"target": "messaging"}]),
    ("RedisMemoryExhausted", {f"redis_memory_used_bytes{{{MEM}}}": "85x10",
                              f"redis_memory_max_bytes{{{MEM}}}": "100x10"}, "8m", []),
    ("RedisDown", {f"redis_up{{{MEM}}}": "1 1 0x10"}, "8m", [{"target": "messaging"}]),
    ("RedisDown", {f"redis_up{{{MEM}}}": "1 0 1x10"}, "8m", []),
]
# Cases that need thresholds other than the defaults: (overrides, case)
OVERRIDE_CASES: list[tuple[dict[str, float], Case]] = [
    ({"database_size_limit_bytes": 100e9},  # +1 GB a minute: 100 GB within the week
     ("PostgresDatabaseFilling",
      {f'postgres_database_size_bytes{{{DB},datname="prefect"}}': "0+1e9x400"},
      "6h", [{"target": "db", "datname": "prefect"}])),
    ({"database_size_limit_bytes": 100e9},  # a flat 50 GB: far from its budget, quiet
     ("PostgresDatabaseFilling",
      {f'postgres_database_size_bytes{{{DB},datname="prefect"}}': "50e9x400"}, "6h", [])),
]


def test_generated_rules_and_docs_are_in_sync() -> None:
    assert RULES.read_text() == alerting.render_yaml(alerting.rule_groups()), \
        "regenerate: scripts/generate"
    assert (ROOT / "docs" / "alerts.md").read_text() == alerting.render_markdown(), \
        "regenerate: scripts/generate"


def test_rules_use_only_catalogued_metrics_and_have_runbooks() -> None:
    runbooks = (ROOT / "docs" / "runbooks.md").read_text()
    recorded = {name for name, _ in alerting.RECORDING_RULES}
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            names = set(re.findall(r"\b([a-z_][a-z0-9_]*:?[a-z0-9_:]*)\s*(?:\{|\[|\)|\s|$|>|<|=|/)",
                                   rule["expr"]))
            metrics = {n for n in names
                       if n.startswith(("postgres_", "pgbouncer_", "prefect_", "redis_"))}
            unknown = metrics - set(CATALOGUE) - recorded
            assert not unknown, f"{rule.get('alert', rule.get('record'))} uses {unknown}"
            if "alert" in rule:
                ann = rule["annotations"]
                assert {"summary", "description", "runbook_url"} <= set(ann)
                assert rule["labels"]["severity"] in ("critical", "warning", "info")
                anchor = rule["alert"].lower()
                assert ann["runbook_url"].endswith("#" + anchor)
                assert re.search(rf"^#+ .*{rule['alert']}", runbooks, re.M | re.I), \
                    f"docs/runbooks.md has no section for {rule['alert']}"


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    alerts = {a.name for a in alerting.ALERTS}
    cases = CASES + [case for _, case in OVERRIDE_CASES]
    assert {c[0] for c in cases if c[3]} == alerts
    assert {c[0] for c in cases if not c[3]} >= alerts - {"PostgresNoStatementTimeout",
                                                           "PostgresConnectionsNearLimit"}


def test_thresholds_can_be_overridden() -> None:
    groups = alerting.rule_groups({"idle_in_transaction_warning_seconds": 42})
    exprs = [r["expr"] for r in groups["groups"][1]["rules"]
             if r["alert"] == "PostgresIdleInTransaction"]
    assert exprs[0].endswith("> 42")
    with pytest.raises(ValueError, match="unknown threshold"):
        alerting.rule_groups({"nonsense": 1})


def _promtool_tests(cases: list[Case]) -> dict[str, Any]:
    severity = {a.name: a.severity for a in alerting.ALERTS}
    return {
        "rule_files": ["rules.yml"],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [{"series": s, "values": v} for s, v in series.items()],
            "alert_rule_test": [{
                "eval_time": at, "alertname": alert,
                "exp_alerts": [{"exp_labels": {**labels, "severity": severity[alert]}}
                               for labels in expected],
            }],
        } for alert, series, at, expected in cases],
    }


def test_promtool_check_rules() -> None:
    done = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("overrides", [{}, *({str(o): o for o, _ in OVERRIDE_CASES}.values())],
                         ids=str)
def test_promtool_unit_tests(tmp_path: Path, overrides: dict[str, float]) -> None:
    cases = CASES if not overrides else [c for o, c in OVERRIDE_CASES if o == overrides]
    status, output = run_rule_tests(
        tmp_path, alerting.render_yaml(alerting.rule_groups(overrides, annotations=False)),
        _promtool_tests(cases))
    assert status == 0, output[-10000:]


COMPAT = ROOT / "alerts" / "compat" / "pgbouncer-exporter-0.10-names.rules.yml"
# What grafana/jsonnet-libs' pgbouncer-mixin queries (targets.libsonnet, main.libsonnet,
# alerts): the names of pgbouncer_exporter up to 0.10.
PGBOUNCER_MIXIN_METRICS = (
    "pgbouncer_stats_queries_pooled_total", "pgbouncer_stats_queries_duration_seconds_total",
    "pgbouncer_stats_received_bytes_total", "pgbouncer_stats_sent_bytes_total",
    "pgbouncer_stats_sql_transactions_pooled_total",
    "pgbouncer_stats_server_in_transaction_seconds_total",
    "pgbouncer_pools_client_waiting_connections", "pgbouncer_pools_client_active_connections",
    "pgbouncer_pools_server_active_connections", "pgbouncer_pools_server_idle_connections",
    "pgbouncer_pools_server_used_connections", "pgbouncer_pools_server_testing_connections",
    "pgbouncer_pools_server_login_connections", "pgbouncer_pools_client_maxwait_seconds",
    "pgbouncer_databases_max_connections", "pgbouncer_databases_current_connections",
    "pgbouncer_config_max_user_connections", "pgbouncer_config_max_client_connections")


def test_the_pgbouncer_mixin_finds_every_metric_it_queries_with_the_compat_rules() -> None:
    assert COMPAT.read_text() == alerting.render_yaml(alerting.compat_rule_groups()), \
        "regenerate: scripts/generate"
    recorded = {r["record"] for g in yaml.safe_load(COMPAT.read_text())["groups"]
                for r in g["rules"]}
    missing = [m for m in PGBOUNCER_MIXIN_METRICS if m not in CATALOGUE and m not in recorded]
    assert missing == []
    # and the recorded names are not ours: loading the file never duplicates a series
    assert not recorded & set(CATALOGUE)


def test_compat_rules_carry_our_counters_under_the_old_names(tmp_path: Path) -> None:
    (tmp_path / "compat.yml").write_text(COMPAT.read_text())
    labels = 'target="pgb",database="prefect"'
    tests = {"rule_files": ["compat.yml"], "evaluation_interval": "1m", "tests": [{
        "interval": "1m",
        "input_series": [{"series": f"pgbouncer_stats_totals_queries_pooled_total{{{labels}}}",
                          "values": "0+60x10"}],
        "promql_expr_test": [{
            "expr": "rate(pgbouncer_stats_queries_pooled_total[5m])", "eval_time": "10m",
            "exp_samples": [{"labels": f"{{{labels}}}", "value": 1}]}]}]}
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(tests, sort_keys=False))
    done = subprocess.run([PROMTOOL, "test", "rules", "tests.yml"], cwd=tmp_path,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
