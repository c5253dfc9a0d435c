"""A big Prefect database's failures, reproduced on a real PostgreSQL 15 (#25): a failed
CREATE UNIQUE INDEX CONCURRENTLY, a build in progress, a table far ahead of its statistics,
a deadlock between two sessions, a repeated scan and a password literal in pg_stat_statements,
old rows past any retention (and the EXPLAIN of their read at a million rows). Each counted by
the exporter and named by the doctor; each test on a PostgreSQL of its own."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
from structlog.testing import capture_logs

from exporter.dsn import parse_target
from exporter.postgres.oldest import OLDEST_COLUMNS, ages_sql
from exporter.postgres.source import PostgresSource
from exporter.postgres.statements import TEXTS_SQL, TOP_SQL, StatementsReader
from lab.common import LabError
from lab.postgres import MONITOR_ROLE, LabPostgres
from lab.prefect import LabPrefect
from lab.stack import Lab
from tests.helpers import StartExporter, scrape, wait_for, wait_for_value

pytestmark = pytest.mark.lab


def doctor(pg: LabPostgres, *args: str, **env: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "exporter", "doctor", "--format", "json", *args],
        capture_output=True, text=True, timeout=60,
        env={"PATH": os.environ["PATH"], "PREFECT_PG_EXPORTER_POLL_TIMEOUT_SECONDS": "10",
             "PREFECT_PG_EXPORTER_POSTGRES_DSN": pg.monitor_dsn(), **env})
    assert done.returncode in (0, 1), done.stdout + done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def findings(report: dict[str, Any], check: str) -> list[dict[str, Any]]:
    found = report["findings"]
    assert isinstance(found, list)
    return [f for f in found if f["check"] == check]


@pytest.fixture
async def app(own_postgres: LabPostgres) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(own_postgres.dsn())
    yield conn
    await conn.close()


async def test_a_failed_unique_index_build_is_counted_and_named_a_running_one_is_not(
        own_postgres: LabPostgres, app: asyncpg.Connection,
        start_exporter: StartExporter) -> None:
    pg = own_postgres
    await app.execute("CREATE TABLE scratch.flow_run (id int, name text);"
                      "INSERT INTO scratch.flow_run VALUES (1, 'a'), (1, 'b')")
    exporter = await start_exporter(postgres_dsn=pg.monitor_dsn())
    port = exporter.port
    # a build in progress: CREATE INDEX CONCURRENTLY waits for a writer's transaction to end.
    # Invalid until then, and not counted: only the progress shows.
    writer = await asyncpg.connect(pg.dsn())
    try:
        await writer.execute("BEGIN; INSERT INTO scratch.flow_run VALUES (2, 'c')")
        build = asyncio.create_task(app.execute(
            "CREATE INDEX CONCURRENTLY ix_flow_run__name ON scratch.flow_run (name)"))
        s = await wait_for(port, lambda s: bool(s.labelsets("postgres_index_build_done_ratio")),
                           "the build in progress exported", timeout=30)
        [labels] = s.labelsets("postgres_index_build_done_ratio")
        assert labels["table"] == "flow_run" and labels["index"] == "ix_flow_run__name"
        assert labels["command"] == "CREATE INDEX CONCURRENTLY"
        assert labels["phase"].startswith("waiting for")
        assert s.value("postgres_invalid_indexes") == 0
        await writer.execute("ROLLBACK")
        await asyncio.wait_for(build, 30)
    finally:
        await writer.close()
    # a unique index over duplicates: the build fails and leaves an INVALID index behind
    with pytest.raises(LabError, match="could not create unique index"):
        pg.psql("CREATE UNIQUE INDEX CONCURRENTLY uq_flow_run__id ON scratch.flow_run (id)")
    s = await wait_for_value(port, "postgres_invalid_indexes", {}, 1, timeout=30)
    assert s.labelsets("postgres_index_build_done_ratio") == []
    report = await asyncio.to_thread(doctor, pg)
    [found] = findings(report, "invalid_index")
    assert found["title"] == "index scratch.uq_flow_run__id on flow_run is INVALID"
    assert "REINDEX INDEX CONCURRENTLY scratch.uq_flow_run__id;" in found["action"]
    assert ("CREATE UNIQUE INDEX CONCURRENTLY uq_flow_run__id ON scratch.flow_run USING btree "
            "(id)") in found["action"]
    assert "duplicate rows" in found["action"]


LOG_TABLE = (  # Prefect's log table as its migrations create it (the columns that matter here)
    'CREATE TABLE public.log (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), '
    'created timestamptz NOT NULL DEFAULT now(), updated timestamptz NOT NULL DEFAULT now(), '
    'name varchar NOT NULL, level smallint NOT NULL, flow_run_id uuid, task_run_id uuid, '
    'message text NOT NULL, "timestamp" timestamptz NOT NULL) '
    "WITH (autovacuum_enabled = false);"
    'CREATE INDEX ix_log__timestamp ON public.log ("timestamp");'
    "CREATE INDEX ix_log__updated ON public.log (updated)")


async def insert_old_logs(app: asyncpg.Connection, rows: int = 30_000, days: int = 40) -> None:
    await app.execute(
        'INSERT INTO public.log (name, level, message, "timestamp", created, updated) '
        f"SELECT 'prefect.flow_runs', 20, 'line ' || i, now() - interval '{days} days' "
        f"+ i * interval '1 ms', now() - interval '{days} days', now() - interval '{days} days' "
        f"FROM generate_series(1, {rows}) i")


async def test_old_log_rows_with_autovacuum_off_stale_statistics_and_their_age(
        own_postgres: LabPostgres, app: asyncpg.Connection,
        start_exporter: StartExporter) -> None:
    """30,000 log rows 40 days old, inserted into a log table autovacuum may not touch."""
    pg = own_postgres
    await app.execute(LOG_TABLE)
    await insert_old_logs(app)
    exporter = await start_exporter(postgres_dsn=pg.monitor_dsn())
    s = await wait_for(exporter.port, lambda s: (s.find(
        "postgres_table_modified_since_analyze_rows", schema="public", table="log") or 0)
        >= 30_000, "30,000 rows modified since analyze", timeout=30)
    assert s.value("postgres_table_last_analyze_timestamp_seconds", schema="public",
                   table="log") == 0
    # pg_monitor cannot read Prefect's rows: no age, and the doctor says what to grant
    assert s.labelsets("prefect_table_oldest_row_age_seconds") == []
    report = await asyncio.to_thread(doctor, pg)
    assert findings(report, "oldest_rows_unreadable") == []  # a small table: quiet
    report = await asyncio.to_thread(doctor, pg, "--set", "unread_table_warning_bytes=1000000")
    [found] = findings(report, "stale_statistics")
    assert found["title"].startswith("public.log: 30000 rows changed since its last ANALYZE")
    assert "ANALYZE public.log;" in found["action"]
    assert "ALTER TABLE public.log RESET (autovacuum_enabled)" in found["action"]
    assert "autovacuum_enabled=false" in " ".join(found["evidence"])
    [grant] = findings(report, "oldest_rows_unreadable")
    assert grant["action"].endswith(f'GRANT SELECT ("timestamp") ON public.log TO {MONITOR_ROLE};')
    # opted in, one column: the oldest log row's age shows, and the doctor says it is old
    await app.execute(f'GRANT SELECT ("timestamp") ON public.log TO {MONITOR_ROLE}')
    s = await wait_for(exporter.port, lambda s: s.find(
        "prefect_table_oldest_row_age_seconds", table="log", column="timestamp") is not None,
        "the oldest log row's age", timeout=90)  # read once a minute: the next read
    age = s.value("prefect_table_oldest_row_age_seconds", table="log")
    assert 40 * 86400 - 60 < age < 40 * 86400 + 120
    report = await asyncio.to_thread(doctor, pg)
    [old] = findings(report, "table_unretained_rows")
    assert old["title"] == "public.log holds rows 40.0 days old that nothing deletes"
    assert findings(report, "oldest_rows_unreadable") == []
    # analyzed: the counter drops to 0 and the time of the analyze shows
    await app.execute("ANALYZE public.log")
    s = await wait_for(exporter.port, lambda s: s.find(
        "postgres_table_modified_since_analyze_rows", schema="public", table="log") == 0,
        "statistics fresh after ANALYZE", timeout=30)
    assert s.value("postgres_table_last_analyze_timestamp_seconds", schema="public",
                   table="log") > 0
    assert findings(await asyncio.to_thread(doctor, pg), "stale_statistics") == []


async def test_the_doctor_says_how_to_clean_old_logs_for_the_prefect_release(
        own_postgres: LabPostgres, app: asyncpg.Connection, prefect: LabPrefect) -> None:
    """The real Prefect 3.8.8 of the lab: db_vacuum deletes events only by default, so old log
    rows stay; the doctor reads that from the server's settings and says what to turn on."""
    await app.execute(LOG_TABLE)
    await insert_old_logs(app, rows=1000)
    await app.execute(f'GRANT SELECT ("timestamp") ON public.log TO {MONITOR_ROLE}')
    report = await asyncio.to_thread(doctor, own_postgres,
                                     PREFECT_PG_EXPORTER_PREFECT_API_URL=prefect.api_url)
    [old] = findings(report, "table_unretained_rows")
    assert old["title"] == "public.log holds rows 40.0 days old that nothing deletes"
    assert "no retention of Prefect 3.8.8 deletes log rows" in old["evidence"]
    assert "PREFECT_SERVER_SERVICES_DB_VACUUM_ENABLED" in old["action"]


