"""Side by side: this exporter and the exporters people run today, in one run on one machine.

Starts the lab (PostgreSQL 15 with room for thousands of backends, PgBouncer in transaction
pooling in front of it) and prints, all measured in this run:

1. PostgreSQL at 100 / 1,000 / 2,000 client backends (opened as benchmarks/bench.py does):
   prometheus-community postgres_exporter (Debian's prometheus-postgres-exporter, default
   collectors, as the pg_monitor role) and this exporter, each alone: scrape latency p50/p99,
   CPU per scrape (ours: per poll, and per scrape), CPU of the database backends per scrape or
   poll, RSS, sessions held on the database; our poll duration; and the floor, our SQL bare
   through asyncpg, with our poll as a ratio to it.
2. Incidents reproduced one at a time in a quiet lab, and whether each exporter's /metrics
   identifies them: a metric whose value says so, and did not say so just before.
3. PgBouncer: the PgBouncer exporters available here (Debian's prometheus-pgbouncer-exporter;
   spreaker's prometheus-pgbouncer-exporter from PyPI when its virtualenv exists) and this
   exporter, the same figures plus logins and connections held on PgBouncer (SHOW CLIENTS), the
   floor through psycopg, and the pool-exhaustion incident.
4. cProfile's top functions of our PostgreSQL poll (poll + postgres_families) at the largest
   size, and of a render (diagnose + Exposition.render) with thousands of series.

It installs nothing: a missing exporter is skipped with the command that installs it.

This module only composes the parts, one module per job: compare_procs (the exporters'
processes, /proc accounting, scrape and poll timing), compare_incidents (the incidents and
what counts as detecting them), compare_report (what is printed) and compare_profile (the
floor and cProfile).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import time

import asyncpg
import psycopg

from benchmarks.bench import open_backends
from benchmarks.compare_incidents import incidents, pool_incident
from benchmarks.compare_procs import (
    PG_EXPORTER,
    Figures,
    Run,
    Running,
    bouncer_version,
    login_counter,
    measure_ours,
    measure_theirs,
    pg_sessions,
    pgb_candidates,
    pgb_clients,
    start_ours,
    start_postgres_exporter,
)
from benchmarks.compare_profile import pgbouncer_floor, postgres_floor, profile_postgres
from benchmarks.compare_report import header, print_figures, print_floor, print_ratios
from lab.common import LabError, lab_root
from lab.pgbouncer import ADMIN_PASSWORD, ADMIN_USER, start_pgbouncer
from lab.postgres import start_postgres


async def postgres_at(run: Run, n: int) -> None:
    args = run.args
    started = time.monotonic()
    conns = await open_backends(run.pg, n)
    print(f"\nAt {n:,} client backends (opened in {time.monotonic() - started:.1f}s; 5% idle "
          "in transaction, 5% in pg_sleep):", flush=True)
    try:
        theirs = None
        if shutil.which(PG_EXPORTER):
            running = start_postgres_exporter(run.procs, run.root, run.pg)
            theirs = await measure_theirs(running, pg_sessions(run.observer), args.scrapes)
            run.procs.stop(running)
        running = start_ours(run.procs, run.root, args.interval,
                             postgres_dsn=run.pg.monitor_dsn())
        ours = await measure_ours(running, "postgres", pg_sessions(run.observer), args.polls,
                                  args.our_scrapes, args.interval)
        run.procs.stop(running)
        print_figures([f for f in (theirs, ours) if f is not None], "DB")
        if theirs is not None:
            print_ratios(ours, theirs, "DB")
        print_floor("PostgresSource.poll", await postgres_floor(run.pg, args.rounds),
                    args.rounds)
        if args.profile and n == max(args.backends):
            await profile_postgres(run.pg, args.rounds)
    finally:
        for conn in conns:
            conn.terminate()
        await drop_backends(run.observer)


async def drop_backends(observer: asyncpg.Connection) -> None:
    """The pg_sleep backends do not notice their client left: end them all, and wait."""
    query = "FROM pg_stat_activity WHERE application_name LIKE 'bench-app-%'"
    await observer.execute(f"SELECT pg_terminate_backend(pid) {query}")
    deadline = time.monotonic() + 60
    while await observer.fetchval(f"SELECT count(*) {query}") and time.monotonic() < deadline:
        await asyncio.sleep(0.2)


async def pgbouncer_section(run: Run) -> None:
    args, bouncer = run.args, run.bouncer
    print(f"\nPgBouncer {bouncer_version(bouncer)} (transaction pooling, pool_size "
          f"{bouncer.pool_size}), quiet:")
    observer = await psycopg.AsyncConnection.connect(
        bouncer.dsn(ADMIN_USER, ADMIN_PASSWORD, "pgbouncer"), autocommit=True,
        prepare_threshold=None)
    logins = login_counter(bouncer)
    pid = int((bouncer.root / "pgbouncer.pid").read_text().split()[0])
    rows: list[Figures] = []
    started: dict[str, Running] = {}
    failed: dict[str, str] = {}
    try:
        for key, starter, why in pgb_candidates():
            if starter is None:
                print(f"  skipped {key}: {why}")
                failed[key] = why
                continue
            try:
                running = starter(run.procs, run.root, bouncer)
            except LabError as exc:
                print(f"  {key}: does not start against PgBouncer {bouncer_version(bouncer)}: "
                      f"{exc}")
                failed[key] = f"does not start ({str(exc).split(': ', 1)[-1]})"
                continue
            rows.append(await measure_theirs(running, pgb_clients(observer, pid),
                                             args.scrapes, logins))
            started[key] = running
            run.procs.stop(running)
        ours = start_ours(run.procs, run.root, args.interval, pgbouncer_dsn=bouncer.stats_dsn())
        rows.append(await measure_ours(ours, "pgbouncer", pgb_clients(observer, pid),
                                       args.polls, args.our_scrapes, args.interval, logins))
        run.procs.stop(ours)
    finally:
        await observer.close()
    print_figures(rows, "PgBouncer")
    for theirs in rows[:-1]:
        print_ratios(rows[-1], theirs, "PgBouncer")
    print_floor("PgBouncerSource.poll", await pgbouncer_floor(bouncer, args.rounds),
                args.rounds)
    await pool_incident(run, started, failed)



def sizes(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", type=sizes, default=[100, 1000, 2000],
                        help="client backend counts, comma-separated (default 100,1000,2000)")
    parser.add_argument("--scrapes", type=int, default=300,
                        help="scrapes of each collect-on-scrape exporter")
    parser.add_argument("--our-scrapes", type=int, default=2000,
                        help="scrapes of ours (cheap: more of them to measure its CPU above "
                             "the 10 ms tick)")
    parser.add_argument("--polls", type=int, default=40,
                        help="polls of ours watched for their duration, then for CPU")
    parser.add_argument("--interval", type=float, default=0.5,
                        help="our poll interval while measured (seconds)")
    parser.add_argument("--rounds", type=int, default=20, help="floor and profile rounds")
    parser.add_argument("--settle", type=float, default=3.0,
                        help="seconds between an incident's start and the scrape")
    parser.add_argument("--no-profile", dest="profile", action="store_false")
    return parser.parse_args()



async def main() -> None:
    args = parse_args()
    root = lab_root("prefect-pg-compare-")
    pg = start_postgres(root / "postgres", max_connections=max(args.backends) + 100,
                        extra_settings={"shared_buffers": "256MB"})
    bouncer = start_pgbouncer(root / "pgbouncer", pg)
    observer = await asyncpg.connect(pg.dsn(),
                                     server_settings={"application_name": "compare-observer"})
    run = Run(args, root, pg, bouncer, observer)
    started, load = time.monotonic(), os.getloadavg()[0]
    try:
        header(run)
        for n in args.backends:
            await postgres_at(run, n)
        await incidents(run)
        await pgbouncer_section(run)
        print(f"\n(whole run {time.monotonic() - started:.0f}s; 1-minute load average "
              f"{load:.2f} at the start, {os.getloadavg()[0]:.2f} at the end)")
    finally:
        run.procs.stop_all()
        observer.terminate()
        bouncer.stop()
        pg.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
