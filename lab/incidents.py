"""The incidents the exporter exists for, reproduced for real on the lab's servers: one module
for the demo, the tests and the benchmarks.

Each is an async context manager: the incident holds inside the `async with` block and is
cleaned up on the way out, whatever happens. Each yields what it made (pids, application names,
the table), so a test can assert on exactly those.

    async with lock_chain(pg, writers=2) as chain:   # an idle-in-transaction holder
        ...                                          # and writers queued behind it
        await chain.end()                            # end it early: the holder rolls back
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import psycopg
from psycopg.rows import dict_row

from lab.pgbouncer import LabPgBouncer
from lab.postgres import DATABASE, LabPostgres
from lab.waiting import eventually

SERVICES_CHANNEL = "prefect_automation_changes"


def background(coro: Awaitable[object]) -> asyncio.Task[object]:
    """A statement left running; its error when the incident ends it is expected."""
    task: asyncio.Task[object] = asyncio.ensure_future(coro)
    task.add_done_callback(lambda t: t.cancelled() or t.exception())
    return task


async def connect(dsn: str, application_name: str, **kwargs: Any) -> asyncpg.Connection:
    return await asyncpg.connect(dsn, server_settings={"application_name": application_name},
                                 **kwargs)


async def wait_until(pg: LabPostgres, sql: str, *args: object, timeout: float = 15.0) -> None:
    """Until `sql` (run as the superuser) answers true: the incident has really begun."""
    conn = await asyncpg.connect(pg.dsn())
    try:
        async def begun() -> bool:
            return bool(await conn.fetchval(sql, *args))

        await eventually(begun, timeout, f"the incident to begin: {sql}", interval=0.05)
    finally:
        await conn.close()


def ensure_table(pg: LabPostgres, table: str) -> None:
    """A table of the lab's own (schema scratch) with one row, id 1, to fight over."""
    # not ON CONFLICT: that waits on a holder's row lock, where a plain read does not
    pg.psql(f"CREATE TABLE IF NOT EXISTS {table} (id int PRIMARY KEY, state text); "
            f"INSERT INTO {table} SELECT 1, 'RUNNING' "
            f"WHERE NOT EXISTS (SELECT FROM {table} WHERE id = 1)")


@dataclass
class LockChain:
    table: str
    holder: asyncpg.Connection
    holder_pid: int
    writer_pids: list[int]
    holder_app: str
    writer_app: str
    _writes: list[asyncio.Task[object]] = field(default_factory=list, repr=False)

    async def end(self) -> None:
        """The holder rolls back; the writers go through."""
        if not self.holder.is_closed() and self.holder.is_in_transaction():
            await self.holder.execute("ROLLBACK")
        if self._writes:
            await asyncio.wait(self._writes, timeout=10)


@contextlib.asynccontextmanager
async def lock_chain(pg: LabPostgres, *, table: str = "scratch.task_run", writers: int = 1,
                     app: str = "incident", dsn: str | None = None) -> AsyncIterator[LockChain]:
    """Incident 1: a session idle in transaction holding a row lock, `writers` sessions queued
    behind it (UPDATE of the same row). Yields once every writer waits on the lock."""
    ensure_table(pg, table)
    dsn = dsn or pg.dsn()
    holder = await connect(dsn, f"{app}-holder")
    conns = [holder] + [await connect(dsn, f"{app}-writer") for _ in range(writers)]
    try:
        holder_pid = await holder.fetchval("SELECT pg_backend_pid()")
        writer_pids = [await c.fetchval("SELECT pg_backend_pid()") for c in conns[1:]]
        await holder.execute(f"BEGIN; UPDATE {table} SET state = 'HELD' WHERE id = 1")
        writes = [background(c.execute(f"UPDATE {table} SET state = 'WRITTEN' WHERE id = 1"))
                  for c in conns[1:]]
        await wait_until(pg, "SELECT count(*) = $1 FROM pg_stat_activity WHERE pid = ANY($2) "
                         "AND wait_event_type = 'Lock'", writers, writer_pids)
        chain = LockChain(table, holder, holder_pid, writer_pids, f"{app}-holder",
                          f"{app}-writer", writes)
        yield chain
        await chain.end()
    finally:
        for conn in conns:
            conn.terminate()


