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
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import http.client
import os
import platform
import pstats
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import psycopg
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.bench import bare_sql, open_backends, pct, rss_mb
from exporter.collector import ExporterCollector, Exposition
from exporter.config import load
from exporter.diagnosis import diagnose
from exporter.metricspec import MetricOptions
from exporter.pgbouncer.source import PgBouncerSource
from exporter.poller import SourceState
from exporter.postgres.metrics import postgres_families
from exporter.postgres.snapshot import PostgresSnapshot
from exporter.postgres.source import PostgresSource
from lab.common import (
    LabError,
    dies_with_parent,
    free_port,
    lab_root,
    stop_process,
    tail,
)
from lab.pgbouncer import (
    ADMIN_PASSWORD,
    ADMIN_USER,
    STATS_PASSWORD,
    STATS_USER,
    LabPgBouncer,
    start_pgbouncer,
)
from lab.postgres import MONITOR_ROLE, LabPostgres, start_postgres

OURS = "prefect-pg-exporter"
PG_EXPORTER = "prometheus-postgres-exporter"
PGB_DEBIAN = "prometheus-pgbouncer-exporter"
SPREAKER_VENV = Path(os.environ.get("SPREAKER_PGBOUNCER_EXPORTER_VENV",
                                    "/tmp/spreaker-pgbouncer-exporter-venv"))
SPREAKER_SETUP = (f"python3 -m venv {SPREAKER_VENV} && {SPREAKER_VENV}/bin/pip install --no-deps "
                  "prometheus-pgbouncer-exporter==2.1.2 prometheus-client==0.8.0 "
                  "python-json-logger==0.1.11 PyYAML psycopg2-binary")
SHOWS = ("VERSION", "POOLS", "DATABASES", "STATS_TOTALS", "CONFIG", "LISTS")
CLK_TCK = os.sysconf("SC_CLK_TCK")
Sample = tuple[str, dict[str, str], float]


# ---- processes and /proc --------------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, all its threads, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


@dataclass
class Running:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid


@dataclass
class Procs:
    started: list[Running] = field(default_factory=list)

    def start(self, name: str, argv: list[str], env: Mapping[str, str], port: int,
              log: Path) -> Running:
        with log.open("ab") as out:
            proc = subprocess.Popen(argv, env={**os.environ, **env}, stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, preexec_fn=dies_with_parent())
        running = Running(name, proc, port, log)
        self.started.append(running)
        wait_metrics(running)
        return running

    def stop(self, running: Running) -> None:
        stop_process(running.proc)

    def stop_all(self) -> None:
        for running in self.started:
            stop_process(running.proc)


def http_get(port: int, path: str = "/metrics", timeout: float = 30) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def wait_metrics(running: Running, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if running.proc.poll() is not None:
            raise LabError(f"exited with {running.proc.returncode}: "
                           f"{tail(running.log, 1).strip()}")
        with contextlib.suppress(OSError, http.client.HTTPException):
            if http_get(running.port, timeout=5)[0] == 200:
                return
        time.sleep(0.1)
    raise LabError(f"no /metrics within {timeout:g}s: {tail(running.log, 1).strip()}")


def scrape_times(port: int, n: int) -> list[float]:
    """n sequential GET /metrics on one keep-alive connection (reopened if the server closes)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    times = []
    try:
        for _ in range(n):
            t = time.perf_counter()
            conn.request("GET", "/metrics")
            response = conn.getresponse()
            response.read()
            times.append(time.perf_counter() - t)
            if response.status != 200:
                raise LabError(f"/metrics answered {response.status}")
    finally:
        conn.close()
    return times


def samples(port: int) -> list[Sample]:
    status, body = http_get(port)
    if status != 200:
        raise LabError(f"/metrics answered {status}")
    return [(s.name, dict(s.labels), s.value)
            for fam in text_string_to_metric_families(body.decode()) for s in fam.samples]


def package_version(package: str) -> str:
    done = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True,
                          text=True)
    return done.stdout.strip() if done.returncode == 0 else "?"


# ---- figures ----------------------------------------------------------------------------------

@dataclass
class Figures:
    """One exporter at one size, in seconds and MB. cpu: per scrape; server_cpu: the database's
    or PgBouncer's per scrape (collect on scrape) or per poll (ours); poll_*: ours only."""

    name: str
    p50: float
    p99: float
    cpu: float
    rss: float
    held: int  # sessions (connections) held when the run ended
    max_held: int  # most seen at once during it
    server_cpu: float | None = None
    logins: float | None = None  # new connections per scrape or poll (PgBouncer log)
    poll_p50: float = 0.0
    poll_p99: float = 0.0
    poll_cpu: float = 0.0
    polls: int = 0


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.2f} ms"