async def test_a_deadlock_between_two_sessions_is_counted(
        own_postgres: LabPostgres, app: asyncpg.Connection,
        start_exporter: StartExporter) -> None:
    pg = own_postgres
    await app.execute("CREATE TABLE scratch.task_run (id int PRIMARY KEY, state text);"
                      "INSERT INTO scratch.task_run VALUES (1, 'a'), (2, 'b')")
    exporter = await start_exporter(postgres_dsn=pg.monitor_dsn())
    port = exporter.port
    s = await wait_for(port, lambda s: s.find("postgres_deadlocks_total", datname="prefect")
                       is not None, "deadlocks exported", timeout=30)
    before = s.value("postgres_deadlocks_total", datname="prefect")
    # the DSN's database is the watched one, which PostgresDeadlocks joins on (the server's
    # other databases go to PostgresDeadlocksOtherDatabase)
    assert [lab["datname"] for lab in s.labelsets("postgres_watched_database_info")] == [
        "prefect"]
    one, two = await asyncpg.connect(pg.dsn()), await asyncpg.connect(pg.dsn())
    try:
        # each takes one row, then asks for the other's: PostgreSQL cancels one of them
        for conn, row in ((one, 1), (two, 2)):
            await conn.execute(f"BEGIN; UPDATE scratch.task_run SET state = 'x' WHERE id = {row}")
        results = await asyncio.gather(
            one.execute("UPDATE scratch.task_run SET state = 'y' WHERE id = 2"),
            two.execute("UPDATE scratch.task_run SET state = 'y' WHERE id = 1"),
            return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        assert [type(e) for e in errors] == [asyncpg.DeadlockDetectedError]
    finally:
        await one.close()
        await two.close()
    await wait_for_value(port, "postgres_deadlocks_total", {"datname": "prefect"}, before + 1,
                         timeout=30)
    report = await asyncio.to_thread(doctor, pg)
    [found] = findings(report, "deadlocks")
    assert found["severity"] == "info"
    assert found["title"] == f"{int(before) + 1} deadlock(s) in prefect since its statistics " \
                             "were reset"


async def get(port: int, path: str) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://127.0.0.1:{port}{path}", timeout=10)
    response.raise_for_status()
    return response


SECRET = "lab-statement-secret-4711"


async def test_a_repeated_scan_is_first_at_statements_and_a_password_nowhere(
        own_postgres: LabPostgres, app: asyncpg.Connection, start_exporter: StartExporter,
        ) -> None:
    pg = own_postgres
    await app.execute("CREATE TABLE scratch.events (id int, payload text);"
                      "INSERT INTO scratch.events SELECT i, md5(i::text) "
                      "FROM generate_series(1, 200000) i;"
                      "CREATE ROLE statement_victim LOGIN")
    for _ in range(20):  # a sequential scan, again and again: the slowest statement by far
        await app.fetchval("SELECT count(*) FROM scratch.events WHERE payload LIKE $1", "%ab%")
    # a utility statement: pg_stat_statements keeps its literal as it was sent
    await app.execute(f"ALTER ROLE statement_victim PASSWORD '{SECRET}'")
    assert await app.fetchval("SELECT count(*) FROM pg_stat_statements WHERE query LIKE $1",
                              f"%{SECRET}%") == 1
    with capture_logs() as logs:
        exporter = await start_exporter(postgres_dsn=pg.monitor_dsn(), top_statements="500")
        port = exporter.port
        s = await wait_for(port, lambda s: bool(s.labelsets("postgres_statement_seconds_total")),
                           "statements exported", timeout=30)
        body = (await get(port, "/statements")).json()
        [target] = body["targets"]
        assert (target["database"], target["status"]) == ("prefect", "read")
        first = target["statements"][0]
        assert first["fingerprint"] == "SELECT count(*) FROM scratch.events WHERE payload LIKE $1"
        assert first["calls"] == 20 and first["rows"] == 20
        assert first["mean_seconds"] == pytest.approx(first["total_seconds"] / 20, rel=1e-3)
        assert s.value("postgres_statement_seconds_total", queryid=first["queryid"]) == \
            pytest.approx(first["total_seconds"], rel=1e-3)
        assert s.value("postgres_statement_calls_total", queryid=first["queryid"]) == 20
        # ranked by total time: the scan's first, every other statement after it
        totals = [st["total_seconds"] for st in target["statements"]]
        assert totals == sorted(totals, reverse=True)
        masked = [st["fingerprint"] for st in target["statements"]
                  if st["fingerprint"].startswith("ALTER ROLE")]
        assert masked == ["ALTER ROLE statement_victim PASSWORD ?"]
        landing = (await get(port, "/")).text
        assert 'href="/statements"' in landing
        seen = [(await scrape(port)).text, landing, json.dumps(body)]
    report = await asyncio.to_thread(doctor, pg, "--verbose")
    assert report["statements"]["targets"][0]["statements"][0]["queryid"] == first["queryid"]
    text = await asyncio.to_thread(doctor_text, pg, "--verbose")
    assert "SELECT count(*) FROM scratch.events WHERE payload LIKE $1" in text
    assert "ALTER ROLE statement_victim PASSWORD ?" in text
    seen += [json.dumps(logs, default=str), json.dumps(report), text]
    for where in seen:
        assert SECRET not in where


def doctor_text(pg: LabPostgres, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "exporter", "doctor", *args], capture_output=True, text=True,
        timeout=60,
        env={"PATH": os.environ["PATH"], "PREFECT_PG_EXPORTER_POLL_TIMEOUT_SECONDS": "10",
             "PREFECT_PG_EXPORTER_POSTGRES_DSN": pg.monitor_dsn(),
             "PREFECT_PG_EXPORTER_TOP_STATEMENTS": "500"})
    assert done.returncode in (0, 1), done.stdout + done.stderr
    return done.stdout + done.stderr


