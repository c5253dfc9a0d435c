"""A big Prefect database (#25): the PostgreSQL poll's database CPU at 10,000 vs 1,000,000 rows
per hot table, with 5,000 pg_stat_statements entries, against today's poll (the statements of
commit 01fcddf, before #25), measured in the same run.

    .venv/bin/python -m benchmarks.bigdb [--small 10000 --large 1000000 --rounds 300]

Database CPU: utime + stime of the backend that serves the reads, from /proc/<pid>/stat (10 ms
ticks), over many rounds, per round. The six tables carry the index Prefect has on the column
the exporter reads (tests/lab/test_bigdb_lab.py proves those against Prefect 3.8.8's own
migrations), and the exporter's role has its opt-in column grants, so every read runs:

- today's poll: CONTEXT_SQL and ACTIVITY_SQL as they were, bare through asyncpg;
- this poll: PostgresSource.poll(), its once-a-minute reads served from their cache;
- the once-a-minute reads alone, each bare: pg_stat_statements' top 10 (no text), the texts
  of 10 new queryids (PostgreSQL reads the text file whole), the six oldest rows;
- the RSS of a fresh exporter process (lab/once.py, PostgreSQL only, top 10 statements, these
  hot tables) after five polls, against the small size's.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg

from benchmarks.compare_kinds import rss_mb
from benchmarks.compare_procs import cpu_seconds
from exporter.dsn import parse_target
from exporter.postgres import source as pgsrc
from exporter.postgres.activity import ACTIVITY_SQL
from exporter.postgres.oldest import OLDEST_COLUMNS, ages_sql
from exporter.postgres.snapshot import OldestRow
from exporter.postgres.statements import TEXTS_SQL, TOP_SQL
from lab.postgres import MONITOR_ROLE, LabPostgres
from lab.stack import running_lab

BEFORE = "01fcddf"  # the last commit before #25
ROOT = Path(__file__).resolve().parents[1]
# The index Prefect has on each column read (names as its migrations give them).
INDEXES = {"flow_run": "ix_flow_run__end_time_desc ON public.flow_run (end_time DESC)",
           "task_run": "ix_task_run__end_time_desc ON public.task_run (end_time DESC)",
           "log": 'ix_log__timestamp ON public.log ("timestamp")',
           "artifact": "ix_artifact__updated ON public.artifact (updated)",
           "events": "ix_events__occurred ON public.events (occurred)",
           "event_resources": "ix_event_resources__updated ON public.event_resources (updated)"}
HOT_TABLES = [t for t, _ in OLDEST_COLUMNS]
RSS_POLLS = 5


def before_statements() -> tuple[str, list[str]]:
    """Today's CONTEXT_SQL and its setting names, from the source file at BEFORE."""
    text = subprocess.run(["git", "show", f"{BEFORE}:exporter/postgres/source.py"], cwd=ROOT,
                          capture_output=True, text=True, check=True).stdout
    namespace: dict[str, Any] = {"__name__": "before_25"}
    exec(compile(text, f"{BEFORE}:exporter/postgres/source.py", "exec"), namespace)
    return namespace["CONTEXT_SQL"], namespace["SETTING_NAMES"]


async def create_tables(conn: asyncpg.Connection) -> None:
    for table, column in OLDEST_COLUMNS:
        await conn.execute(
            f'CREATE TABLE public.{table} (id bigint, "{column}" timestamptz, payload text);'
            f"CREATE INDEX {INDEXES[table]};"
            f'GRANT SELECT ("{column}") ON public.{table} TO {MONITOR_ROLE}')


async def grow(conn: asyncpg.Connection, rows: int) -> None:
    """Every table to `rows` rows, then analyzed and vacuumed (a settled table)."""
    for table, _ in OLDEST_COLUMNS:
        have = await conn.fetchval(f"SELECT count(*) FROM public.{table}")
        await conn.execute(
            f"INSERT INTO public.{table} SELECT i, now() - i * interval '1 second', "
            f"md5(i::text) FROM generate_series({have + 1}, {rows}) i")
        await conn.execute(f"VACUUM (ANALYZE) public.{table}")


