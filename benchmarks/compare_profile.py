"""benchmarks/compare.py's profiling: our poll against the same SQL bare (the floor), and
cProfile's top functions of our poll and of a render."""

from __future__ import annotations

import cProfile
import pstats
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
import psycopg

from benchmarks.bench import bare_sql, databases
from benchmarks.compare_procs import SHOWS, on_cpu_seconds
from exporter.collector import ExporterCollector, Exposition
from exporter.config import load
from exporter.diagnosis import diagnose
from exporter.metricspec import MetricOptions
from exporter.pgbouncer.source import PgBouncerSource
from exporter.poller import SourceState
from exporter.postgres.metrics import postgres_families
from exporter.postgres.snapshot import PostgresSnapshot
from exporter.postgres.source import PostgresSource
from lab.pgbouncer import LabPgBouncer
from lab.postgres import LabPostgres

# ---- the floor ----------------------------------------------------------------------------------

async def interleave(ours: Callable[[], Awaitable[object]], bare: Callable[[], Awaitable[object]],
                     rounds: int) -> tuple[float, float, float, float]:
    """Median wall and CPU (this process) of ours and of bare, interleaved so drift on the
    machine hits both alike: (ours wall, bare wall, ours CPU, bare CPU)."""
    await ours()
    await bare()
    walls: tuple[list[float], list[float]] = ([], [])
    cpus: tuple[list[float], list[float]] = ([], [])
    for _ in range(rounds):
        for i, call in enumerate((ours, bare)):
            wall, cpu = time.perf_counter(), time.process_time()
            await call()
            walls[i].append(time.perf_counter() - wall)
            cpus[i].append(time.process_time() - cpu)
    return (statistics.median(walls[0]), statistics.median(walls[1]),
            statistics.median(cpus[0]), statistics.median(cpus[1]))



def postgres_source(pg: LabPostgres, fold: bool = True) -> PostgresSource:
    """The source as the exporter builds it at its defaults; fold=False: with nothing folded
    in SQL (every application's idle sessions a group of their own)."""
    config = load({"postgres_dsn": pg.monitor_dsn()}, environ={})
    return PostgresSource(config.postgres_targets[0],
                          statement_timeout_ms=config.statement_timeout_ms, connect_timeout=10,
                          top_transactions=config.top_transactions, hot_tables=config.hot_tables,
                          label_top_n=config.label_top_n if fold else None)


async def postgres_floor(pg: LabPostgres, rounds: int) -> tuple[float, float, float, float]:
    config = load({"postgres_dsn": pg.monitor_dsn()}, environ={})
    source = postgres_source(pg)
    bare = await asyncpg.connect(pg.monitor_dsn(),
                                 server_settings={"application_name": "compare-floor"})
    try:
        sized = await databases(bare)
        return await interleave(source.poll, lambda: bare_sql(
            bare, list(config.hot_tables), sized), rounds)
    finally:
        await bare.close()
        await source.close()


# What any exporter pays to read the sessions once: pg_stat_get_activity() builds every
# backend's row (looking each one's PGPROC up by pid, a scan of the process array: quadratic in
# the backends), whatever the SQL around it keeps. postgres_exporter's defaults read it twice a
# scrape (pg_stat_activity, pg_stat_replication); ours once a poll.
SESSIONS_READ_SQL = "SELECT count(*) FROM pg_stat_get_activity(NULL)"


async def sessions_read_cpu(pg: LabPostgres, reads: int) -> float:
    """The database CPU of one bare read of the sessions, the mean over `reads` reads: its
    backend's time on a CPU (schedstat: ticks are coarser than a read at a hundred backends)."""
    conn = await asyncpg.connect(pg.monitor_dsn(),
                                 server_settings={"application_name": "compare-floor"})
    try:
        pid = await conn.fetchval("SELECT pg_backend_pid()")
        await conn.fetchval(SESSIONS_READ_SQL)
        before = on_cpu_seconds(pid)
        for _ in range(reads):
            await conn.fetchval(SESSIONS_READ_SQL)
        return (on_cpu_seconds(pid) - before) / reads
    finally:
        await conn.close()