def print_figures(rows: Sequence[Figures], server: str) -> None:
    """One line per exporter scraped; ours also gets a line for its poll (duration p50/p99,
    CPU per poll, the server's CPU per poll)."""
    width = max(34, *(len(f.name) + 13 for f in rows))
    logins = any(f.logins is not None for f in rows)
    print(f"  {'':{width}}{'p50':>11}{'p99':>11}{'CPU':>11}{server + ' CPU':>14}{'RSS':>10}"
          f"  held (max){'  new conns' if logins else ''}")
    for f in rows:
        kind = ", scraped" if f.polls else ""
        server_cpu = f"{'':14}" if f.polls else f"   {ms(f.server_cpu or 0.0)}"
        new = f"{f.logins:11.2f}" if f.logins is not None and not f.polls else ""
        print(f"  {f.name + kind:{width}}{ms(f.p50)}{ms(f.p99)}{ms(f.cpu)}{server_cpu}"
              f"{f.rss:7.1f} MB  {f.held} ({f.max_held}){'':5}{new}")
        if f.polls:
            new = f"{f.logins:11.2f}" if f.logins is not None else ""
            print(f"  {f.name + ', its poll':{width}}{ms(f.poll_p50)}{ms(f.poll_p99)}"
                  f"{ms(f.poll_cpu)}   {ms(f.server_cpu or 0.0)}{'':23}{new}")


def ratio(a: float, b: float) -> str:
    return f"{a / b:.3f}x" if b > 0 else "n/a"


def print_ratios(ours: Figures, theirs: Figures, server: str) -> None:
    ours_cost = ours.poll_cpu + ours.cpu  # one poll per scrape: what a scrape costs us
    print(f"  ours / {theirs.name}: scrape p50 {ratio(ours.p50, theirs.p50)}, "
          f"p99 {ratio(ours.p99, theirs.p99)}; poll p50 / their scrape p50 "
          f"{ratio(ours.poll_p50, theirs.p50)}")
    print(f"    CPU (poll + scrape) / scrape {ratio(ours_cost, theirs.cpu)}; {server} CPU "
          f"poll / scrape {ratio(ours.server_cpu or 0.0, theirs.server_cpu or 0.0)}; "
          f"RSS {ratio(ours.rss, theirs.rss)}; held {ours.held} vs {theirs.held}"
          + (f" (it opens {theirs.logins:.2f} per scrape)" if theirs.logins else ""))


# ---- who holds what on the servers ----------------------------------------------------------

class Sessions:
    """Samples, until stopped, the sessions a role holds on PostgreSQL (pg_stat_activity) and
    the CPU their backends use, or the clients a user has on PgBouncer (SHOW CLIENTS)."""

    def __init__(self, count: Callable[[], Awaitable[list[int]]], period: float,
                 server_pid: int | None = None) -> None:
        self._count = count
        self._period = period
        self._server_pid = server_pid
        self.max = 0
        self.current = 0
        self._first: dict[int, float] = {}
        self._last: dict[int, float] = {}

    @property
    def server_cpu(self) -> float:
        """CPU seconds so far of the server process (PgBouncer), or of the role's backends
        since each was first seen (PostgreSQL)."""
        if self._server_pid is not None:
            return cpu_seconds(self._server_pid)
        return sum(self._last[pid] - self._first[pid] for pid in self._last)

    async def sample(self) -> None:
        pids = await self._count()
        self.current = len(pids)
        self.max = max(self.max, self.current)
        for pid in pids if self._server_pid is None else ():
            with contextlib.suppress(OSError, IndexError):
                cpu = cpu_seconds(pid)
                self._first.setdefault(pid, cpu)
                self._last[pid] = cpu

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Sessions]:
        stop = asyncio.Event()

        async def loop() -> None:
            while not stop.is_set():
                await self.sample()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self._period)

        task = asyncio.create_task(loop())
        try:
            yield self
        finally:
            stop.set()
            await task
            await self.sample()