@dataclass
class CopyStall:
    pid: int
    application_name: str


@contextlib.asynccontextmanager
async def copy_stall(pg: LabPostgres, *, table: str = "scratch.task_run",
                     app: str = "incident-copier") -> AsyncIterator[CopyStall]:
    """Incident 2: an active COPY FROM STDIN whose client never sends the data: the server
    waits on ClientRead inside a transaction."""
    ensure_table(pg, table)
    schema, _, name = table.rpartition(".")
    copier = await connect(pg.dsn(), app)
    never = asyncio.Event()

    async def no_data() -> AsyncIterator[bytes]:
        await never.wait()  # the client stalls mid-COPY
        yield b""

    pid = await copier.fetchval("SELECT pg_backend_pid()")
    copy = background(copier.copy_to_table(name, schema_name=schema or None, source=no_data()))
    try:
        await wait_until(pg, "SELECT wait_event = 'ClientRead' AND state = 'active' "
                         "FROM pg_stat_activity WHERE pid = $1", pid)
        yield CopyStall(pid, app)
    finally:
        copy.cancel()
        with contextlib.suppress(BaseException):
            await copy
        copier.terminate()


@contextlib.asynccontextmanager
async def listeners(pg: LabPostgres, *, apps: tuple[str, ...] = ("services-a", "services-b"),
                    channel: str = SERVICES_CHANNEL) -> AsyncIterator[list[asyncpg.Connection]]:
    """Incident 5: several copies of Prefect's background services, each holding a LISTEN."""
    conns = [await connect(pg.dsn(), app) for app in apps]
    try:
        for conn in conns:
            await conn.add_listener(channel, lambda *_: None)
        yield conns
    finally:
        for conn in conns:
            conn.terminate()


@dataclass
class LongStatement:
    pid: int
    application_name: str
    task: asyncio.Task[object]


@contextlib.asynccontextmanager
async def long_statement(pg: LabPostgres, *, seconds: int = 600, app: str = "incident-sleeper",
                         comment: str = "") -> AsyncIterator[LongStatement]:
    """Incident 7: a statement running for long (pg_sleep), cancelled on the way out: a
    backend does not notice its client left until it next talks to it."""
    conn = await connect(pg.dsn(), app)
    pid = await conn.fetchval("SELECT pg_backend_pid()")
    sql = f"SELECT pg_sleep({int(seconds)})" + (f" /* {comment} */" if comment else "")
    sleep = background(conn.execute(sql))
    try:
        await wait_until(pg, "SELECT wait_event = 'PgSleep' FROM pg_stat_activity "
                         "WHERE pid = $1", pid)
        yield LongStatement(pid, app, sleep)
    finally:
        pg.psql(f"SELECT pg_cancel_backend({int(pid)})")
        await asyncio.wait([sleep], timeout=10)
        conn.terminate()


@contextlib.asynccontextmanager
async def idle_sessions(pg: LabPostgres, count: int, *, app: str = "incident-idle"
                        ) -> AsyncIterator[list[asyncpg.Connection]]:
    """Plain idle sessions (not stalls): `count` of them, for the connection budget."""
    conns = [await connect(pg.dsn(), f"{app}-{i}") for i in range(count)]
    try:
        yield conns
    finally:
        for conn in conns:
            conn.terminate()