async def test_without_pg_stat_statements_an_info_finding_says_how(
        own_postgres: LabPostgres, app: asyncpg.Connection) -> None:
    await app.execute("DROP EXTENSION pg_stat_statements")
    report = await asyncio.to_thread(doctor, own_postgres)
    [found] = findings(report, "pg_stat_statements_unavailable")
    assert found["severity"] == "info"
    assert "pg_stat_statements is not installed" in found["title"]
    assert "CREATE EXTENSION pg_stat_statements" in found["action"]
    # --no-statements: not read, nothing to say
    report = await asyncio.to_thread(doctor, own_postgres, "--no-statements")
    assert findings(report, "pg_stat_statements_unavailable") == []


async def test_statements_are_read_once_a_minute_and_a_poll_stays_two_statements(
        own_postgres: LabPostgres, app: asyncpg.Connection) -> None:
    """pg_stat_statements counts what the exporter's role runs: per poll, the context and the
    activity statements; the ranking and the texts once, on the first poll."""
    source = PostgresSource(parse_target(own_postgres.monitor_dsn(), "test"),
                            statement_timeout_ms=5000, connect_timeout=5, top_transactions=5,
                            hot_tables=["log"], top_statements=10)
    try:
        first = await source.poll()
        assert first.top_statements is not None and first.top_statements.status == "read"
        for _ in range(4):
            again = await source.poll()
            assert again.top_statements is first.top_statements  # not read again
    finally:
        await source.close()
    calls = await app.fetch(
        "SELECT query, sum(calls)::int AS calls FROM pg_stat_statements s "
        "JOIN pg_roles r ON r.oid = s.userid WHERE r.rolname = $1 AND query NOT ILIKE 'SET %' "
        "GROUP BY query", MONITOR_ROLE)
    by_kind = {"context": 0, "activity": 0, "top": 0, "texts": 0}
    others = {}
    for row in calls:
        query = row["query"]
        kind = ("context" if "AS can_read_all_stats" in query else
                "activity" if "idle_apps" in query else
                "top" if "GROUP BY queryid" in query else
                "texts" if "DISTINCT ON (queryid)" in query else "")
        if kind:
            by_kind[kind] += row["calls"]
        else:
            others[query] = row["calls"]
    assert by_kind == {"context": 5, "activity": 5, "top": 1, "texts": 1}
    # asyncpg's own, once per connection (type introspection, its settings): not per poll
    assert max(others.values(), default=0) <= 2, others