def pg_sessions(observer: asyncpg.Connection) -> Sessions:
    async def pids() -> list[int]:
        rows = await observer.fetch("SELECT pid FROM pg_stat_activity WHERE usename = $1",
                                    MONITOR_ROLE)
        return [int(r["pid"]) for r in rows]

    return Sessions(pids, 0.2)


def pgb_clients(observer: psycopg.AsyncConnection[tuple[object, ...]], server_pid: int
                ) -> Sessions:
    async def clients() -> list[int]:
        """The stats user's client ports."""
        cur = await observer.execute("SHOW CLIENTS")
        names = [c.name for c in cur.description or ()]
        rows = [dict(zip(names, row, strict=True)) for row in await cur.fetchall()]
        return [int(str(row["port"])) for row in rows if row["user"] == STATS_USER]

    return Sessions(clients, 1.0, server_pid)


# ---- measuring one exporter -----------------------------------------------------------------

async def measure_theirs(running: Running, sessions: Sessions, scrapes: int,
                         logins: Callable[[], int] | None = None) -> Figures:
    """A collect-on-scrape exporter: its cost is the scrape."""
    await asyncio.to_thread(scrape_times, running.port, 5)
    before_logins = logins() if logins else 0
    async with sessions.running():
        server = sessions.server_cpu
        cpu = cpu_seconds(running.pid)
        times = await asyncio.to_thread(scrape_times, running.port, scrapes)
        cpu = cpu_seconds(running.pid) - cpu
    server = sessions.server_cpu - server
    logins_per = (logins() - before_logins) / scrapes if logins else None
    return Figures(running.name, pct(times, 0.5), pct(times, 0.99), cpu / scrapes,
                   rss_mb(running.pid), sessions.current, sessions.max, server / scrapes,
                   logins_per)


def health(port: int, kind: str) -> tuple[int, float]:
    """(polls so far, last poll duration) of our exporter's source of this kind."""
    found = {name: value for name, labels, value in samples(port) if labels.get("source") == kind}
    return (int(found.get("prefect_pg_exporter_source_polls_total", 0)),
            found.get("prefect_pg_exporter_source_poll_duration_seconds", 0.0))


async def watch_polls(port: int, kind: str, polls: int, interval: float) -> list[float]:
    """Waits for `polls` polls, reading each one's duration."""
    first, _ = await asyncio.to_thread(health, port, kind)
    last, durations = first, []
    deadline = time.monotonic() + polls * interval * 3 + 30
    while last - first < polls and time.monotonic() < deadline:
        await asyncio.sleep(interval / 4)
        count, duration = await asyncio.to_thread(health, port, kind)
        if count != last:
            durations.append(duration)
            last = count
    return durations


async def quiet_polls(running: Running, kind: str, polls: int, interval: float
                      ) -> tuple[int, float]:
    """Polls made and CPU used over `polls` intervals with nothing scraping."""
    count = (await asyncio.to_thread(health, running.port, kind))[0]
    cpu = cpu_seconds(running.pid)
    await asyncio.sleep(polls * interval)
    cpu = cpu_seconds(running.pid) - cpu
    return (await asyncio.to_thread(health, running.port, kind))[0] - count, cpu