@contextlib.asynccontextmanager
async def pool_exhaustion(pg: LabPostgres, bouncer: LabPgBouncer, *, clients: int,
                          seconds: int = 600, user: str | None = None,
                          password: str | None = None, app: str = "incident-pooled"
                          ) -> AsyncIterator[list[asyncpg.Connection]]:
    """Incident 3: `clients` clients on PgBouncer each running a long statement: beyond the
    pool size they wait for a server connection."""
    dsn = bouncer.dsn(user, password) if user and password else bouncer.dsn()
    conns = [await connect(dsn, app, statement_cache_size=0) for _ in range(clients)]
    sql = f"SELECT pg_sleep({int(seconds)})"
    for conn in conns:
        background(conn.execute(sql))
    try:
        yield conns
    finally:
        for conn in conns:
            conn.terminate()
        # a server backend does not notice its client left until its statement ends
        pg.psql("SELECT pg_cancel_backend(pid) FROM pg_stat_activity "
                f"WHERE query = '{sql}' AND pid <> pg_backend_pid()")


@dataclass
class PasswordChain:
    role: str
    holder_pid: int
    waiter_pid: int
    secrets: tuple[str, str]  # the holder's and the waiter's password literals


@contextlib.asynccontextmanager
async def password_chain(pg: LabPostgres, *, role: str = "incident_victim",
                         secrets: tuple[str, str] = ("holder-Secret-1f2e", "waiter-Secret-9d8c"),
                         app: str = "incident-password") -> AsyncIterator[PasswordChain]:
    """Incident 8: statements with a password literal in pg_stat_activity. A session changes a
    role's password inside a transaction and stays idle in transaction (its last statement holds
    the first secret); a second session's ALTER ROLE ... PASSWORD (the second secret) waits
    behind it on the role's row. Yields once the second waits on the lock."""
    pg.psql(f"DO $$ BEGIN CREATE ROLE {role}; EXCEPTION WHEN duplicate_object THEN NULL; END $$")
    holder = await connect(pg.dsn(), f"{app}-holder")
    waiter = await connect(pg.dsn(), f"{app}-waiter")
    try:
        holder_pid = await holder.fetchval("SELECT pg_backend_pid()")
        waiter_pid = await waiter.fetchval("SELECT pg_backend_pid()")
        await holder.execute(f"BEGIN; ALTER ROLE {role} PASSWORD '{secrets[0]}'")
        change = background(waiter.execute(f"ALTER ROLE {role} PASSWORD '{secrets[1]}'"))
        await wait_until(pg, "SELECT wait_event_type = 'Lock' FROM pg_stat_activity "
                         "WHERE pid = $1", waiter_pid)
        yield PasswordChain(role, holder_pid, waiter_pid, secrets)
        if holder.is_in_transaction():
            await holder.execute("ROLLBACK")
        await asyncio.wait([change], timeout=10)
    finally:
        holder.terminate()
        waiter.terminate()


async def pool_waiting(bouncer: LabPgBouncer) -> int:
    """SHOW POOLS cl_waiting of the lab database's pool, through the stats console (simple
    query protocol: psycopg, not asyncpg)."""
    async with await psycopg.AsyncConnection.connect(
            bouncer.stats_dsn(), autocommit=True, prepare_threshold=None,
            row_factory=dict_row) as conn:
        rows = await (await conn.execute("SHOW POOLS")).fetchall()
    return sum(int(r["cl_waiting"]) for r in rows if r["database"] == DATABASE)


@dataclass
class PooledLockChain:
    holder_pid: int  # the holder's server connection's backend pid on PostgreSQL
    holder_app: str
    writers: int
    waiting: int
    table: str


