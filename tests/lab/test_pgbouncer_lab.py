"""The PgBouncer source against a real PgBouncer (transaction pooling) in front of PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib

import asyncpg
import pytest

from exporter.dsn import parse_target
from exporter.postgres.source import PostgresSource
from exporter.source import SourceError
from lab.pgbouncer import LabPgBouncer
from lab.postgres import SUPERUSER_PASSWORD, LabPostgres
from lab.stack import Lab
from tests.helpers import StartExporter, scrape, wait_for, wait_for_value

pytestmark = pytest.mark.lab


async def test_stats_user_reads_pools_config_lists_and_version(
        pgbouncer: LabPgBouncer, start_exporter: StartExporter) -> None:
    exporter = await start_exporter(pgbouncer_dsn=f"bouncer-a={pgbouncer.stats_dsn()}")
    s = await wait_for_value(exporter.port, "pgbouncer_up", {"target": "bouncer-a"}, 1)
    assert s.labelsets("pgbouncer_version_info")[0]["version"].startswith("1.")
    assert s.value("pgbouncer_config_max_client_connections") == pgbouncer.max_client_conn
    assert s.value("pgbouncer_config_default_pool_size") == pgbouncer.pool_size
    assert s.labelsets("pgbouncer_config_pool_mode_info") == [
        {"target": "bouncer-a", "pool_mode": "transaction"}]
    assert s.value("pgbouncer_databases_pool_size", name="prefect") == pgbouncer.pool_size
    # SHOW LISTS counts the admin console too: prefect, postgres and pgbouncer
    assert s.value("pgbouncer_databases", target="bouncer-a") == 3
    # the admin console's own pool (the exporter itself) is not reported
    assert s.values("pgbouncer_pools_client_active_connections", database="pgbouncer") == []


async def test_more_clients_than_pool_size_wait_exactly_the_surplus(
        postgres: LabPostgres, pgbouncer: LabPgBouncer, start_exporter: StartExporter) -> None:
    exporter = await start_exporter(pgbouncer_dsn=pgbouncer.stats_dsn())
    clients = pgbouncer.pool_size + 3
    conns = [await asyncpg.connect(pgbouncer.dsn(), statement_cache_size=0)
             for _ in range(clients)]
    sleeps = [asyncio.create_task(c.execute("SELECT pg_sleep(30)")) for c in conns]
    pool = {"database": "prefect", "user": "postgres"}
    try:
        s = await wait_for_value(exporter.port, "pgbouncer_pools_client_waiting_connections",
                                 pool, 3)
        assert s.value("pgbouncer_pools_server_active_connections", **pool) == pgbouncer.pool_size
        assert s.value("pgbouncer_pools_client_active_connections", **pool) == pgbouncer.pool_size
        assert s.labelsets("pgbouncer_pools_mode_info")[0]["pool_mode"] == "transaction"
        first = s.value("pgbouncer_pools_client_maxwait_seconds", **pool)
        s = await wait_for(exporter.port, lambda s: s.value(
            "pgbouncer_pools_client_maxwait_seconds", **pool) >= first + 1.0,
            "maxwait grows while clients wait")
        maxwait = s.value("pgbouncer_pools_client_maxwait_seconds", **pool)
        assert maxwait != int(maxwait), "microsecond precision, not whole seconds"
    finally:
        for task in sleeps:
            task.cancel()
        for conn in conns:
            conn.terminate()
        with contextlib.suppress(BaseException):
            await asyncio.gather(*sleeps, return_exceptions=True)
        # a server backend does not notice its client left until its statement ends
        postgres.psql("SELECT pg_cancel_backend(pid) FROM pg_stat_activity "
                      "WHERE query = 'SELECT pg_sleep(30)' AND pid <> pg_backend_pid()")
    # PgBouncer closes the server side of cancelled clients; the pool drains
    await wait_for_value(exporter.port, "pgbouncer_pools_client_waiting_connections", pool, 0,
                         timeout=40)
    s = await scrape(exporter.port)
    assert s.value("pgbouncer_pools_client_maxwait_seconds", **pool) == 0
    assert (s.find("pgbouncer_stats_totals_client_wait_seconds_total", database="prefect")
            or 0) > 1.0


async def test_admin_user_reads_the_same(pgbouncer: LabPgBouncer,
                                         start_exporter: StartExporter) -> None:
    exporter = await start_exporter(pgbouncer_dsn=pgbouncer.admin_dsn())
    s = await wait_for_value(exporter.port, "pgbouncer_up", {}, 1)
    assert s.value("pgbouncer_databases_pool_size", name="prefect") == pgbouncer.pool_size


async def test_pgbouncer_killed_and_restarted(lab: Lab, postgres: LabPostgres,
                                              start_exporter: StartExporter,
                                              tmp_path_factory: pytest.TempPathFactory) -> None:
    bouncer = lab.pgbouncer(postgres, tmp_path_factory.mktemp("pgb").name)
    exporter = await start_exporter(pgbouncer_dsn=bouncer.stats_dsn(),
                                    postgres_dsn=postgres.monitor_dsn())
    port = exporter.port
    await wait_for_value(port, "pgbouncer_up", {}, 1)
    bouncer.kill()
    s = await wait_for_value(port, "pgbouncer_up", {}, 0)
    # the exporter keeps serving, and the other source is unaffected
    assert s.value("postgres_up") == 1
    assert s.value("prefect_pg_exporter_source_up", source="pgbouncer") == 0
    # nothing of the last good poll is shown as current (#28): its pools are gone
    assert s.find("pgbouncer_databases_pool_size", name="prefect") is None
    bouncer.start()
    s = await wait_for_value(port, "pgbouncer_up", {}, 1, timeout=20)
    # after a restart no client waits (and the pool may not exist yet)
    assert s.find("pgbouncer_pools_client_waiting_connections", database="prefect") in (0, None)



async def test_a_postgres_dsn_pointing_at_pgbouncer_is_refused_with_where_to_point_it(
        pgbouncer: LabPgBouncer) -> None:
    """Through PgBouncer in transaction pooling the exporter's session settings (its
    statement_timeout, lock_timeout, work_mem) would stay on a server connection that Prefect
    gets next. PgBouncer refuses the read-only startup parameter; the error says so, and
    where each DSN should point."""
    dsn = pgbouncer.dsn()
    source = PostgresSource(parse_target(dsn, "through-pgbouncer"), statement_timeout_ms=5000,
                            connect_timeout=10, top_transactions=5, hot_tables=())
    with pytest.raises(SourceError) as refused:
        await source.poll()
    message = str(refused.value)
    assert refused.value.reason == "connect"
    assert "unsupported startup parameter: default_transaction_read_only" in message
    assert "The exporter reads PostgreSQL directly" in message
    assert "PREFECT_PG_EXPORTER_PGBOUNCER_DSN" in message
    assert SUPERUSER_PASSWORD not in message
    # and Prefect's connections through it keep the server's own timeout
    client = await asyncpg.connect(dsn)
    try:
        assert await client.fetchval("SHOW statement_timeout") == "0"
    finally:
        await client.close()