async def measure_ours(running: Running, kind: str, sessions: Sessions, polls: int,
                       scrapes: int, interval: float,
                       logins: Callable[[], int] | None = None) -> Figures:
    """Ours polls on its own. Its poll durations are read in a first window (a small scrape
    every quarter interval); its CPU and the server's per poll in a second one with nothing
    scraping; its scrapes in a third, back to back, less the CPU of the polls made meanwhile."""
    async with sessions.running():
        durations = await watch_polls(running.port, kind, polls, interval)
        before_logins = logins() if logins else 0
        server = sessions.server_cpu
        polls_a, cpu_a = await quiet_polls(running, kind, polls, interval)
    per_poll = cpu_a / max(polls_a, 1)
    server_cpu = (sessions.server_cpu - server) / max(polls_a, 1)
    logins_per = (logins() - before_logins) / max(polls_a, 1) if logins else None
    count_b = (await asyncio.to_thread(health, running.port, kind))[0]
    cpu_b = cpu_seconds(running.pid)
    times = await asyncio.to_thread(scrape_times, running.port, scrapes)
    cpu_b = cpu_seconds(running.pid) - cpu_b
    polls_b = (await asyncio.to_thread(health, running.port, kind))[0] - count_b
    if not durations:
        raise LabError(f"{running.name} made no {kind} poll: {tail(running.log, 1).strip()}")
    return Figures(running.name, pct(times, 0.5), pct(times, 0.99),
                   max(cpu_b - polls_b * per_poll, 0.0) / scrapes, rss_mb(running.pid),
                   sessions.current, sessions.max, server_cpu, logins_per,
                   pct(durations, 0.5), pct(durations, 0.99), per_poll, len(durations))


# ---- the exporters ----------------------------------------------------------------------------

def start_ours(procs: Procs, root: Path, interval: float, **settings: str) -> Running:
    port = free_port()
    env = {"PREFECT_PG_EXPORTER_LISTEN_ADDRESS": f"127.0.0.1:{port}",
           "PREFECT_PG_EXPORTER_POLL_INTERVAL_SECONDS": f"{interval:g}",
           "PREFECT_PG_EXPORTER_POLL_TIMEOUT_SECONDS": f"{interval:g}",
           "PREFECT_PG_EXPORTER_LOG_LEVEL": "warning",
           **{f"PREFECT_PG_EXPORTER_{k.upper()}": v for k, v in settings.items()}}
    return procs.start(OURS, [sys.executable, "-m", "exporter"], env, port, root / "ours.log")


def start_postgres_exporter(procs: Procs, root: Path, pg: LabPostgres) -> Running:
    port = free_port()
    name = f"postgres_exporter {package_version(PG_EXPORTER).split('-')[0]}"
    return procs.start(name, [PG_EXPORTER, f"--web.listen-address=127.0.0.1:{port}",
                              "--log.level=warn"],
                       {"DATA_SOURCE_NAME": pg.monitor_dsn() + "?sslmode=disable"}, port,
                       root / "postgres_exporter.log")


def start_debian_pgb(procs: Procs, root: Path, bouncer: LabPgBouncer) -> Running:
    port = free_port()
    name = f"Debian {PGB_DEBIAN} {package_version(PGB_DEBIAN).split('-')[0]}"
    argv = [PGB_DEBIAN, "--host", "127.0.0.1", "--port", str(port), "--pgbouncer-host",
            "127.0.0.1", "--pgbouncer-port", str(bouncer.port), "--pgbouncer-user", STATS_USER]
    return procs.start(name, argv, {"PGPASSWORD": STATS_PASSWORD}, port,
                       root / "pgb-debian.log")


def start_spreaker_pgb(procs: Procs, root: Path, bouncer: LabPgBouncer) -> Running:
    port = free_port()
    config = root / "spreaker.yml"
    config.write_text(f"exporter_host: 127.0.0.1\nexporter_port: {port}\n"
                      f"pgbouncers:\n  - dsn: {bouncer.stats_dsn()}\n    connect_timeout: 5\n")
    return procs.start("spreaker pgbouncer-exporter 2.1.2",
                       [str(SPREAKER_VENV / "bin" / "pgbouncer-exporter"), "--config",
                        str(config), "--log-level", "WARNING"],
                       {"PYTHONWARNINGS": "ignore"}, port, root / "pgb-spreaker.log")


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


def print_floor(what: str, floor: tuple[float, float, float, float], rounds: int) -> None:
    ours_wall, bare_wall, ours_cpu, bare_cpu = floor
    print(f"  floor, median of {rounds} interleaved: our {what} {ms(ours_wall)} wall "
          f"{ms(ours_cpu)} CPU; bare {ms(bare_wall)} wall {ms(bare_cpu)} CPU; "
          f"ratio {ratio(ours_wall, bare_wall)} wall, {ratio(ours_cpu, bare_cpu)} CPU")