async def test_statement_texts_are_read_only_for_queryids_new_to_the_top(
        own_postgres: LabPostgres, app: asyncpg.Connection) -> None:
    """Three reads a minute apart, the top N holding every entry: the first reads every text,
    the second only those of the statements that appeared since (its own two, asyncpg's type
    introspection), the third none, its fingerprints all from the cache."""
    row = await app.fetchrow(
        "SELECT extversion AS version, extnamespace::regnamespace::text AS schema "
        "FROM pg_extension WHERE extname = 'pg_stat_statements'")
    assert row is not None
    extension = dict(row)
    reader = StatementsReader(1000)
    conn = await asyncpg.connect(own_postgres.monitor_dsn())
    try:
        reads = [await reader.read(conn, extension, 1000.0 + 61 * i) for i in range(3)]
    finally:
        await conn.close()
    calls = {row["kind"]: row["calls"] for row in await app.fetch(
        "SELECT CASE WHEN query LIKE '%GROUP BY queryid%' THEN 'top' ELSE 'texts' END AS kind,"
        " sum(calls)::int AS calls FROM pg_stat_statements s JOIN pg_roles r ON r.oid = s.userid"
        " WHERE r.rolname = $1 AND (query LIKE '%GROUP BY queryid%' OR query LIKE "
        "'%DISTINCT ON (queryid)%') GROUP BY 1", MONITOR_ROLE)}
    assert calls == {"top": 3, "texts": 2}
    last = reads[2].statements
    assert any(s.fingerprint.startswith("SELECT queryid, sum(calls)") for s in last)  # 2nd read
    assert all(s.fingerprint for s in last)



