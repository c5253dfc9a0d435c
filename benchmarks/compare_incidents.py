"""benchmarks/compare.py's incidents: each reproduced for real, every exporter scraped just
before and while it holds, and what counts as an exporter detecting it."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

import asyncpg

from benchmarks.compare_procs import (
    OURS,
    PG_EXPORTER,
    PGB_DEBIAN,
    Run,
    Running,
    Sample,
    samples,
    start_debian_pgb,
    start_ours,
    start_postgres_exporter,
    start_spreaker_pgb,
)
from benchmarks.compare_report import Verdicts, print_verdicts
from lab.pgbouncer import LabPgBouncer
from lab.postgres import LabPostgres

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


def judge(aspects: Sequence[Aspect], names: Mapping[str, str],
          scraped: Mapping[str, tuple[list[Sample], list[Sample]] | str]) -> Verdicts:
    rows: Verdicts = []
    for aspect in aspects:
        lines = []
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
            lines.append((name, line))
        rows.append((aspect.title, lines))
    return rows


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
        print_verdicts(judge(aspects, names, scraped))
    for running in run.procs.started:
        run.procs.stop(running)


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
    print_verdicts(judge(pool_aspects(surplus), names, scraped))
    run.procs.stop_all()