def postgres_source(pg: LabPostgres) -> PostgresSource:
    config = load({"postgres_dsn": pg.monitor_dsn()}, environ={})
    return PostgresSource(config.postgres_targets[0],
                          statement_timeout_ms=config.statement_timeout_ms, connect_timeout=10,
                          top_transactions=config.top_transactions, hot_tables=config.hot_tables)


async def postgres_floor(pg: LabPostgres, rounds: int) -> tuple[float, float, float, float]:
    config = load({"postgres_dsn": pg.monitor_dsn()}, environ={})
    source = postgres_source(pg)
    bare = await asyncpg.connect(pg.monitor_dsn(),
                                 server_settings={"application_name": "compare-floor"})
    try:
        return await interleave(source.poll, lambda: bare_sql(bare, config.top_transactions,
                                                              list(config.hot_tables)), rounds)
    finally:
        await bare.close()
        await source.close()


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


# ---- 1. PostgreSQL at N backends ----------------------------------------------------------------

@dataclass
class Run:
    args: argparse.Namespace
    root: Path
    pg: LabPostgres
    bouncer: LabPgBouncer
    observer: asyncpg.Connection
    procs: Procs = field(default_factory=Procs)


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


# ---- 2. incidents -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Sign:
    """A sample that identifies an incident: this name, these labels, a value that holds."""

    metric: str
    labels: Mapping[str, str]
    holds: Callable[[float], bool]

    def find(self, found: Sequence[Sample]) -> Sample | None:
        for name, labels, value in found:
            if (name == self.metric and all(labels.get(k) == v for k, v in self.labels.items())
                    and self.holds(value)):
                return name, labels, value
        return None


@dataclass(frozen=True)
class Aspect:
    title: str
    signs: Mapping[str, Sequence[Sign]]  # by exporter key: ours, theirs
    instead: Mapping[str, str] = field(default_factory=dict)  # what shows when nothing does


def at_least(n: float) -> Callable[[float], bool]:
    return lambda value: value >= n


def exactly(n: float) -> Callable[[float], bool]:
    return lambda value: value == n


def show(sample: Sample) -> str:
    name, labels, value = sample
    keep = {k: v for k, v in labels.items() if k not in ("server", "target")}
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(keep.items()))
    return f"{name}{{{inner}}} = {value!r}"


def verdict(signs: Sequence[Sign], before: Sequence[Sample], during: Sequence[Sample]) -> str:
    """The first sign that holds during the incident and did not just before it."""
    for sign in signs:
        hit = sign.find(during)
        if hit is not None and sign.find(before) is None:
            return "DETECTED  " + show(hit)
    return ""


def print_aspects(aspects: Sequence[Aspect], names: Mapping[str, str],
                  scraped: Mapping[str, tuple[list[Sample], list[Sample]] | str]) -> None:
    width = max(len(name) for name in names.values()) + 2
    for aspect in aspects:
        print(f"  {aspect.title}")
        for key, name in names.items():
            got = scraped.get(key)
            if isinstance(got, str):
                line = f"not visible: {got}"
            elif got is None:
                line = "not measured"
            else:
                line = (verdict(aspect.signs.get(key, ()), *got)
                        or "not visible" + (f": {aspect.instead[key]}"
                                            if key in aspect.instead else ""))
            print(f"    {name:{width}}{line}")


THEIRS_ACTIVE = ('shows only as pg_stat_activity_count{state="active"} and '
                 'pg_stat_activity_max_tx_duration{state="active"}, as any running statement')
LOCK_CHAIN = (
    Aspect("idle-in-transaction session holding a row lock",
           {"ours": [Sign("postgres_connections", {"state": "idle in transaction"},
                          at_least(1))],
            "theirs": [Sign("pg_stat_activity_count",
                            {"datname": "prefect", "state": "idle in transaction"},
                            at_least(1))]}),
    Aspect("a writer blocked behind it",
           {"ours": [Sign("postgres_blocked_sessions", {}, at_least(1))], "theirs": []},
           {"theirs": "pg_locks_count counts granted and awaited locks alike (and not "
                      "transactionid locks); the writer " + THEIRS_ACTIVE.split("shows ")[1]}),
)
COPY_STALL = (Aspect(
    "COPY FROM STDIN stalled by its client (ClientRead in a transaction)",
    {"ours": [Sign("postgres_client_read_in_transaction_sessions", {}, at_least(1))],
     "theirs": []},
    {"theirs": THEIRS_ACTIVE}),)