async def test_the_ranking_stands_when_the_texts_cannot_be_read(
        own_postgres: LabPostgres, app: asyncpg.Connection) -> None:
    """pg_stat_statements(true) puts every entry's text in a tuplestore before its WHERE: 250
    statements of 20 kB (5 MB, past the default work_mem) go to a temporary file, which
    temp_file_limit refuses. The ranking stands, those statements' fingerprints unknown, and
    the next read asks for them again."""
    padding = " /* " + "x" * 20_000 + " */"
    for columns in range(1, 251):  # 250 queryids: the target lists differ
        await app.execute("SELECT " + ", ".join(["1"] * columns) + padding)
    padded = {r["queryid"] for r in await app.fetch(
        "SELECT queryid FROM pg_stat_statements WHERE query LIKE '%xxxxxxxxxx%'")}
    assert len(padded) == 250
    extension = {"version": await app.fetchval(
        "SELECT extversion FROM pg_extension WHERE extname = 'pg_stat_statements'"),
        "schema": "public"}
    await app.execute(f"ALTER ROLE {MONITOR_ROLE} SET temp_file_limit = '1MB'")
    limited = await asyncpg.connect(own_postgres.monitor_dsn())
    reader = StatementsReader(1000)
    try:
        with pytest.raises(asyncpg.ConfigurationLimitExceededError):  # the fault is real
            await limited.fetch(TEXTS_SQL.format(schema="public"), list(padded))
        first = await reader.read(limited, extension, 1000.0)
        assert first.status == "read"
        shown = {s.queryid: s.fingerprint for s in first.statements}
        assert padded <= set(shown) and not any(shown[q] for q in padded)
    finally:
        await limited.close()
        await app.execute(f"ALTER ROLE {MONITOR_ROLE} RESET temp_file_limit")
    unlimited = await asyncpg.connect(own_postgres.monitor_dsn())
    try:
        second = await reader.read(unlimited, extension, 1061.0)
    finally:
        await unlimited.close()
    shown = {s.queryid: s.fingerprint for s in second.statements}
    assert all(shown[q].startswith("SELECT") for q in padded)



