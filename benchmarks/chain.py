"""What the causal chain (#27) costs, measured in one run on the lab's servers:

1. PgBouncer: one SHOW SERVERS more per poll. The poll (PgBouncerSource.poll(), seven SHOW
   commands) against SHOW SERVERS alone on the same kind of connection, with the pool's server
   connections all busy and clients waiting (the incident the join is for).
2. PostgreSQL: no extra round trip. The statements one poll sends, counted on a quiet database
   and during a lock chain; and ACTIVITY_SQL's read and parse at N backends (medians; since
   #26 the pids come with the sessions that are not idle, a row each, so there is no read
   without them to compare with).

    benchmarks/run chain [--backends 2000] [--rounds 30]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import psycopg

from benchmarks.bench import open_backends
from exporter.config import load
from exporter.pgbouncer.source import PgBouncerSource, parse_servers
from exporter.postgres import source as pgsrc
from exporter.postgres.activity import ACTIVITY_SQL, activity
from lab import incidents
from lab.pgbouncer import LabPgBouncer
from lab.postgres import LabPostgres
from lab.stack import Lab, running_lab


async def median_ms(call: Callable[[], Awaitable[Any]], rounds: int) -> float:
    await call()
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        await call()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


async def pgbouncer_cost(pg: LabPostgres, lab: Lab, rounds: int) -> None:
    with lab.scope() as scope:
        await _pgbouncer_cost(pg, scope.pgbouncer(pg, "pgb", pool_size=20), rounds)


async def _pgbouncer_cost(pg: LabPostgres, bouncer: LabPgBouncer, rounds: int) -> None:
    config = load({"pgbouncer_dsn": bouncer.stats_dsn()}, environ={})
    source = PgBouncerSource(config.pgbouncer_targets[0], connect_timeout=10)
    try:
        async with incidents.pool_exhaustion(pg, bouncer, clients=40, app="bench-pooled"):
            while await incidents.pool_waiting(bouncer) < 20:
                await asyncio.sleep(0.1)
            conn = await psycopg.AsyncConnection.connect(
                bouncer.stats_dsn(), autocommit=True, prepare_threshold=None)
            try:
                async def show_servers() -> None:
                    await (await conn.execute("SHOW SERVERS")).fetchall()

                poll = await median_ms(source.poll, rounds)
                show = await median_ms(show_servers, rounds)
            finally:
                await conn.close()
            snap = await source.poll()
            rows = [dict(zip(("database", "user", "state", "remote_pid", "addr", "port"),
                             (s.database, s.user, s.state, s.remote_pid, s.addr, s.port),
                             strict=True)) for s in snap.servers]
            t = time.perf_counter()
            for _ in range(1000):
                parse_servers(rows)
            parse_us = (time.perf_counter() - t) * 1000
        print(f"\nPgBouncer poll, pool_size 20 all busy, 20 clients waiting "
              f"({len(snap.servers)} server connections), median of {rounds}:")
        print(f"  poll (7 SHOW commands)   {poll:7.2f} ms")
        print(f"  SHOW SERVERS alone       {show:7.2f} ms   ({show / poll:.0%} of the poll)")
        print(f"  parsing its rows         {parse_us:7.2f} us")
    finally:
        await source.close()


class Counting:
    """Stands in for the source's asyncpg connection and counts the statements sent through
    it (asyncpg's Connection has slots: its methods cannot be wrapped in place)."""

    STATEMENTS = ("fetch", "fetchrow", "fetchval", "execute")

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn, self.count = conn, 0

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.conn, name)
        if name not in self.STATEMENTS:
            return attr

        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return await attr(*args, **kwargs)
        return counted


async def statements_per_poll(pg: LabPostgres) -> tuple[int, int]:
    config = load({"postgres_dsn": pg.monitor_dsn()}, environ={})
    source = pgsrc.PostgresSource(config.postgres_targets[0],
                                  statement_timeout_ms=config.statement_timeout_ms,
                                  connect_timeout=10, top_transactions=config.top_transactions,
                                  hot_tables=config.hot_tables)
    try:
        await source.poll()
        assert source._conn is not None
        counter = Counting(source._conn)
        source._conn = counter  # type: ignore[assignment]
        await source.poll()
        quiet = counter.count
        async with incidents.lock_chain(pg, table="scratch.bench_chain", writers=4):
            counter.count = 0
            await source.poll()
            chained = counter.count
        return quiet, chained
    finally:
        await source.close()


async def activity_cost(pg: LabPostgres, backends: int, rounds: int) -> None:
    conns = await open_backends(pg, backends)
    monitor = await asyncpg.connect(pg.monitor_dsn())
    try:
        times = []
        top = load({"postgres_dsn": pg.monitor_dsn()}, environ={}).top_transactions
        for _ in range(rounds):
            t = time.perf_counter()
            rows = await monitor.fetch(ACTIVITY_SQL)
            times.append(time.perf_counter() - t)
        t = time.perf_counter()
        for _ in range(rounds):  # what the snapshot does with them: group_of()'s index
            read = activity(rows, top, 20)
            index = {pid: g for g, pids in zip(read.groups, read.group_pids, strict=True)
                     for pid in pids}
        parse = (time.perf_counter() - t) / rounds * 1000
        # Since #26 the sessions that are not idle are a row each: their pids come with them,
        # and there is no read without them to compare with (#27's figures were made then).
        print(f"\nPostgreSQL activity read at {backends} backends (5% idle in transaction, 5% "
              f"active, the rest idle), median of {rounds}:")
        print(f"  the read                            {statistics.median(times) * 1000:7.2f} ms")
        print(f"  parsing the rows and indexing the {len(index)} pids listed: {parse:.2f} ms")
    finally:
        await monitor.close()
        for conn in conns:
            conn.terminate()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backends", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    with running_lab("prefect-pg-bench-chain-") as lab:
        pg = lab.postgres("pg", stop_mode="immediate", max_connections=args.backends + 100,
                          extra_settings={"shared_buffers": "256MB"})
        quiet, chained = await statements_per_poll(pg)
        print(f"PostgreSQL statements per poll: {quiet} on a quiet database, {chained} during "
              "a lock chain (the join adds none)")
        await pgbouncer_cost(pg, lab, args.rounds)
        await activity_cost(pg, args.backends, args.rounds)


if __name__ == "__main__":
    asyncio.run(main())
