"""Side by side: this exporter and the exporters people run today, in one run on one machine.

Starts the lab (PostgreSQL 15 with room for thousands of backends, PgBouncer in transaction
pooling in front of it) and prints, all measured in this run:

1. PostgreSQL at 100 / 1,000 / 2,000 / 5,000 client backends (opened as benchmarks/bench.py
   does): prometheus-community postgres_exporter (Debian's prometheus-postgres-exporter 0.11.1,
   as the pg_monitor role) in two setups, its defaults and "emulated current" (the same binary
   running, through --extend.query-path, the SQL of the current release's stat_activity with
   wait-event labels, of the opt-in long_running_transactions collector and of the proposed
   pg_blocked / pg_oldest_blocked collectors: benchmarks/postgres_exporter_current.yaml), and
   this exporter, each alone: scrape latency p50/p99, CPU per scrape (ours: per poll, and per
   scrape), CPU of the database backends per scrape or poll, RSS, sessions held on the
   database, series exported; our poll duration; and two floors: our SQL bare through asyncpg,
   with our poll as a ratio to it, and the database CPU of one bare read of the sessions
   (pg_stat_get_activity, which every exporter of pg_stat_activity pays), as a ratio of each
   scrape of theirs and of our poll.
2. Incidents reproduced one at a time with lab/incidents.py in a quiet lab (a lock chain, a
   stalled COPY, a duplicated LISTEN, a long statement), and whether each exporter's /metrics
   identifies them: a sign (metric, labels, value) that holds during the incident and did not
   just before, evaluated on every exporter's real output; when none holds, what changed.
3. PgBouncer: the PgBouncer exporters available here (Debian's prometheus-pgbouncer-exporter;
   spreaker's prometheus-pgbouncer-exporter from PyPI when its virtualenv exists) and this
   exporter, the same figures plus logins and connections held on PgBouncer (SHOW CLIENTS), the
   floor through psycopg, and the pool-exhaustion incident judged the same way.
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
import contextlib
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import asyncpg
import psycopg

from benchmarks.bench import open_backends
from benchmarks.compare_incidents import POOL_SURPLUS, pool_section, postgres_section
from benchmarks.compare_procs import (
    OURS,
    Figures,
    Peer,
    Run,
    Running,
    Sessions,
    bouncer_version,
    login_counter,
    measure_ours,
    measure_theirs,
    pg_sessions,
    pgb_clients,
    pgbouncer_peers,
    postgres_peers,
    start_ours,
    start_peer,
)
from benchmarks.compare_profile import (
    pgbouncer_floor,
    postgres_floor,
    profile_postgres,
    sessions_read_cpu,
)
from benchmarks.compare_report import (
    header,
    print_figures,
    print_floor,
    print_incidents,
    print_ratios,
    print_sessions_read,
)
from lab.pgbouncer import ADMIN_PASSWORD, ADMIN_USER, LabPgBouncer
from lab.postgres import LabPostgres
from lab.stack import running_lab
from lab.waiting import TimedOut, eventually


async def measure_peers(run: Run, peers: Sequence[Peer], sessions: Callable[[], Sessions],
                        logins: Callable[[], int] | None = None) -> list[Figures]:
    """Each peer alone, started, scraped and stopped; those that cannot run are named."""
    rows = []
    for peer in peers:
        running = start_peer(run.procs, run.root, peer)
        if not isinstance(running, Running):
            print(f"  {peer.name}: not measured: {running}")
            continue
        try:
            rows.append(await measure_theirs(running, sessions(), run.args.scrapes, logins))
        finally:
            run.procs.stop(running)
    return rows


# ---- 1. PostgreSQL at N backends ----------------------------------------------------------------

# Ours twice: its defaults (the top 20 applications, the rest folded into "other"), and with
# every application kept as its own series, as postgres_exporter's emulated current setup
# keeps them: the same series count, for the same work.
OUR_SETUPS: tuple[tuple[str, dict[str, str]], ...] = (
    ("", {}), (", every application kept", {"label_top_n": "10000"}))

async def postgres_at(run: Run, n: int) -> None:
    args = run.args
    started = time.monotonic()
    conns = await open_backends(run.pg, n)
    print(f"\nAt {n:,} client backends (opened in {time.monotonic() - started:.1f}s; 5% idle "
          f"in transaction, 5% in pg_sleep; load average {os.getloadavg()[0]:.2f}):", flush=True)
    try:
        theirs = await measure_peers(run, postgres_peers(run.pg),
                                     lambda: pg_sessions(run.observer))
        ours = []
        for suffix, settings in OUR_SETUPS:
            running = start_ours(run.procs, run.root, args.interval, OURS + suffix,
                                 postgres_dsn=run.pg.monitor_dsn(), **settings)
            try:
                ours.append(await measure_ours(running, "postgres", pg_sessions(run.observer),
                                               args.polls, args.our_scrapes, args.interval))
            finally:
                run.procs.stop(running)
        print_figures([*theirs, *ours], "DB")
        for mine in ours:
            for peer in theirs:
                print_ratios(mine, peer, "DB")
        print_floor("PostgresSource.poll", await postgres_floor(run.pg, args.rounds),
                    args.rounds)
        if ours:
            print_sessions_read(await sessions_read_cpu(run.pg, args.polls), ours[0], theirs)
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

    async def gone() -> bool:
        return not await observer.fetchval(f"SELECT count(*) {query}")

    with contextlib.suppress(TimedOut):  # as before: the next size starts anyway
        await eventually(gone, 60, "the pg_sleep backends ended", interval=0.2)


# ---- 2. incidents -------------------------------------------------------------------------------

async def incidents(run: Run) -> None:
    print(f"\nIncidents, each reproduced alone (lab/incidents.py) in a quiet lab, every exporter "
          f"scraped just before it and {run.args.settle:g}s after it began. DETECTED = a sign "
          "(a sample whose name, labels and value identify it) that holds during the incident "
          "and did not just before; otherwise what changed meanwhile in the families that "
          "describe sessions and locks:", flush=True)
    print_incidents(await postgres_section(run))


# ---- 3. PgBouncer -------------------------------------------------------------------------------

async def pgbouncer_section(run: Run) -> None:
    args, bouncer = run.args, run.bouncer
    print(f"\nPgBouncer {bouncer_version(bouncer)} (transaction pooling, pool_size "
          f"{bouncer.pool_size}), quiet:", flush=True)
    observer = await psycopg.AsyncConnection.connect(
        bouncer.dsn(ADMIN_USER, ADMIN_PASSWORD, "pgbouncer"), autocommit=True,
        prepare_threshold=None)
    logins = login_counter(bouncer)
    pid = int((bouncer.root / "pgbouncer.pid").read_text().split()[0])
    try:
        rows = await measure_peers(run, pgbouncer_peers(bouncer),
                                   lambda: pgb_clients(observer, pid), logins)
        ours = start_ours(run.procs, run.root, args.interval, pgbouncer_dsn=bouncer.stats_dsn())
        try:
            rows.append(await measure_ours(ours, "pgbouncer", pgb_clients(observer, pid),
                                           args.polls, args.our_scrapes, args.interval, logins))
        finally:
            run.procs.stop(ours)
    finally:
        await observer.close()
    print_figures(rows, "PgBouncer")
    for theirs in rows[:-1]:
        print_ratios(rows[-1], theirs, "PgBouncer")
    print_floor("PgBouncerSource.poll", await pgbouncer_floor(bouncer, args.rounds),
                args.rounds)
    print(f"\nPool exhaustion: {bouncer.pool_size + POOL_SURPLUS} clients in pg_sleep through "
          f"PgBouncer, pool_size {bouncer.pool_size}, scraped {args.settle:g}s after they "
          "began:", flush=True)
    print_incidents(await pool_section(run))


# ---- main ---------------------------------------------------------------------------------------

def sizes(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


FULL = {"backends": [100, 1000, 2000, 5000], "scrapes": 300, "our_scrapes": 2000, "polls": 40,
        "rounds": 20}
# For developing on a shared machine: one small size, a few of everything (figures not for use).
QUICK = {"backends": [100], "scrapes": 50, "our_scrapes": 300, "polls": 8, "rounds": 5}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="small and short: " + ", ".join(f"{k}={v}" for k, v in QUICK.items())
                        + "; options given explicitly still win")
    parser.add_argument("--backends", "--sizes", type=sizes,
                        help="client backend counts, comma-separated (default 100,1000,2000,5000)")
    parser.add_argument("--scrapes", type=int,
                        help="scrapes of each collect-on-scrape exporter (default 300)")
    parser.add_argument("--our-scrapes", type=int,
                        help="scrapes of ours (default 2000; cheap: more of them to measure its "
                             "CPU above the 10 ms tick)")
    parser.add_argument("--polls", type=int,
                        help="polls of ours watched for their duration, then for CPU (default 40)")
    parser.add_argument("--interval", type=float, default=1.0,
                        help="our poll interval while measured (seconds, at least 1: the "
                             "exporter refuses faster polling; the runs in docs/benchmarks.md "
                             "before issue 22 used 0.5)")
    parser.add_argument("--rounds", type=int, help="floor and profile rounds (default 20)")
    parser.add_argument("--settle", type=float, default=3.0,
                        help="seconds between an incident's start and the scrape")
    parser.add_argument("--no-profile", dest="profile", action="store_false")
    args = parser.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


async def main() -> None:
    args = parse_args()
    with running_lab("prefect-pg-compare-") as lab:
        pg = lab.postgres(stop_mode="immediate", max_connections=max(args.backends) + 100,
                          extra_settings={"shared_buffers": "256MB"})
        await compare(args, lab.root, pg, lab.pgbouncer(pg))


async def compare(args: argparse.Namespace, root: Path, pg: LabPostgres,
                  bouncer: LabPgBouncer) -> None:
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


if __name__ == "__main__":
    asyncio.run(main())