async def test_the_ranking_of_every_entry_stays_in_memory(lab: Lab) -> None:
    """pg_stat_statements(false), the ranking, puts every entry in a tuplestore bounded by
    work_mem (a 512-byte chunk each): 9,000 entries are 4.6 MB, past the default 4 MB, so they
    went to a temporary file, which temp_file_limit refused."""
    pg = lab.postgres("pg-ranking-in-memory", extra_settings={
        "pg_stat_statements.max": "10000", "temp_file_limit": "'1MB'"})
    app = await asyncpg.connect(pg.dsn())
    plain = await asyncpg.connect(pg.monitor_dsn())
    source = PostgresSource(parse_target(pg.monitor_dsn(), "test"), statement_timeout_ms=5000,
                            connect_timeout=10, top_transactions=5, hot_tables=(),
                            top_statements=10)
    try:
        await app.execute("CREATE TABLE t0 (); CREATE TABLE t1 (); CREATE TABLE t2 ();"
                          "CREATE TABLE t3 (); CREATE TABLE t4 (); CREATE TABLE t5 ()")
        for table in range(6):  # 9,000 queryids: the tables and target lists differ
            await app.execute(";".join(f"SELECT {', '.join(['1'] * columns)} FROM t{table}"
                                       for columns in range(1, 1501)))
        with pytest.raises(asyncpg.ConfigurationLimitExceededError):  # the fault is real
            await plain.fetch(TOP_SQL.format(schema="public", total="total_exec_time"), 10)
        top = (await source.poll()).top_statements
        assert top is not None and top.status == "read" and len(top.statements) == 10
    finally:
        await source.close()
        await app.close()
        await plain.close()

# The index of a real Prefect database whose first key is that column: valid, not partial.
INDEX_ON_COLUMN = """
SELECT pg_get_indexdef(i.indexrelid)
FROM pg_index i
JOIN pg_class t ON t.oid = i.indrelid
JOIN pg_namespace n ON n.oid = t.relnamespace
JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = i.indkey[0]
WHERE n.nspname = 'public' AND t.relname = $1 AND a.attname = $2 AND i.indisvalid
  AND i.indpred IS NULL
ORDER BY i.indnatts
LIMIT 1
"""


def plan_nodes(node: dict[str, Any]) -> list[dict[str, Any]]:
    return [node, *(n for child in node.get("Plans", []) for n in plan_nodes(child))]


