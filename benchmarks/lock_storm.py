"""A lock storm: thousands of sessions waiting behind one ACCESS EXCLUSIVE holder, and what the
exporter's read of who blocks whom costs the database then.

    .venv/bin/python -m benchmarks.lock_storm [--waiters 1000 3000] [--reads 10]

pg_blocking_pids() takes every partition lock of the lock manager and walks the holders and
waiters of the lock waited on: for N waiters on one lock, O(N) a call. For each number of
waiters, a lab PostgreSQL with the holder and the waiters (INSERTs queued behind a LOCK TABLE),
then, interleaved, median of --reads each, the database CPU (/proc/<pid>/schedstat) of:

- the baseline: the activity read, then pg_blocking_pids() for every waiter (what the exporter
  did until the fifth session of 2026-12-05, inside its activity statement): O(N²);
- the exporter's: the activity read, then BLOCKERS_SQL for the MAX_BLOCKERS_ASKED longest
  waits (exporter/postgres/activity.py): O(100 N).

Prints both and their ratio, and checks that the exporter's read names the holder as the
chain's root, with every waiter counted blocked (exit 1 otherwise).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from collections.abc import Awaitable, Callable

import asyncpg

from benchmarks.compare_procs import on_cpu_seconds
from exporter.postgres.activity import ACTIVITY_SQL, MAX_BLOCKERS_ASKED, activity, read_blocked
from exporter.postgres.involved import explicit_pids
from lab.postgres import LabPostgres
from lab.stack import running_lab

EVERY_WAITER_SQL = """
SELECT pid, pg_blocking_pids(pid) AS blocked_by FROM pg_stat_activity
WHERE wait_event_type = 'Lock'
"""


async def storm(pg: LabPostgres, waiters: int, reads: int) -> bool:
    holder = await asyncpg.connect(pg.dsn())
    await holder.execute("CREATE TABLE storm (id int)")
    await holder.execute("BEGIN; LOCK TABLE storm IN ACCESS EXCLUSIVE MODE")
    gate = asyncio.Semaphore(50)

    async def connect() -> asyncpg.Connection:
        async with gate:
            return await asyncpg.connect(pg.dsn())

    conns = await asyncio.gather(*(connect() for _ in range(waiters)))
    queued = [asyncio.create_task(c.execute("INSERT INTO storm VALUES (1)")) for c in conns]
    monitor = await asyncpg.connect(pg.monitor_dsn())
    try:
        while await monitor.fetchval("SELECT count(*) FROM pg_stat_activity "
                                     "WHERE wait_event_type = 'Lock'") < waiters:
            await asyncio.sleep(0.2)
        pid = await monitor.fetchval("SELECT pg_backend_pid()")

        async def every_waiter() -> None:
            await monitor.fetch(ACTIVITY_SQL)
            await monitor.fetch(EVERY_WAITER_SQL)

        async def longest() -> None:
            await read_blocked(monitor, activity(await monitor.fetch(ACTIVITY_SQL), 5,
                                                 20).lock_waits)

        calls: tuple[Callable[[], Awaitable[None]], ...] = (every_waiter, longest)
        costs: tuple[list[float], list[float]] = ([], [])
        for _ in range(reads):
            for call, cost in zip(calls, costs, strict=True):
                before = on_cpu_seconds(pid) * 1000
                await call()
                cost.append(on_cpu_seconds(pid) * 1000 - before)
        baseline, ours = map(statistics.median, costs)
        blocked = await read_blocked(monitor, activity(await monitor.fetch(ACTIVITY_SQL), 5,
                                                       20).lock_waits)
        holder_pid = await holder.fetchval("SELECT pg_backend_pid()")
        named = len(blocked) == waiters and explicit_pids(blocked)[0] == holder_pid
        print(f"  {waiters:,} waiting: pg_blocking_pids() for every waiter {baseline:8.2f} ms "
              f"of database CPU; for the {MAX_BLOCKERS_ASKED} longest waits {ours:8.2f} ms; "
              f"ratio {ours / baseline:.3f}x; the holder named, {len(blocked):,} blocked: "
              f"{'yes' if named else 'NO'}", flush=True)
        return named
    finally:
        await holder.execute("ROLLBACK")
        await asyncio.gather(*queued, return_exceptions=True)
        for conn in (monitor, holder, *conns):
            conn.terminate()


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--waiters", type=int, nargs="+", default=[1000, 3000])
    parser.add_argument("--reads", type=int, default=10)
    args = parser.parse_args()
    print(f"A lock storm: the activity read, then who blocks the waiters, median of "
          f"{args.reads} reads each, interleaved:")
    ok = True
    for waiters in args.waiters:
        with running_lab("ppe-storm-") as lab:
            pg = lab.postgres("pg", stop_mode="immediate", max_connections=waiters + 50)
            ok = await storm(pg, waiters, args.reads) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