LISTENERS = (Aspect(
    'two sessions LISTEN "prefect_automation_changes" (two copies of the services)',
    {"ours": [Sign("postgres_listen_sessions", {"channel": "prefect_automation_changes"},
                   exactly(2))], "theirs": []},
    {"theirs": 'they count among pg_stat_activity_count{state="idle"}'}),)


def long_sleep(settle: float) -> tuple[Aspect, ...]:
    old = at_least(settle - 1.5)
    return (Aspect(
        f"a statement running for {settle:g}s (pg_sleep)",
        {"ours": [Sign("postgres_transaction_max_age_seconds", {"state": "active"}, old)],
         "theirs": [Sign("pg_stat_activity_max_tx_duration",
                         {"datname": "prefect", "state": "active"}, old)]}),)


async def connect_apps(pg: LabPostgres, *apps: str) -> list[asyncpg.Connection]:
    return [await asyncpg.connect(pg.dsn(), server_settings={"application_name": app})
            for app in apps]


def background(coro: Awaitable[object]) -> asyncio.Task[object]:
    task: asyncio.Task[object] = asyncio.ensure_future(coro)
    task.add_done_callback(lambda t: t.cancelled() or t.exception())
    return task


@contextlib.asynccontextmanager
async def lock_chain(pg: LabPostgres) -> AsyncIterator[None]:
    holder, writer = await connect_apps(pg, "incident-holder", "incident-writer")
    await holder.execute("BEGIN; UPDATE scratch.incident SET state = 'X' WHERE id = 1")
    blocked = background(writer.execute("UPDATE scratch.incident SET state = 'Y' WHERE id = 1"))
    try:
        yield
    finally:
        await holder.execute("ROLLBACK")
        await asyncio.wait([blocked], timeout=10)
        for conn in (holder, writer):
            conn.terminate()


@contextlib.asynccontextmanager
async def copy_stall(pg: LabPostgres) -> AsyncIterator[None]:
    (copier,) = await connect_apps(pg, "incident-copier")
    never = asyncio.Event()

    async def no_data() -> AsyncIterator[bytes]:
        await never.wait()  # the client stalls mid-COPY: the server waits on ClientRead
        yield b""

    copy = background(copier.copy_to_table("incident", schema_name="scratch", source=no_data()))
    try:
        yield
    finally:
        copy.cancel()
        with contextlib.suppress(BaseException):
            await copy
        copier.terminate()


@contextlib.asynccontextmanager
async def listeners(pg: LabPostgres) -> AsyncIterator[None]:
    conns = await connect_apps(pg, "services-a", "services-b")
    for conn in conns:
        await conn.add_listener("prefect_automation_changes", lambda *_: None)
    try:
        yield
    finally:
        for conn in conns:
            conn.terminate()


@contextlib.asynccontextmanager
async def sleeper(pg: LabPostgres) -> AsyncIterator[None]:
    (conn,) = await connect_apps(pg, "incident-sleeper")
    pid = await conn.fetchval("SELECT pg_backend_pid()")
    sleep = background(conn.execute("SELECT pg_sleep(600)"))
    try:
        yield
    finally:
        pg.psql(f"SELECT pg_cancel_backend({int(pid)})")
        await asyncio.wait([sleep], timeout=10)
        conn.terminate()


Ongoing = contextlib.AbstractAsyncContextManager[None]
Reproduce = Callable[[LabPostgres], Ongoing]


async def scrape_incident(ports: Mapping[str, int], reproduce: Ongoing, settle: float
                          ) -> dict[str, tuple[list[Sample], list[Sample]]]:
    before = {key: await asyncio.to_thread(samples, port) for key, port in ports.items()}
    async with reproduce:
        await asyncio.sleep(settle)
        during = {key: await asyncio.to_thread(samples, port) for key, port in ports.items()}
    await asyncio.sleep(1.5)  # let the exporters see the end before the next one begins
    return {key: (before[key], during[key]) for key in ports}


