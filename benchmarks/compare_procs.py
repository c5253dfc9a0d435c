"""benchmarks/compare.py's processes and their accounting: the exporters started and stopped,
their /metrics scraped and timed, the CPU they (and the database's backends or PgBouncer) use
read from /proc, and the sessions they hold.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import asyncpg
import psycopg
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.bench import pct, rss_mb
from lab.common import LabError, dies_with_parent, free_port, stop_process, tail
from lab.pgbouncer import STATS_PASSWORD, STATS_USER, LabPgBouncer
from lab.postgres import MONITOR_ROLE, LabPostgres
from lab.waiting import TimedOut, until

OURS = "prefect-pg-exporter"
PG_EXPORTER = "prometheus-postgres-exporter"
PGB_DEBIAN = "prometheus-pgbouncer-exporter"
SPREAKER_VENV = Path(os.environ.get("SPREAKER_PGBOUNCER_EXPORTER_VENV",
                                    "/tmp/spreaker-pgbouncer-exporter-venv"))
SPREAKER_SETUP = (f"python3 -m venv {SPREAKER_VENV} && {SPREAKER_VENV}/bin/pip install --no-deps "
                  "prometheus-pgbouncer-exporter==2.1.2 prometheus-client==0.8.0 "
                  "python-json-logger==0.1.11 PyYAML psycopg2-binary")
CURRENT_QUERIES = Path(__file__).with_name("postgres_exporter_current.yaml")
SHOWS = ("VERSION", "POOLS", "DATABASES", "STATS_TOTALS", "CONFIG", "LISTS")
CLK_TCK = os.sysconf("SC_CLK_TCK")
Sample = tuple[str, dict[str, str], float]


# ---- processes and /proc --------------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, all its threads, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def on_cpu_seconds(pid: int) -> float:
    """Time on a CPU of a process from /proc/<pid>/schedstat, in nanoseconds: finer than
    cpu_seconds' 10 ms ticks, for what costs a few ms."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9


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
    def answers() -> bool:
        if running.proc.poll() is not None:
            raise LabError(f"exited with {running.proc.returncode}: "
                           f"{tail(running.log, 1).strip()}")
        with contextlib.suppress(OSError, http.client.HTTPException):
            return http_get(running.port, timeout=5)[0] == 200
        return False

    try:
        until(answers, timeout, "/metrics")
    except TimedOut:
        raise LabError(f"no /metrics within {timeout:g}s: {tail(running.log, 1).strip()}") \
            from None


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
    series: int = 0  # samples in one /metrics body, read after the measurement


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
                   logins_per, series=len(await asyncio.to_thread(samples, running.port)))


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
                   pct(durations, 0.5), pct(durations, 0.99), per_poll, len(durations),
                   len(await asyncio.to_thread(samples, running.port)))


# ---- the exporters ----------------------------------------------------------------------------

def start_ours(procs: Procs, root: Path, interval: float, name: str = OURS,
               **settings: str) -> Running:
    port = free_port()
    env = {"PREFECT_PG_EXPORTER_LISTEN_ADDRESS": f"127.0.0.1:{port}",
           "PREFECT_PG_EXPORTER_POLL_INTERVAL_SECONDS": f"{interval:g}",
           "PREFECT_PG_EXPORTER_POLL_TIMEOUT_SECONDS": f"{interval:g}",
           "PREFECT_PG_EXPORTER_LOG_LEVEL": "warning",
           **{f"PREFECT_PG_EXPORTER_{k.upper()}": v for k, v in settings.items()}}
    return procs.start(name, [sys.executable, "-m", "exporter"], env, port, root / "ours.log")


def start_postgres_exporter(procs: Procs, root: Path, pg: LabPostgres,
                            setup: PgSetup | None = None) -> Running:
    setup = setup or PG_SETUPS[0]
    port = free_port()
    name = f"postgres_exporter {package_version(PG_EXPORTER).split('-')[0]}{setup.suffix}"
    return procs.start(name, [PG_EXPORTER, f"--web.listen-address=127.0.0.1:{port}",
                              "--log.level=warn", *setup.argv],
                       {"DATA_SOURCE_NAME": pg.monitor_dsn() + "?sslmode=disable"}, port,
                       root / f"postgres_exporter-{setup.key}.log")


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


