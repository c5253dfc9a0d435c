"""PgBouncer joined to PostgreSQL: what each pool's server connections are doing on the
PostgreSQL behind it, and the session at the root of it. Pure: a PgBouncer snapshot and the
fresh PostgreSQL snapshots in, no read of its own.

SHOW SERVERS gives each server connection's backend pid (remote_pid); the PostgreSQL target
behind a PgBouncer database is the configured one whose DSN names the host and port SHOW
DATABASES gives for it; the activity read's groups list their pids, the lock chain names the
root each blocked session waits behind (exporter/postgres/causes.py)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from exporter.finding import Cause, age
from exporter.pgbouncer.snapshot import Database, PgBouncerSnapshot, Pool
from exporter.postgres.causes import (
    IDLE_IN_TRANSACTION_STATE,
    PG_STATES,
    WAITING_ON_LOCK,
    Backend,
    backend,
    cause,
    roots_by_victim,
)
from exporter.postgres.snapshot import PostgresSnapshot

LOCAL = "local"  # a Unix socket or a loopback address: this host
_LOOPBACK = {"", "localhost", "127.0.0.1", "::1"}


def _host(host: str) -> str:
    host = host.strip().lower()
    return LOCAL if host in _LOOPBACK or host.startswith("/") else host


def _endpoints(hosts: str, ports: str) -> set[tuple[str, str]]:
    """A libpq host list and its ports ('h1,h2' with '5432' or '5432,5433')."""
    names = hosts.split(",") if hosts else [""]
    numbers = (ports or "5432").split(",")
    if len(numbers) == 1:
        numbers *= len(names)
    return {(_host(h), p.strip() or "5432") for h, p in zip(names, numbers, strict=False)}


def postgres_of(db: Database, postgres: Sequence[PostgresSnapshot]) -> PostgresSnapshot | None:
    """The configured PostgreSQL target a PgBouncer database points at (same host and port),
    if any. A loopback address and a Unix socket count as the same host: the exporter is
    then deployed beside both."""
    theirs = _endpoints(db.host, db.port)
    return next((pg for pg in postgres
                 if theirs & _endpoints(pg.address.host, pg.address.port)), None)


@dataclass(frozen=True)
class PoolBackends:
    """One pool's server connections as PostgreSQL sees them."""

    database: str
    user: str
    postgres: str  # the PostgreSQL target
    backends: tuple[Backend, ...]
    cause: Cause | None  # the session that holds the pool, when one does

    def count(self, pg_state: str) -> int:
        return sum(1 for b in self.backends if b.pg_state == pg_state)

    def describe(self) -> str:
        """'the pool's 5 server connections on db are 1 idle in transaction (pid 4711, app,
        25s) and 4 waiting on a lock behind pid 4711: pid 4711 is the cause'."""
        parts = [_part(self, state) for state in PG_STATES if self.count(state)]
        listed = (", ".join(parts[:-1]) + " and " + parts[-1]) if len(parts) > 1 else parts[0]
        text = (f"the pool's {len(self.backends)} server connection(s) on PostgreSQL "
                f"{self.postgres} are {listed}")
        if self.cause is None:
            return text + ": no one session holds them"
        if self.cause.pid in {b.pid for b in self.backends}:
            return text + f": pid {self.cause.pid} is the cause"
        return text + f": {self.cause} is the cause (not through this pool)"


def _part(pool: PoolBackends, state: str) -> str:
    members = [b for b in pool.backends if b.pg_state == state]
    n = len(members)
    if state == IDLE_IN_TRANSACTION_STATE:
        oldest = max(members, key=lambda b: (b.transaction_seconds or 0.0, -b.pid))
        return (f"{n} idle in transaction ({'the oldest ' if n > 1 else ''}pid {oldest.pid}, "
                f"{oldest.application_name or 'no application_name'}, "
                f"{age(oldest.transaction_seconds)})")
    if state == WAITING_ON_LOCK:
        roots = sorted({b.root for b in members if b.root is not None})
        return f"{n} waiting on a lock behind pid {', '.join(map(str, roots))}"
    return f"{n} {state}"


def pool_backends(pgb: PgBouncerSnapshot, postgres: Sequence[PostgresSnapshot]
                  ) -> Iterator[PoolBackends]:
    """Every pool whose database points at a configured PostgreSQL target, with its server
    connections that have a backend (remote_pid)."""
    targets = {db.name: postgres_of(db, postgres) for db in pgb.databases}
    roots: dict[str, dict[int, int]] = {}
    by_pool: dict[tuple[str, str], list[int]] = {}
    for server in pgb.servers:
        if server.remote_pid:
            by_pool.setdefault((server.database, server.user), []).append(server.remote_pid)
    for (database, user), pids in by_pool.items():
        pg = targets.get(database)
        if pg is None:
            continue
        chain = roots.setdefault(pg.target, roots_by_victim(pg))
        backends = tuple(backend(pg, pid, chain) for pid in sorted(pids))
        yield PoolBackends(database, user, pg.target, backends, _cause(pg, backends))


def _cause(pg: PostgresSnapshot, backends: Iterable[Backend]) -> Cause | None:
    """The root blocker most of the pool's blocked server connections wait behind; else the
    oldest of its server connections idle in transaction (it holds one and does nothing)."""
    backends = list(backends)
    behind = Counter(b.root for b in backends if b.root is not None)
    if behind:
        root = min(behind, key=lambda r: (-behind[r], r))
        return cause(pg, root, [b.pid for b in backends if b.root == root])
    idle = [b for b in backends if b.pg_state == IDLE_IN_TRANSACTION_STATE]
    if idle:
        oldest = max(idle, key=lambda b: (b.transaction_seconds or 0.0, -b.pid))
        return cause(pg, oldest.pid)
    return None


def unmatched(pgb: PgBouncerSnapshot, postgres: Sequence[PostgresSnapshot]
              ) -> list[Database]:
    """The databases (with pools) whose server is none of the configured PostgreSQL
    targets."""
    pooled = {p.database for p in pgb.pools}
    return [db for db in pgb.databases
            if db.name in pooled and postgres_of(db, postgres) is None]


def backends_of(pool: Pool, joined: Iterable[PoolBackends]) -> PoolBackends | None:
    return next((j for j in joined if (j.database, j.user) == (pool.database, pool.user)),
                None)