async def incidents(run: Run) -> None:
    settle = run.args.settle
    print(f"\nIncidents, each reproduced alone in a quiet lab and scraped {settle:g}s after it "
          "began; DETECTED = a sample that identifies it and did not hold just before:")
    run.pg.psql("CREATE TABLE scratch.incident (id int PRIMARY KEY, state text); "
                "INSERT INTO scratch.incident VALUES (1, 'RUNNING')")
    ours = start_ours(run.procs, run.root, 1.0, postgres_dsn=run.pg.monitor_dsn())
    names, ports = {"ours": OURS}, {"ours": ours.port}
    skipped: dict[str, str] = {}
    if shutil.which(PG_EXPORTER):
        theirs = start_postgres_exporter(run.procs, run.root, run.pg)
        names["theirs"], ports["theirs"] = theirs.name, theirs.port
    else:
        names["theirs"] = "postgres_exporter"
        skipped["theirs"] = f"not installed (apt-get install -y {PG_EXPORTER})"
    await asyncio.sleep(2)
    cases: list[tuple[Reproduce, Sequence[Aspect]]] = [
        (lock_chain, LOCK_CHAIN), (copy_stall, COPY_STALL), (listeners, LISTENERS),
        (sleeper, long_sleep(settle))]
    for reproduce, aspects in cases:
        scraped: dict[str, tuple[list[Sample], list[Sample]] | str] = {
            **await scrape_incident(ports, reproduce(run.pg), settle), **skipped}
        print_aspects(aspects, names, scraped)
    for running in run.procs.started:
        run.procs.stop(running)


# ---- 3. PgBouncer -------------------------------------------------------------------------------

def login_counter(bouncer: LabPgBouncer) -> Callable[[], int]:
    """Logins of the stats user so far, from PgBouncer's log (log_connections is on)."""
    def count() -> int:
        text = bouncer.log.read_text(errors="replace") if bouncer.log.exists() else ""
        return sum(1 for line in text.splitlines()
                   if "login attempt" in line and f"user={STATS_USER}" in line)

    return count


PgbStarter = Callable[[Procs, Path, LabPgBouncer], Running]


def pgb_candidates() -> list[tuple[str, PgbStarter | None, str]]:
    """(key, starter or None, why not) for each PgBouncer exporter this machine may have."""
    found: list[tuple[str, PgbStarter | None, str]] = []
    found.append(("debian", start_debian_pgb, "") if shutil.which(PGB_DEBIAN) else
                 ("debian", None, f"not installed (apt-get install -y {PGB_DEBIAN})"))
    exe = SPREAKER_VENV / "bin" / "pgbouncer-exporter"
    found.append(("spreaker", start_spreaker_pgb, "") if exe.exists() else
                 ("spreaker", None, f"not set up ({SPREAKER_SETUP})"))
    return found


POOL = {"database": "prefect", "user": "postgres"}


def pool_aspects(surplus: int) -> tuple[Aspect, ...]:
    waiting = {"ours": [Sign("pgbouncer_pools_client_waiting_connections", POOL,
                             exactly(surplus))],
               "spreaker": [Sign("pgbouncer_pools_client_waiting_connections", POOL,
                                 exactly(surplus))],
               "debian": [Sign("pgbouncer_waiting_clients", POOL, exactly(surplus))]}
    maxwait = {"ours": [Sign("pgbouncer_pools_client_maxwait_seconds", POOL, at_least(0.001))],
               "spreaker": [Sign("pgbouncer_pools_client_maxwait_seconds", POOL,
                                 at_least(0.001))]}
    return (Aspect(f"{surplus} clients waiting for a server connection", waiting),
            Aspect("how long the oldest has waited (maxwait)", maxwait,
                   {"debian": "it exports no maxwait"}))