@contextlib.asynccontextmanager
async def pooled_lock_chain(pg: LabPostgres, bouncer: LabPgBouncer, *, writers: int = 4,
                            waiting: int = 3, table: str = "scratch.pooled",
                            app: str = "pooled") -> AsyncIterator[PooledLockChain]:
    """Incidents 1 and 3 as one chain, through PgBouncer in transaction pooling: a client idles
    in its transaction holding a row lock (its server connection pinned to it), `writers`
    clients' UPDATEs of the row block behind it, each holding a server connection, and
    `waiting` more clients wait in PgBouncer for one. With pool_size = 1 + writers, the pool is
    exhausted by one session. Yields once every writer waits on the lock and every extra
    client waits in PgBouncer."""
    ensure_table(pg, table)
    dsn = bouncer.dsn()
    holder = await connect(dsn, f"{app}-holder", statement_cache_size=0)
    conns = [await connect(dsn, f"{app}-writer", statement_cache_size=0)
             for _ in range(writers)]
    extra = [await connect(dsn, f"{app}-waiting", statement_cache_size=0)
             for _ in range(waiting)]
    tasks: list[asyncio.Task[object]] = []
    try:
        await holder.execute("BEGIN")
        # inside the transaction the server connection is the holder's: its backend's pid
        holder_pid = await holder.fetchval("SELECT pg_backend_pid()")
        await holder.execute(f"UPDATE {table} SET state = 'HELD' WHERE id = 1")
        tasks += [background(c.execute(f"UPDATE {table} SET state = 'WRITTEN' WHERE id = 1"))
                  for c in conns]
        await wait_until(pg, "SELECT count(*) = $1 FROM pg_stat_activity "
                         "WHERE application_name = $2 AND wait_event_type = 'Lock'",
                         writers, f"{app}-writer")
        tasks += [background(c.execute("SELECT 1")) for c in extra]
        async def extra_wait() -> bool:
            return await pool_waiting(bouncer) >= waiting

        await eventually(extra_wait, 15.0, "the extra clients to wait in PgBouncer",
                         interval=0.05)
        yield PooledLockChain(holder_pid, f"{app}-holder", writers, waiting, table)
        await holder.execute("ROLLBACK")
        await asyncio.wait(tasks, timeout=10)
    finally:
        for conn in (holder, *conns, *extra):
            conn.terminate()
        # a backend whose client left mid-statement ends only when its statement does
        pg.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                f"WHERE application_name LIKE '{app}-%' AND pid <> pg_backend_pid()")


@dataclass
class TableLock:
    pid: int
    application_name: str
    table: str


@contextlib.asynccontextmanager
async def table_lock(pg: LabPostgres, *, table: str = "public.flow_run",
                     app: str = "incident-locker") -> AsyncIterator[TableLock]:
    """A session that took ACCESS EXCLUSIVE on one of Prefect's tables (a migration, a manual
    ALTER or LOCK left open) and idles in its transaction: every statement on the table queues
    behind it."""
    conn = await connect(pg.dsn(), app)
    try:
        pid = await conn.fetchval("SELECT pg_backend_pid()")
        await conn.execute(f"BEGIN; LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
        yield TableLock(pid, app, table)
    finally:
        conn.terminate()


@contextlib.asynccontextmanager
async def index_build(pg: LabPostgres, *, table: str = "scratch.index_build",
                      index: str = "ix_index_build__state",
                      app: str = "incident-index") -> AsyncIterator[int]:
    """An index build in progress (#25): a CREATE INDEX CONCURRENTLY, as Prefect 3.9's
    migrations run them, waiting for a writer's transaction to end. Yields the builder's pid
    while it waits; on the way out the writer rolls back, the build finishes and the index is
    dropped: the INVALID index a build cancelled midway leaves too (CREATE INDEX CONCURRENTLY
    also waits for every older snapshot, so it may still wait when the incident ends)."""
    ensure_table(pg, table)
    writer = await connect(pg.dsn(), f"{app}-writer")
    builder = await connect(pg.dsn(), f"{app}-builder")
    try:
        pid = await builder.fetchval("SELECT pg_backend_pid()")
        await writer.execute(f"BEGIN; UPDATE {table} SET state = state WHERE id = 1")
        build = background(builder.execute(
            f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {index} ON {table} (state)"))
        await wait_until(pg, "SELECT EXISTS (SELECT FROM pg_stat_progress_create_index "
                         "WHERE pid = $1)", pid)
        yield pid
        await writer.execute("ROLLBACK")
        done, _ = await asyncio.wait([build], timeout=5)
        if not done:
            await writer.execute("SELECT pg_cancel_backend($1)", pid)
            await asyncio.wait([build], timeout=15)
        await builder.execute(f"DROP INDEX IF EXISTS {table.split('.')[0]}.{index}")
    finally:
        writer.terminate()
        builder.terminate()