async def pgbouncer_floor(bouncer: LabPgBouncer, rounds: int
                          ) -> tuple[float, float, float, float]:
    config = load({"pgbouncer_dsn": bouncer.stats_dsn()}, environ={})
    source = PgBouncerSource(config.pgbouncer_targets[0], connect_timeout=10)
    bare = await psycopg.AsyncConnection.connect(bouncer.stats_dsn(), autocommit=True,
                                                 prepare_threshold=None)

    async def shows() -> None:
        for what in SHOWS:
            await (await bare.execute(f"SHOW {what}")).fetchall()

    try:
        return await interleave(source.poll, shows, rounds)
    finally:
        await bare.close()
        await source.close()


# ---- 4. profiles --------------------------------------------------------------------------------

# Frames of the benchmark itself and of the event loop's plumbing: not the exporter's cost.
NOT_OURS = ("benchmarks/compare", "asyncio/base_events.py", "asyncio/events.py",
            "selectors.py", "_contextvars.Context", "builtins.exec")


def print_profile(title: str, profile: cProfile.Profile, wall: float, top: int) -> None:
    # the raw table behind print_stats(); typeshed does not declare it
    entries = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    print(f"\n{title}: {wall * 1000:.0f} ms profiled (cProfile, which slows Python code down);"
          f" top {top} by cumulative time, share of the profiled wall time, own time:")
    ranked = sorted(entries.items(), key=lambda item: -item[1][3])
    shown = 0
    for (path, line, func), (_, calls, own, cum, _) in ranked:
        where = f"{path.split('site-packages/')[-1].replace(str(Path.cwd()) + '/', '')}:{line}"
        if any(part in where or part in func for part in NOT_OURS):
            continue
        name = "waiting on the database (epoll)" if "epoll" in func else func
        print(f"  {cum * 1000:8.1f} ms {cum / wall:6.1%}  own {own * 1000:7.1f} ms "
              f"{calls:>7}x  {name}  ({where})")
        shown += 1
        if shown == top:
            break


async def profile_postgres(pg: LabPostgres, rounds: int) -> None:
    source = postgres_source(pg)  # at the defaults: idle sessions beyond the top 20 folded
    await source.poll()
    profile = cProfile.Profile()
    started = time.perf_counter()
    profile.enable()
    for _ in range(rounds):
        list(postgres_families(await source.poll(), MetricOptions(label_top_n=20)))
    profile.disable()
    wall = time.perf_counter() - started
    await source.close()
    print_profile(f"Profile: {rounds} x (PostgresSource.poll + postgres_families), defaults",
                  profile, wall, 14)
    whole = postgres_source(pg, fold=False)  # every application kept: nothing folded in SQL
    try:
        snap = await whole.poll()
    finally:
        await whole.close()
    assert isinstance(snap, PostgresSnapshot)
    render_profile(whole, snap, rounds)


def render_profile(source: PostgresSource, snap: PostgresSnapshot, rounds: int) -> None:
    """What the exporter does after each poll (diagnose, then render), with every application
    kept as its own series (--label-top-n 5000), as benchmarks/bench.py serves it."""
    state = SourceState(source, snapshot=snap, up=True, last_success=time.time(), polls=1)
    collector = ExporterCollector([state], MetricOptions(label_top_n=5000))
    collector.update([snap], [])
    exposition = Exposition(collector)
    exposition.render()
    series = sum(1 for line in exposition.body.splitlines() if not line.startswith(b"#"))
    profile = cProfile.Profile()
    started = time.perf_counter()
    profile.enable()
    for _ in range(rounds):
        collector.update([snap], diagnose([snap]))
        exposition.render()
    profile.disable()
    wall = time.perf_counter() - started
    print_profile(f"Profile: {rounds} x (diagnose + Exposition.render), {series} series "
                  f"({len(exposition.body) / 1024:.0f} KiB)", profile, wall, 14)