@contextlib.asynccontextmanager
async def pool_exhaustion(pg: LabPostgres, bouncer: LabPgBouncer, clients: int
                          ) -> AsyncIterator[None]:
    conns = [await asyncpg.connect(bouncer.dsn(), statement_cache_size=0)
             for _ in range(clients)]
    for conn in conns:
        background(conn.execute("SELECT pg_sleep(600)"))
    try:
        yield
    finally:
        for conn in conns:
            conn.terminate()
        # a server backend does not notice its client left until its statement ends
        pg.psql("SELECT pg_cancel_backend(pid) FROM pg_stat_activity "
                "WHERE query = 'SELECT pg_sleep(600)' AND pid <> pg_backend_pid()")


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


def bouncer_version(bouncer: LabPgBouncer) -> str:
    done = subprocess.run(["pgbouncer", "--version"], capture_output=True, text=True)
    return done.stdout.split()[1] if done.returncode == 0 and done.stdout else "?"


async def pool_incident(run: Run, started: Mapping[str, Running],
                        failed: Mapping[str, str]) -> None:
    bouncer, settle = run.bouncer, run.args.settle
    surplus = 3
    print(f"\nPool exhaustion: {bouncer.pool_size + surplus} clients in pg_sleep through "
          f"PgBouncer, pool_size {bouncer.pool_size}, scraped {settle:g}s after they began:")
    ours = start_ours(run.procs, run.root, 1.0, pgbouncer_dsn=bouncer.stats_dsn())
    names, ports = {"ours": OURS}, {"ours": ours.port}
    for key in ("debian", "spreaker"):
        if key in started:
            restarted = {"debian": start_debian_pgb, "spreaker": start_spreaker_pgb}[key](
                run.procs, run.root, bouncer)
            names[key], ports[key] = restarted.name, restarted.port
        else:
            names[key] = {"debian": f"Debian {PGB_DEBIAN}", "spreaker": "spreaker 2.1.2"}[key]
    await asyncio.sleep(2)
    scraped: dict[str, tuple[list[Sample], list[Sample]] | str] = {
        **await scrape_incident(ports, pool_exhaustion(run.pg, bouncer,
                                                       bouncer.pool_size + surplus), settle),
        **failed}
    print_aspects(pool_aspects(surplus), names, scraped)
    run.procs.stop_all()


# ---- 4. profiles --------------------------------------------------------------------------------

# Frames of the benchmark itself and of the event loop's plumbing: not the exporter's cost.
NOT_OURS = ("benchmarks/compare.py", "asyncio/base_events.py", "asyncio/events.py",
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
    source = postgres_source(pg)
    snap = await source.poll()
    profile = cProfile.Profile()
    started = time.perf_counter()
    profile.enable()
    for _ in range(rounds):
        snap = await source.poll()
        list(postgres_families(snap, MetricOptions(label_top_n=20)))
    profile.disable()
    wall = time.perf_counter() - started
    await source.close()
    print_profile(f"Profile: {rounds} x (PostgresSource.poll + postgres_families)", profile,
                  wall, 14)
    assert isinstance(snap, PostgresSnapshot)
    render_profile(source, snap, rounds)


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


# ---- main ---------------------------------------------------------------------------------------

def machine() -> str:
    mem = next((int(line.split()[1]) / 1024 / 1024 for line in
                Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal")),
               0.0)
    return (f"{os.cpu_count()} cores, {mem:.0f} GiB, {platform.system()} "
            f"{platform.release()}, Python {platform.python_version()}")


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


def header(run: Run) -> None:
    version = run.pg.psql("SHOW server_version")
    print(f"Side by side, one run: {machine()}; PostgreSQL {version}, PgBouncer "
          f"{bouncer_version(run.bouncer)}")
    if not shutil.which(PG_EXPORTER):
        print(f"  skipped postgres_exporter: not installed "
              f"(apt-get install -y {PG_EXPORTER})")
    args = run.args
    print(f"  Scrapes are sequential on one keep-alive connection: {args.scrapes} of each "
          f"collect-on-scrape exporter, which queries on every scrape, {args.our_scrapes} of "
          f"{OURS}, which polls on its own (every {args.interval:g}s here; {args.polls} polls "
          f"watched for their duration, {args.polls} more with nothing scraping for CPU).\n"
          "  CPU: utime+stime from /proc/<pid>/stat (10 ms ticks); DB CPU: the exporter's own "
          "backends; held: sessions (connections) it holds at the end, most seen at once.",
          flush=True)


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
