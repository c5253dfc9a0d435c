"""A big Prefect database's failures, reproduced on a real PostgreSQL 15 (#25): a failed
CREATE UNIQUE INDEX CONCURRENTLY, a build in progress, a table far ahead of its statistics,
a deadlock between two sessions. Each counted by the exporter and named by the doctor."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator

import asyncpg
import pytest

from lab.common import LabError
from lab.postgres import LabPostgres
from tests.helpers import StartExporter, wait_for, wait_for_value

pytestmark = pytest.mark.lab


def doctor(pg: LabPostgres, *args: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-m", "exporter", "doctor", "--format", "json", *args],
        capture_output=True, text=True, timeout=60,
        env={"PATH": os.environ["PATH"], "PREFECT_PG_EXPORTER_POLL_TIMEOUT_SECONDS": "10",
             "PREFECT_PG_EXPORTER_POSTGRES_DSN": pg.monitor_dsn()})
    assert done.returncode in (0, 1), done.stdout + done.stderr
    report: dict[str, object] = json.loads(done.stdout)
    return report


def findings(report: dict[str, object], check: str) -> list[dict[str, str]]:
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


async def test_rows_inserted_with_autovacuum_off_make_stale_statistics(
        own_postgres: LabPostgres, app: asyncpg.Connection,
        start_exporter: StartExporter) -> None:
    """30,000 log rows 40 days old, inserted into a log table autovacuum may not touch."""
    pg = own_postgres
    await app.execute(
        'CREATE TABLE scratch.log (id bigserial PRIMARY KEY, "timestamp" timestamptz NOT NULL,'
        " message text) WITH (autovacuum_enabled = false);"
        'INSERT INTO scratch.log ("timestamp", message) '
        "SELECT now() - interval '40 days' + i * interval '1 ms', 'line ' || i "
        "FROM generate_series(1, 30000) i")
    exporter = await start_exporter(postgres_dsn=pg.monitor_dsn())
    s = await wait_for(exporter.port, lambda s: (s.find(
        "postgres_table_modified_since_analyze_rows", schema="scratch", table="log") or 0)
        >= 30_000, "30,000 rows modified since analyze", timeout=30)
    assert s.value("postgres_table_last_analyze_timestamp_seconds", schema="scratch",
                   table="log") == 0
    report = await asyncio.to_thread(doctor, pg)
    [found] = findings(report, "stale_statistics")
    assert found["title"].startswith("scratch.log: 30000 rows changed since its last ANALYZE")
    assert "ANALYZE scratch.log;" in found["action"]
    assert "ALTER TABLE scratch.log RESET (autovacuum_enabled)" in found["action"]
    assert "autovacuum_enabled=false" in " ".join(found["evidence"])
    # analyzed: the counter drops to 0 and the time of the analyze shows
    await app.execute("ANALYZE scratch.log")
    s = await wait_for(exporter.port, lambda s: s.find(
        "postgres_table_modified_since_analyze_rows", schema="scratch", table="log") == 0,
        "statistics fresh after ANALYZE", timeout=30)
    assert s.value("postgres_table_last_analyze_timestamp_seconds", schema="scratch",
                   table="log") > 0
    assert findings(await asyncio.to_thread(doctor, pg), "stale_statistics") == []


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
