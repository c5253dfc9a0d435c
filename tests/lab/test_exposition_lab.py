"""The whole exposition on the lab, all four sources: exactly the catalogue, no more."""

from __future__ import annotations

import asyncpg
import pytest

from lab.pgbouncer import LabPgBouncer
from lab.postgres import LabPostgres
from lab.prefect import LabPrefect
from lab.prefect_api import PrefectAPI
from lab.redis import LabRedis, prefect_like_streams
from tests.helpers import PREFECT_POLL, StartExporter, wait_for

pytestmark = pytest.mark.lab


async def test_live_exposition_is_exactly_the_catalogue(
        postgres: LabPostgres, pgbouncer: LabPgBouncer, prefect: LabPrefect,
        redis_server: LabRedis, start_exporter: StartExporter) -> None:
    """Every series the exporter emits on the lab is catalogued with exactly its labels, and
    every catalogued metric appears unless it needs a newer PgBouncer than the lab's 1.18."""
    from exporter.catalogue import CATALOGUE

    api = PrefectAPI(prefect.api_url)
    await api.work_pool("pool-catalogue")
    await api.set_pool_limit("pool-catalogue", 3)
    await api.heartbeat("pool-catalogue", "worker-c")
    await api.set_queue_limit("pool-catalogue", "default", 2)
    await api.global_concurrency_limit("catalogue-limit", 3)
    await api.close()
    prefect_like_streams(redis_server)  # streams, groups and consumers as Prefect in HA leaves
    exporter = await start_exporter(postgres_dsn=postgres.monitor_dsn(),
                                    pgbouncer_dsn=pgbouncer.stats_dsn(),
                                    prefect_api_url=prefect.api_url,
                                    redis_url=f"messaging={redis_server.url(0)}", **PREFECT_POLL)
    client = await asyncpg.connect(pgbouncer.dsn(), statement_cache_size=0)  # makes a pool
    try:
        await client.execute("SELECT 1")
        s = await wait_for(exporter.port, lambda s: s.value("pgbouncer_up") == 1
                           and s.value("postgres_up") == 1 and s.value("prefect_api_up") == 1
                           and s.value("redis_up") == 1
                           and bool(s.values("redis_stream_group_consumers_active"))
                           and bool(s.values("pgbouncer_pools_client_active_connections"))
                           and bool(s.values("postgres_connections")),
                           "all sources up, a pool and a session seen")
    finally:
        await client.close()
    own = {n for n in s.names() if not n.startswith(("process_", "python_"))}
    for name in own:
        assert name in CATALOGUE, f"{name} is emitted but not catalogued"
        for labels in s.labelsets(name):
            assert set(labels) == set(CATALOGUE[name].labels), name
    newer_pgbouncer = {"pgbouncer_config_max_prepared_statements",
                       "pgbouncer_stats_totals_server_assignments_total",
                       "pgbouncer_stats_totals_client_parses_total",
                       "pgbouncer_stats_totals_server_parses_total",
                       "pgbouncer_stats_totals_binds_total"}
    # series that exist only while something is happening (a blocked session, a LISTEN, ...)
    situational = {"postgres_transaction_max_age_seconds",
                   "postgres_oldest_transaction_age_seconds", "postgres_listen_sessions",
                   "postgres_table_live_tuples", "postgres_blocked_sessions_by_relation",
                   "postgres_table_dead_tuples", "postgres_table_last_vacuum_timestamp_seconds",
                   "postgres_table_last_autovacuum_timestamp_seconds",
                   "pgbouncer_config_max_user_connections", "pgbouncer_config_max_db_connections",
                   "pgbouncer_config_query_timeout_seconds", "postgres_wait_event_sessions",
                   # no event near its retention cut-off, and no flow run started, no heartbeat,
                   # no worker polling a queue in this lab (tests/lab/test_prefect_runs_lab.py
                   # has those three, with a real worker)
                   "prefect_events_oldest_age_seconds", "prefect_flow_run_last_start_age_seconds",
                   "prefect_flow_runs_without_heartbeat",
                   "prefect_work_queue_last_polled_age_seconds",
                   # while an index is built; with the opt-in column grants (#25:
                   # tests/lab/test_bigdb_lab.py has both)
                   "postgres_index_build_done_ratio", "prefect_table_oldest_row_age_seconds"}
    missing = set(CATALOGUE) - own - newer_pgbouncer - situational
    assert not missing, f"catalogued but never emitted on the lab: {sorted(missing)}"
