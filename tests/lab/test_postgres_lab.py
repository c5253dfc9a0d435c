"""The PostgreSQL source against a real PostgreSQL 15: incidents reproduced, exact values."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
import pytest

from exporter.dsn import parse_target
from exporter.labels import FOLDED
from exporter.metricspec import MetricOptions
from exporter.postgres import snapshot as pgsnap
from exporter.postgres import source as pgsrc
from exporter.postgres.activity import (
    ACTIVITY_SQL,
    BLOCKERS_SQL,
    INDEX_BUILDS_SQL,
    MAX_BLOCKERS_ASKED,
    activity,
    blockers_to_ask,
)
from exporter.postgres.involved import LockRow
from exporter.postgres.locks import lock_roots
from exporter.postgres.metrics import postgres_families
from exporter.postgres.snapshot import PostgresSnapshot
from exporter.postgres.source import APPLICATION_NAME
from lab import incidents
from lab.postgres import LabPostgres
from lab.stack import Lab
from tests.helpers import StartExporter, eventually, scrape, wait_for, wait_for_value

pytestmark = pytest.mark.lab


async def backends(pg: LabPostgres, application_name: str) -> int:
    conn = await asyncpg.connect(pg.dsn())
    try:
        return await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
            application_name)
    finally:
        await conn.close()


@pytest.fixture(scope="module", autouse=True)
def hot_table(postgres: LabPostgres) -> None:
    incidents.ensure_table(postgres, "scratch.task_run")
    postgres.psql("INSERT INTO scratch.task_run VALUES (2, 'RUNNING') ON CONFLICT DO NOTHING")


async def test_idle_in_transaction_holder_and_blocked_writer(
        postgres: LabPostgres, start_exporter: StartExporter) -> None:
    exporter = await start_exporter(postgres_dsn=postgres.monitor_dsn())
    port = exporter.port
    async with incidents.lock_chain(postgres, app="t") as chain:
        s = await wait_for_value(port, "postgres_blocked_sessions", {}, 1)
        assert s.value("postgres_blocking_sessions") == 1
        await wait_for(port, lambda s: (s.find("postgres_blocked_max_wait_seconds") or 0)
                       >= 0.5, "blocked wait grows")
        s = await scrape(port)
        assert s.value("postgres_connections", application_name="t-holder",
                       state="idle in transaction") == 1
        assert s.value("postgres_connections", application_name="t-writer",
                       state="active") == 1
        assert s.value("postgres_transaction_max_age_seconds", application_name="t-holder",
                       state="idle in transaction") > 0.5
        oldest = [lab for lab in s.labelsets("postgres_oldest_transaction_age_seconds")
                  if lab["rank"] == "1"]
        assert oldest[0]["pid"] == str(chain.holder_pid)
        assert oldest[0]["application_name"] == "t-holder"
        assert oldest[0]["state"] == "idle in transaction"
        assert oldest[0]["client_addr"] == "127.0.0.1"
        # the writer waits on a lock; the holder, idle in transaction, waits on ClientRead as
        # every idle session does: the idle-in-transaction checks judge it, not the stall one
        assert s.value("postgres_wait_event_sessions", wait_event_type="Lock",
                       wait_event="transactionid") == 1
        assert s.value("postgres_client_read_in_transaction_sessions") == 0
        # the snapshot names the root blocker for the diagnosis
        snap = exporter.poller.states[0].snapshot
        assert isinstance(snap, PostgresSnapshot)
        assert [b.pid for b in snap.blockers] == [chain.holder_pid]
        assert snap.blockers[0].state == "idle in transaction"
        await chain.end()
        await wait_for_value(port, "postgres_blocked_sessions", {}, 0)
        s = await wait_for_value(port, "postgres_blocking_sessions", {}, 0)
        assert s.value("postgres_blocked_max_wait_seconds") == 0


async def test_copy_stall_counts_but_plain_idle_sessions_do_not(
        postgres: LabPostgres, start_exporter: StartExporter) -> None:
    exporter = await start_exporter(postgres_dsn=postgres.monitor_dsn())
    port = exporter.port
    async with incidents.idle_sessions(postgres, 3, app="idle") as idle:
        for conn in idle:
            await conn.execute("SELECT 1")
        async with incidents.copy_stall(postgres, app="copier"):
            s = await wait_for_value(port, "postgres_client_read_in_transaction_sessions", {},
                                     1)
            assert sum(s.values("postgres_connections", state="idle")) >= 3
            assert s.value("postgres_connections", application_name="copier",
                           state="active") == 1
            assert s.value("postgres_wait_event_sessions", wait_event_type="Client",
                           wait_event="ClientRead") == 1
            await wait_for(
                port,
                lambda s: (s.find("postgres_client_read_in_transaction_max_age_seconds")
                           or 0) >= 1.0,
                "stall age grows")
        await wait_for_value(port, "postgres_client_read_in_transaction_sessions", {}, 0)


async def test_two_copies_of_background_services_listen(
        own_postgres: LabPostgres, start_exporter: StartExporter) -> None:
    # a PostgreSQL of its own: the session lab's Prefect server holds a LISTEN of its own
    exporter = await start_exporter(postgres_dsn=own_postgres.monitor_dsn())
    async with incidents.listeners(own_postgres) as conns:
        await wait_for_value(exporter.port, "postgres_listen_sessions",
                             {"channel": "prefect_automation_changes"}, 2)
        conns[1].terminate()
        await wait_for_value(exporter.port, "postgres_listen_sessions",
                             {"channel": "prefect_automation_changes"}, 1)


async def test_long_running_statement(postgres: LabPostgres,
                                      start_exporter: StartExporter) -> None:
    exporter = await start_exporter(postgres_dsn=postgres.monitor_dsn())
    async with incidents.long_statement(postgres, seconds=60, app="sleeper") as sleeper:
        s = await wait_for(
            exporter.port,
            lambda s: (s.find("postgres_transaction_max_age_seconds",
                               application_name="sleeper", state="active") or 0) >= 1.0,
            "sleeper's transaction ages")
        assert s.value("postgres_wait_event_sessions", wait_event_type="Timeout",
                       wait_event="PgSleep") == 1
    with pytest.raises(asyncpg.QueryCanceledError):
        await sleeper.task
    await wait_for(exporter.port,
                   lambda s: not s.values("postgres_transaction_max_age_seconds",
                                          application_name="sleeper"),
                   "the sleeper's series vanish once it is gone")


async def test_settings_server_and_hot_tables(postgres: LabPostgres,
                                             start_exporter: StartExporter) -> None:
    postgres.psql("ALTER SYSTEM SET idle_in_transaction_session_timeout = '90s'")
    postgres.psql("SELECT pg_reload_conf()")
    try:
        exporter = await start_exporter(postgres_dsn=postgres.monitor_dsn())
        s = await wait_for_value(exporter.port, "postgres_setting_seconds",
                                 {"name": "idle_in_transaction_session_timeout"}, 90)
    finally:
        postgres.psql("ALTER SYSTEM RESET idle_in_transaction_session_timeout")
        postgres.psql("SELECT pg_reload_conf()")
    assert s.value("postgres_setting_seconds", name="statement_timeout") == 0
    assert s.value("postgres_max_connections") == postgres.max_connections
    assert s.value("postgres_superuser_reserved_connections") == 3
    assert s.labelsets("postgres_server_info")[0]["version"].startswith("15.")
    postgres.psql("VACUUM scratch.task_run")
    s = await wait_for(exporter.port,
                       lambda s: (s.find("postgres_table_last_vacuum_timestamp_seconds",
                                          schema="scratch", table="task_run") or 0) > 0,
                       "manual vacuum time of task_run")
    assert s.value("postgres_table_live_tuples", table="task_run", schema="scratch") == 2
    assert s.find("postgres_table_dead_tuples", table="task_run", schema="scratch") is not None
    assert s.values("postgres_table_live_tuples", schema="scratch", table="flow_run") == []


async def test_monitor_role_sees_other_sessions_a_plain_role_does_not(
        own_postgres: LabPostgres, start_exporter: StartExporter) -> None:
    postgres = own_postgres  # the session lab's Prefect server holds a LISTEN of its own
    postgres.psql("DROP ROLE IF EXISTS plain_role")
    postgres.psql("CREATE ROLE plain_role LOGIN PASSWORD 'plain-secret'")
    monitored = await start_exporter(postgres_dsn=postgres.monitor_dsn())
    plain = await start_exporter(postgres_dsn=postgres.dsn("plain_role", "plain-secret"))
    async with incidents.listeners(postgres, apps=("listener",)):
        await wait_for_value(monitored.port, "postgres_listen_sessions",
                             {"channel": "prefect_automation_changes"}, 1)
        s = await wait_for_value(plain.port, "postgres_up", {}, 1)
        # without pg_monitor other roles' state and query are hidden: the exporter says so
        assert s.values("postgres_listen_sessions") == []
        assert s.value("postgres_connections", application_name="listener",
                       state="unknown") == 1
    seen = [e.poller.states[0].snapshot for e in (monitored, plain)]
    assert [s.can_read_all_stats for s in seen if isinstance(s, PostgresSnapshot)] == [True, False]


async def test_database_restart_is_survived_with_one_session(
        own_postgres: LabPostgres, start_exporter: StartExporter) -> None:
    exporter = await start_exporter(postgres_dsn=own_postgres.monitor_dsn())
    port = exporter.port
    await wait_for_value(port, "prefect_pg_exporter_source_up",
                         {"source": "postgres"}, 1)
    assert await backends(own_postgres, APPLICATION_NAME) == 1

    own_postgres.stop()
    s = await wait_for_value(port, "prefect_pg_exporter_source_up", {"source": "postgres"}, 0)
    assert s.value("postgres_up") == 0
    # nothing of the last good poll is shown as current (#28)
    assert s.find("postgres_max_connections") is None
    assert (s.find("prefect_pg_exporter_source_errors_total", source="postgres",
                    reason="connect") or 0) + (
        s.find("prefect_pg_exporter_source_errors_total", source="postgres",
                reason="query") or 0) >= 1

    own_postgres.start()
    await wait_for_value(port, "prefect_pg_exporter_source_up", {"source": "postgres"}, 1,
                         timeout=20)
    assert await backends(own_postgres, APPLICATION_NAME) == 1

    async def never_in_transaction() -> bool:
        conn = await asyncpg.connect(own_postgres.dsn())
        try:
            return await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 "
                "AND xact_start IS NOT NULL AND state <> 'active'", APPLICATION_NAME) == 0
        finally:
            await conn.close()

    await eventually(never_in_transaction, what="no idle transaction from the exporter")


async def _columns(postgres: LabPostgres, sql: str) -> list[str]:
    """The columns a query returns, as PostgreSQL describes them (the query is not run)."""
    conn = await asyncpg.connect(postgres.monitor_dsn())
    try:
        return [a.name for a in (await conn.prepare(sql)).get_attributes()]
    finally:
        await conn.close()


async def test_activity_columns_are_a_group_then_what_sessions_add(postgres: LabPostgres
                                                                   ) -> None:
    assert await _columns(postgres, ACTIVITY_SQL) == [
        *pgsnap.ActivityGroup._fields, "client", "applications", "pids", "transaction_ages",
        "state_ages", "client_addrs", "idle_apps", "index_builds"]


@pytest.mark.parametrize(("sql", "row_type"), [
    (pgsrc.LOCKS_SQL, LockRow),
    (pgsrc.TABLES_SQL, pgsnap.TableStats),
    (pgsrc.DATABASES_SQL, pgsnap.DatabaseSize),
    (pgsrc.INVALID_INDEXES_SQL, pgsnap.InvalidIndex),
    (INDEX_BUILDS_SQL, pgsnap.IndexBuild),
])
async def test_query_columns_are_the_row_fields_in_order(postgres: LabPostgres, sql: str,
                                                         row_type: type[tuple[Any, ...]]
                                                         ) -> None:
    fields = list(getattr(row_type, "_fields"))  # noqa: B009  # a NamedTuple type
    assert await _columns(postgres, sql) == fields


@pytest.mark.parametrize("sql", [pgsrc.INVOLVED_SQL, pgsrc.INVOLVED_NO_TEXT_SQL])
async def test_involved_columns_are_a_session_then_its_statement(postgres: LabPostgres,
                                                                 sql: str) -> None:
    assert await _columns(postgres, sql) == [*pgsnap.Session._fields, "statement"]


async def test_one_activity_read_finds_groups_listeners_the_oldest_and_the_blocked(
        own_postgres: LabPostgres) -> None:
    """ACTIVITY_SQL's three kinds of rows, from one read: a LISTEN however it is spelled, the
    oldest transactions in order, and a lock wait with its blocker."""
    dsn = own_postgres.dsn()
    spellings = ['LISTEN "prefect_automation_changes"', "\n\t  listen   lower_case",
                 "select 1; listen not_first"]
    listeners = [await asyncpg.connect(dsn) for _ in spellings]
    holder, writer, monitor = [await asyncpg.connect(dsn) for _ in range(3)]
    try:
        for conn, sql in zip(listeners, spellings, strict=True):
            await conn.execute(sql)
        holder_pid = await holder.fetchval("SELECT pg_backend_pid()")
        writer_pid = await writer.fetchval("SELECT pg_backend_pid()")
        await holder.execute("CREATE TABLE IF NOT EXISTS one_read (id int PRIMARY KEY);"
                             "INSERT INTO one_read VALUES (1) ON CONFLICT DO NOTHING")
        await holder.execute("BEGIN; UPDATE one_read SET id = 1")
        await writer.execute("BEGIN; SELECT txid_current()")
        asked = time.monotonic()
        waiting = asyncio.get_running_loop().create_task(
            writer.execute("UPDATE one_read SET id = 1"))

        async def writer_waits() -> bool:
            return bool(await monitor.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 "
                "AND wait_event_type = 'Lock'", writer_pid))

        await eventually(writer_waits, what="the writer waits on the holder's lock")
        read = activity(await monitor.fetch(ACTIVITY_SQL), 10, 20)
        channels = sorted(g.listen_channel for g in read.groups if g.listen_channel)
        assert channels == ["lower_case", "prefect_automation_changes"]
        assert sum(g.sessions for g in read.groups) >= len(spellings) + 2
        ours = [s.pid for s in read.oldest if s.pid in (holder_pid, writer_pid)]
        assert ours == [holder_pid, writer_pid]  # the older transaction first
        [wait] = read.lock_waits
        assert wait.pid == writer_pid
        # its wait since its UPDATE began: not nothing, nor more than the test has waited
        assert 0 < wait.wait_seconds <= time.monotonic() - asked + 1
        blockers = await monitor.fetch(BLOCKERS_SQL, blockers_to_ask(read.lock_waits))
        assert [(r["pid"], r["blocked_by"]) for r in blockers] == [(writer_pid, [holder_pid])]
        assert activity(await monitor.fetch(ACTIVITY_SQL), 0, 20).oldest == ()
        waiting.cancel()
    finally:
        for conn in (*listeners, holder, writer, monitor):
            conn.terminate()


async def test_settings_and_sizes_are_read_once_a_minute_new_databases_at_once(
        own_postgres: LabPostgres) -> None:
    """The settings and every database's size are read at most once a minute (#26) and on
    every new connection; a database created meanwhile is sized at once."""
    target = parse_target(own_postgres.monitor_dsn(), "test")
    source = pgsrc.PostgresSource(target, statement_timeout_ms=5000, connect_timeout=10,
                                  top_transactions=5, hot_tables=())
    admin = await asyncpg.connect(own_postgres.dsn())
    setting = "idle_session_timeout"
    try:
        before = (await source.poll()).timeouts_seconds[setting]
        await admin.execute(f"ALTER SYSTEM SET {setting} = '7min'")
        await admin.execute("SELECT pg_reload_conf()")
        await admin.execute("CREATE DATABASE sized_at_once")

        async def reloaded() -> bool:
            return bool(await admin.fetchval(
                "SELECT setting = '420000' FROM pg_settings WHERE name = $1", setting))

        await eventually(reloaded, what="the server reloaded its configuration")
        within_the_minute = await source.poll()
        assert within_the_minute.timeouts_seconds[setting] == before  # not read again
        sizes = {d.datname: d.bytes for d in within_the_minute.databases}
        assert sizes["sized_at_once"] > 0 and sizes["postgres"] > 0
        source._sizes_every_seconds = 0.0  # a minute later
        assert (await source.poll()).timeouts_seconds[setting] == 420.0
        await admin.execute(f"ALTER SYSTEM SET {setting} = '8min'")
        await admin.execute("SELECT pg_reload_conf()")
        source._sizes_every_seconds = 3600.0
        await source.close()  # a new connection reads them whatever the time

        async def read_again() -> bool:
            await source.close()
            return (await source.poll()).timeouts_seconds[setting] == 480.0

        await eventually(read_again, what="a new connection reads the settings again")
    finally:
        await admin.execute(f"ALTER SYSTEM RESET {setting}")
        await admin.execute("SELECT pg_reload_conf()")
        await admin.execute("DROP DATABASE IF EXISTS sized_at_once")
        await admin.close()
        await source.close()


async def test_folding_idle_sessions_exports_what_grouping_every_session_did(
        own_postgres: LabPostgres) -> None:
    """The idle sessions of values beyond the top N are folded (#26): the families built from
    the folded groups are the ones built from every group, and every session the checks name
    is still a group of its own (idle in transaction, LISTEN), with its pids."""
    dsn = own_postgres.dsn()
    names = [f"fold-idle-{i:02d}" for i in range(12)]
    conns = [await asyncpg.connect(dsn, server_settings={"application_name": name})
             for name in [*names, "fold-big", "fold-big", "fold-big", "fold-tx", "fold-listen"]]
    tx, listener = conns[-2], conns[-1]
    await tx.execute("BEGIN; SELECT txid_current()")
    await listener.execute('LISTEN "prefect_automation_changes"')
    target = parse_target(own_postgres.monitor_dsn(), "test")
    common: dict[str, Any] = {"statement_timeout_ms": 5000, "connect_timeout": 10,
                              "top_transactions": 5, "hot_tables": ()}
    folding = pgsrc.PostgresSource(target, label_top_n=4, **common)
    whole = pgsrc.PostgresSource(target, **common)  # folds nothing in SQL
    options = MetricOptions(label_top_n=4)

    def samples(snap: PostgresSnapshot) -> dict[str, list[tuple[Any, ...]]]:
        return {m.name: sorted((tuple(sorted(s.labels.items())), s.value) for s in m.samples)
                for m in postgres_families(snap, options)
                if m.name in ("postgres_connections", "postgres_transaction_max_age_seconds",
                              "postgres_listen_sessions", "postgres_wait_event_sessions")}

    async def same_families() -> bool:
        folded, every = await folding.poll(), await whole.poll()
        assert len(folded.activity) < len(every.activity)
        assert any(g.application_name == FOLDED for g in folded.activity)
        mine = [g for g in folded.activity if g.application_name.startswith("fold-")]
        assert {g.application_name for g in mine} >= {"fold-big", "fold-tx", "fold-listen"}
        tx_pid = await tx.fetchval("SELECT pg_backend_pid()")
        assert folded.group_of(tx_pid) is not None
        assert folded.group_of(tx_pid).application_name == "fold-tx"  # type: ignore[union-attr]
        a, b = samples(folded), samples(every)
        # transaction ages move between the two reads: compare their labels only
        age = "postgres_transaction_max_age_seconds"
        a[age] = [labels for labels, _ in a[age]]
        b[age] = [labels for labels, _ in b[age]]
        assert a == b
        return True

    try:
        await eventually(same_families, what="the same families from folded and whole reads")
    finally:
        await folding.close()
        await whole.close()
        for conn in conns:
            conn.terminate()


async def test_activity_is_read_where_temporary_files_are_limited(lab: Lab) -> None:
    """pg_stat_get_activity() keeps a row per backend, query text included, in work_mem, past
    it in a temporary file: under temp_file_limit the read failed and the exporter saw nothing
    of the largest servers. 150 sessions of 30 kB queries (track_activity_query_size 32kB) are
    the 5,000 sessions of 1 kB queries where that begins at the default work_mem, 4 MB."""
    pg = lab.postgres("pg-temp-file-limit", max_connections=200, extra_settings={
        "track_activity_query_size": "'32kB'", "temp_file_limit": "'1MB'"})
    long_query = "SELECT 1 /* " + "x" * 30_000 + " */"
    sessions = await asyncio.gather(*(asyncpg.connect(
        pg.dsn(), server_settings={"application_name": "long-queries"}) for _ in range(150)))
    plain = await asyncpg.connect(pg.monitor_dsn())
    source = pgsrc.PostgresSource(parse_target(pg.monitor_dsn(), "test"),
                                  statement_timeout_ms=5000, connect_timeout=10,
                                  top_transactions=5, hot_tables=())
    try:
        for conn in sessions:
            await conn.execute(long_query)
        # the fault is real: at the server's work_mem the same statement fails
        with pytest.raises(asyncpg.ConfigurationLimitExceededError):
            await plain.fetch(ACTIVITY_SQL)
        snap = await source.poll()
        assert sum(g.sessions for g in snap.activity
                   if g.application_name == "long-queries") == 150
    finally:
        await source.close()
        for conn in (plain, *sessions):
            conn.terminate()


async def test_a_lock_storm_asks_the_blockers_of_the_longest_waits_only(lab: Lab) -> None:
    """250 sessions waiting behind one ACCESS EXCLUSIVE holder: all 250 are blocked sessions,
    pg_blocking_pids() is asked for the MAX_BLOCKERS_ASKED longest waits (it walks every waiter
    of the lock while it holds the lock manager, O(N²) for all of them), and the holder is the
    chain's one root, as with a pg_blocking_pids() per waiter."""
    pg = lab.postgres("pg-lock-storm", max_connections=300)
    holder = await asyncpg.connect(pg.dsn())
    waiters = await asyncio.gather(*(asyncpg.connect(pg.dsn()) for _ in range(250)))
    source = pgsrc.PostgresSource(parse_target(pg.monitor_dsn(), "test"),
                                  statement_timeout_ms=5000, connect_timeout=10,
                                  top_transactions=5, hot_tables=())
    tasks: list[asyncio.Task[str]] = []
    try:
        holder_pid = await holder.fetchval("SELECT pg_backend_pid()")
        await holder.execute("CREATE TABLE storm (id int)")
        await holder.execute("BEGIN; LOCK TABLE storm IN ACCESS EXCLUSIVE MODE")
        tasks = [asyncio.create_task(w.execute("INSERT INTO storm VALUES (1)")) for w in waiters]

        async def all_wait() -> bool:
            return await holder.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'") == 250

        await eventually(all_wait, what="250 sessions wait on the lock")
        snap = await source.poll()
        assert len(snap.blocked) == 250
        asked = [b for b in snap.blocked if b.blocked_by]
        assert len(asked) == MAX_BLOCKERS_ASKED
        assert {b.blocked_by for b in asked} == {(holder_pid,)}
        longest_unasked = max(b.wait_seconds for b in snap.blocked if not b.blocked_by)
        assert min(b.wait_seconds for b in asked) >= longest_unasked
        assert [root for root, _ in lock_roots(snap)] == [holder_pid]
        assert [b.pid for b in snap.blockers] == [holder_pid]
        await holder.execute("ROLLBACK")
        await asyncio.gather(*tasks, return_exceptions=True)
        assert (await source.poll()).blocked == ()
    finally:
        for task in tasks:
            task.cancel()
        await source.close()
        for conn in (holder, *waiters):
            conn.terminate()