# ---- the peers ------------------------------------------------------------------------------

@dataclass(frozen=True)
class PgSetup:
    """One way of running postgres_exporter: its defaults, or with a queries file."""

    key: str
    suffix: str  # added to its name in the report
    argv: tuple[str, ...] = ()


PG_SETUPS = (
    PgSetup("defaults", ""),
    # No release newer than 0.11.1 is packaged here: the queries file makes 0.11.1 run the SQL
    # of the current collectors and of the proposed ones (see the file for where each is from).
    PgSetup("current", ", emulated current", (f"--extend.query-path={CURRENT_QUERIES}",)),
)


@dataclass(frozen=True)
class Peer:
    """An exporter measured against ours, or why it cannot be here."""

    key: str
    family: str  # whose metric names it exports: ours, postgres_exporter, pgbouncer_exporter...
    name: str
    start: Callable[[Procs, Path], Running] | None
    why_not: str = ""


def postgres_peers(pg: LabPostgres) -> list[Peer]:
    version = package_version(PG_EXPORTER).split("-")[0]
    installed = shutil.which(PG_EXPORTER) is not None
    return [Peer(f"pgx-{setup.key}", "postgres_exporter",
                 f"postgres_exporter {version}{setup.suffix}",
                 partial(_start_pgx, pg=pg, setup=setup) if installed else None,
                 f"not installed (apt-get install -y {PG_EXPORTER})")
            for setup in PG_SETUPS]


def _start_pgx(procs: Procs, root: Path, *, pg: LabPostgres, setup: PgSetup) -> Running:
    return start_postgres_exporter(procs, root, pg, setup)


def pgbouncer_peers(bouncer: LabPgBouncer) -> list[Peer]:
    """Debian's prometheus-pgbouncer-exporter and spreaker's, where this machine has them."""
    debian = f"Debian {PGB_DEBIAN} {package_version(PGB_DEBIAN).split('-')[0]}"
    spreaker = "spreaker pgbouncer-exporter 2.1.2"
    exe = SPREAKER_VENV / "bin" / "pgbouncer-exporter"
    return [
        Peer("debian", "debian_pgbouncer", debian,
             partial(_with_bouncer, start_debian_pgb, bouncer) if shutil.which(PGB_DEBIAN)
             else None, f"not installed (apt-get install -y {PGB_DEBIAN})"),
        Peer("spreaker", "pgbouncer_exporter", spreaker,
             partial(_with_bouncer, start_spreaker_pgb, bouncer) if exe.exists() else None,
             f"not set up ({SPREAKER_SETUP})"),
    ]


def _with_bouncer(starter: Callable[[Procs, Path, LabPgBouncer], Running],
                  bouncer: LabPgBouncer, procs: Procs, root: Path) -> Running:
    return starter(procs, root, bouncer)


def start_peer(procs: Procs, root: Path, peer: Peer) -> Running | str:
    """The running peer, or why it is not running: not installed, or it did not start."""
    if peer.start is None:
        return peer.why_not
    try:
        return peer.start(procs, root)
    except LabError as exc:
        return f"does not start ({str(exc).split(': ', 1)[-1]})"


# ---- one run ----------------------------------------------------------------------------------

@dataclass
class Run:
    args: argparse.Namespace
    root: Path
    pg: LabPostgres
    bouncer: LabPgBouncer
    observer: asyncpg.Connection
    procs: Procs = field(default_factory=Procs)


# ---- 3. PgBouncer -------------------------------------------------------------------------------

def login_counter(bouncer: LabPgBouncer) -> Callable[[], int]:
    """Logins of the stats user so far, from PgBouncer's log (log_connections is on)."""
    def count() -> int:
        text = bouncer.log.read_text(errors="replace") if bouncer.log.exists() else ""
        return sum(1 for line in text.splitlines()
                   if "login attempt" in line and f"user={STATS_USER}" in line)

    return count


def bouncer_version(bouncer: LabPgBouncer) -> str:
    done = subprocess.run(["pgbouncer", "--version"], capture_output=True, text=True)
    return done.stdout.split()[1] if done.returncode == 0 and done.stdout else "?"