async def test_the_oldest_row_reads_stay_index_reads_at_a_million_rows(
        own_postgres: LabPostgres, app: asyncpg.Connection, postgres: LabPostgres,
        prefect: LabPrefect) -> None:
    """Each column the exporter reads min() of is indexed in the database the lab's Prefect
    3.8.8 migrated; with that very index over a million rows per table, the read is one index
    endpoint per table (EXPLAIN ANALYZE), as the exporter's role runs it."""
    real = await asyncpg.connect(postgres.dsn())
    try:
        indexes = {t: await real.fetchval(INDEX_ON_COLUMN, t, c) for t, c in OLDEST_COLUMNS}
    finally:
        await real.close()
    assert all(indexes.values()), indexes  # Prefect indexes every one of them
    for table, column in OLDEST_COLUMNS:
        await app.execute(
            f'CREATE TABLE public.{table} (id bigint, "{column}" timestamptz);'
            f'INSERT INTO public.{table} SELECT i, now() - i * interval \'1 second\' '
            "FROM generate_series(1, 1000000) i;"
            f"{indexes[table]};"
            f"ANALYZE public.{table};"
            f'GRANT SELECT ("{column}") ON public.{table} TO {MONITOR_ROLE}')
    source = PostgresSource(parse_target(own_postgres.monitor_dsn(), "test"),
                            statement_timeout_ms=5000, connect_timeout=5, top_transactions=5,
                            hot_tables=[t for t, _ in OLDEST_COLUMNS])
    try:
        snap = await source.poll()
    finally:
        await source.close()
    ages = {r.table: r.age_seconds for r in snap.oldest_rows}
    assert set(ages) == {t for t, _ in OLDEST_COLUMNS}
    for table, seconds in ages.items():
        assert seconds is not None and 1_000_000 - 1 < seconds < 1_000_000 + 300, table
    monitor = await asyncpg.connect(own_postgres.monitor_dsn())
    try:
        [plan] = json.loads(await monitor.fetchval(
            "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + ages_sql(snap.oldest_rows)))
    finally:
        await monitor.close()
    nodes = plan_nodes(plan["Plan"])
    kinds = [n["Node Type"] for n in nodes]
    assert "Seq Scan" not in kinds and "Bitmap Heap Scan" not in kinds, kinds
    scans = [n for n in nodes if n["Node Type"] in ("Index Only Scan", "Index Scan")]
    assert sorted(n["Index Name"] for n in scans) == sorted(
        indexes[t].split()[2] if "UNIQUE" not in indexes[t] else indexes[t].split()[3]
        for t, _ in OLDEST_COLUMNS)
    # one index endpoint each: a handful of pages, not a million rows
    assert all(n["Actual Rows"] <= 1 for n in scans), scans
    assert plan["Plan"]["Shared Hit Blocks"] + plan["Plan"].get("Shared Read Blocks", 0) < 200


async def test_a_locked_table_costs_its_age_not_the_poll(
        own_postgres: LabPostgres, app: asyncpg.Connection,
        start_exporter: StartExporter) -> None:
    """A migration holding ACCESS EXCLUSIVE on log: the exporter's min() waits until its own
    lock_timeout (80% of the poll timeout, here 1.6 s), then the poll goes on without that age,
    and the next try is a minute later: PostgreSQL stays up, nothing else is lost."""
    pg = own_postgres
    await app.execute(LOG_TABLE)
    await insert_old_logs(app, rows=100)
    await app.execute(f'GRANT SELECT ("timestamp") ON public.log TO {MONITOR_ROLE}')
    migration = await asyncpg.connect(pg.dsn())
    try:
        await migration.execute("BEGIN; LOCK TABLE public.log IN ACCESS EXCLUSIVE MODE")
        # log's size is not asked for here: pg_total_relation_size() waits on the lock too
        exporter = await start_exporter(postgres_dsn=pg.monitor_dsn(), hot_tables="flow_run",
                                         poll_interval_seconds="2", poll_timeout_seconds="2")
        s = await wait_for(exporter.port, lambda s: s.find("postgres_up") is not None
                           and bool(s.values("postgres_connections")), "a first poll",
                           timeout=30)
        assert s.value("postgres_up") == 1
        assert s.labelsets("prefect_table_oldest_row_age_seconds") == []
        polls = s.value("prefect_pg_exporter_source_polls_total", source="postgres")
        # two more polls: the age is not tried again within the minute
        s = await wait_for(exporter.port, lambda s: s.value(
            "prefect_pg_exporter_source_polls_total", source="postgres") >= polls + 2,
            "two more polls", timeout=30)
        assert s.value("postgres_up") == 1
        assert sum(s.values("prefect_pg_exporter_source_errors_total", source="postgres")) == 0
    finally:
        await migration.close()