async def fill_statements(pg: LabPostgres, entries: int) -> None:
    """`entries` distinct statements in pg_stat_statements (an IN list of each length over 50
    tables: each its own queryid), run by the application's role."""
    conn = await asyncpg.connect(pg.dsn())
    try:
        await conn.execute("SELECT pg_stat_statements_reset()")
        for t in range(50):
            await conn.execute(f"CREATE TABLE IF NOT EXISTS scratch.s{t} (id int)")
        for i in range(entries - 60):
            items = ", ".join(str(k) for k in range(i // 50 + 1))
            await conn.execute(f"SELECT id FROM scratch.s{i % 50} WHERE id IN ({items})")
        count = await conn.fetchval("SELECT count(*) FROM pg_stat_statements")
        print(f"pg_stat_statements: {count} entries", flush=True)
    finally:
        await conn.close()


async def backend_cpu_per_round(conn: asyncpg.Connection, rounds: int,
                                one: Callable[[], Awaitable[object]]) -> float:
    pid = conn.get_server_pid()
    await one()  # warm: plans, caches
    before = cpu_seconds(pid)
    for _ in range(rounds):
        await one()
    return (cpu_seconds(pid) - before) / rounds


async def measure(pg: LabPostgres, rounds: int) -> dict[str, float]:
    context_before, settings_before = before_statements()
    bare = await asyncpg.connect(pg.monitor_dsn())
    source = pgsrc.PostgresSource(parse_target(pg.monitor_dsn(), "bench"),
                                  statement_timeout_ms=30_000, connect_timeout=10,
                                  top_transactions=5, hot_tables=HOT_TABLES, top_statements=10)
    try:
        out: dict[str, float] = {}

        async def today() -> None:
            await bare.fetchrow(context_before, settings_before, HOT_TABLES)
            await bare.fetch(ACTIVITY_SQL)

        out["today"] = await backend_cpu_per_round(bare, rounds, today)
        first = await source.poll()  # connects, and makes the once-a-minute reads
        assert source._conn is not None  # the benchmark reads its backend
        out["poll"] = await backend_cpu_per_round(source._conn, rounds, source.poll)
        schema = "public"
        top = TOP_SQL.format(schema=schema, total="total_exec_time")
        rows = await bare.fetch(top, 10)
        ids = [r["queryid"] for r in rows]
        out["top"] = await backend_cpu_per_round(bare, rounds, lambda: bare.fetch(top, 10))
        texts = TEXTS_SQL.format(schema=schema)
        out["texts"] = await backend_cpu_per_round(bare, max(rounds // 5, 20),
                                                   lambda: bare.fetch(texts, ids))
        readable = [r for r in first.oldest_rows if r.readable]
        assert len(readable) == len(OLDEST_COLUMNS), first.oldest_rows
        ages = ages_sql([OldestRow(r.schema, r.table, r.column, True) for r in readable])
        out["oldest"] = await backend_cpu_per_round(bare, rounds, lambda: bare.fetch(ages))
        started = time.perf_counter()
        for _ in range(20):
            await bare.fetch(top, 10)
            await bare.fetch(texts, ids)
        out["minute_wall"] = (time.perf_counter() - started) / 20
        return out
    finally:
        await source.close()
        await bare.close()


def report(size: int, m: dict[str, float]) -> None:
    minute = m["top"] + m["texts"] + m["oldest"]
    print(f"\n{size:,} rows per hot table, 5,000 pg_stat_statements entries "
          "(database CPU per round):")
    print(f"  today's poll (before #25)        {m['today'] * 1000:7.2f} ms")
    print(f"  this poll                        {m['poll'] * 1000:7.2f} ms   "
          f"({m['poll'] / m['today']:.2f}x)")
    print(f"  once a minute: top 10 (no text)  {m['top'] * 1000:7.2f} ms")
    print(f"  once a minute: 10 texts          {m['texts'] * 1000:7.2f} ms")
    print(f"  once a minute: six oldest rows   {m['oldest'] * 1000:7.2f} ms")
    steady = m["poll"] + (m["top"] + m["oldest"]) / 4
    print(f"  per poll at 15 s, texts unchanged {steady * 1000:6.2f} ms   "
          f"({steady / m['today']:.2f}x today's)")
    print(f"  per poll at 15 s, texts each read {(m['poll'] + minute / 4) * 1000:6.2f} ms   "
          f"({(m['poll'] + minute / 4) / m['today']:.2f}x today's: a new top 10 every minute)")
    print(f"  top 10 and texts, wall time      {m['minute_wall'] * 1000:7.2f} ms")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--large", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--statements", type=int, default=5000)
    args = parser.parse_args()
    with running_lab("prefect-pg-bigdb-") as lab:
        pg = lab.postgres("pg", stop_mode="immediate", extra_settings={
            "shared_buffers": "256MB", "pg_stat_statements.max": "5000"})
        conn = await asyncpg.connect(pg.dsn())
        await create_tables(conn)
        rss: dict[int, float] = {}
        for size in (args.small, args.large):
            started = time.monotonic()
            await grow(conn, size)
            await fill_statements(pg, args.statements)
            print(f"{size:,} rows per table in {time.monotonic() - started:.0f}s", flush=True)
            report(size, await measure(pg, args.rounds))
            # the exporter's own memory with these reads: a fresh process, PostgreSQL only
            rss[size] = rss_mb({"postgres_dsn": pg.monitor_dsn(), "top_statements": "10",
                                "hot_tables": ",".join(HOT_TABLES)}, RSS_POLLS)
            print(f"  RSS of a fresh exporter after {RSS_POLLS} polls {rss[size]:6.1f} MB   "
                  f"({rss[size] - rss[args.small]:+.1f} MB vs {args.small:,} rows)")
        await conn.close()


if __name__ == "__main__":
    asyncio.run(main())
