"""The PgBouncer checks of the diagnosis: pure, snapshot and context in, findings out."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from exporter.finding import SYMPTOM, Check, Context, Finding
from exporter.pgbouncer.servers import PoolBackends, backends_of, pool_backends, unmatched
from exporter.pgbouncer.snapshot import PgBouncerSnapshot, Pool
from exporter.postgres.snapshot import PostgresSnapshot

POOL_WAITING = Check(
    "pgbouncer_pool_waiting", ("critical", "warning"),
    "clients wait in a pool for a server connection (and the session that holds it, when "
    "PostgreSQL is a target)",
    ("pgbouncer_waiting_clients_warning", "pgbouncer_maxwait_critical_seconds"), SYMPTOM,
    incident=True)
POSTGRES_UNMATCHED = Check(
    "pgbouncer_postgres_unmatched", ("info",),
    "a pooled database points at no configured PostgreSQL target: its pools cannot be followed")


@dataclass(frozen=True)
class WaitingPool:
    """A pool whose clients wait for a server connection past the threshold, as the doctor
    and the incidents (exporter/pgbouncer/incidents.py) both judge it."""

    pool: Pool
    severity: str  # warning | critical
    waiting: int
    active: int
    servers: int
    pool_size: float | None
    # its server connections as the PostgreSQL behind it sees them, when that is a target
    backends: PoolBackends | None = None

    @property
    def name(self) -> str:
        return f"{self.pool.database}/{self.pool.user}"


def waiting_pools(pgb: PgBouncerSnapshot, t: Mapping[str, float],
                  postgres: Sequence[PostgresSnapshot] = ()) -> Iterator[WaitingPool]:
    sizes = {db.name: db.values.get("pool_size") for db in pgb.databases}
    joined: list[PoolBackends] | None = None
    for pool in pgb.pools:
        waiting = pool.counts.get("cl_waiting", 0)
        if waiting <= t["pgbouncer_waiting_clients_warning"]:
            continue
        if joined is None:  # joined only when a pool waits
            joined = list(pool_backends(pgb, postgres))
        yield WaitingPool(
            pool, "critical" if pool.maxwait_seconds > t["pgbouncer_maxwait_critical_seconds"]
            else "warning", waiting, pool.counts.get("cl_active", 0),
            pool.counts.get("sv_active", 0), sizes.get(pool.database),
            backends_of(pool, joined))


def pool_waiters(pgb: PgBouncerSnapshot, ctx: Context) -> Iterator[Finding]:
    postgres = ctx.of(PostgresSnapshot)
    for w in waiting_pools(pgb, ctx.thresholds, postgres):
        size = w.pool_size if w.pool_size is not None else "?"
        evidence = [f"demand {w.active + w.waiting} clients ({w.active} served, {w.waiting} "
                    f"waiting) vs pool_size {size} ({w.servers} server connections busy); the "
                    f"oldest has waited {w.pool.maxwait_seconds:.1f}s; pool_mode "
                    f"{w.pool.pool_mode}"]
        cause = w.backends.cause if w.backends else None
        if w.backends is not None:
            evidence.append(f"{w.waiting} client(s) wait; {w.backends.describe()}")
        else:
            evidence.append(_blind(pgb, w.pool, postgres))
        yield POOL_WAITING.finding(
            w.severity, pgb.target,
            f"{w.waiting} client(s) wait for a server connection in pool {w.name}"
            + (f": pid {cause.pid} holds it" if cause else ""),
            tuple(evidence),
            (f"SELECT pg_terminate_backend({cause.pid}); on {cause.target} frees the pool (its "
             "transaction rolls back); for good, idle_in_transaction_session_timeout and short "
             "transactions in that client. " if cause else
             "Find what holds the pool's server connections (long or idle transactions on "
             "PostgreSQL). ")
            + "Raise pool_size only if max_connections has room for replicas x pool sizes.",
            cause)


def _blind(pgb: PgBouncerSnapshot, pool: Pool, postgres: Sequence[PostgresSnapshot]) -> str:
    """Why the pool's server connections cannot be followed onto PostgreSQL."""
    db = next((d for d in pgb.databases if d.name == pool.database), None)
    where = f"{db.host or 'the local socket'}:{db.port}" if db else "its server"
    if not postgres:
        return (f"what its server connections do on PostgreSQL ({where}) is not read: that "
                "PostgreSQL is not a target, or its poll failed")
    if not pgb.servers:
        return "SHOW SERVERS listed no server connection: nothing to follow onto PostgreSQL"
    return (f"its PostgreSQL ({where}) is none of the configured PostgreSQL targets: what "
            "holds its server connections is outside what the exporter reads")


def servers_unmatched(pgb: PgBouncerSnapshot, ctx: Context) -> Iterator[Finding]:
    """PostgreSQL targets are configured, but none is the server of a pooled database: the
    pools cannot be followed onto PostgreSQL (a host name where the DSN has an address?)."""
    postgres = ctx.of(PostgresSnapshot)
    if not postgres:
        return
    for db in unmatched(pgb, postgres):
        yield POSTGRES_UNMATCHED.finding(
            "info", pgb.target,
            f"PgBouncer database {db.name} points at {db.host or 'the local socket'}:{db.port}, "
            "which is no configured PostgreSQL target",
            ("PostgreSQL targets: " + ", ".join(
                f"{pg.target} ({pg.address.host or 'local socket'}:{pg.address.port})"
                for pg in postgres),
             "its pools' server connections cannot be joined to pg_stat_activity"),
            "Give the PostgreSQL target the same host and port PgBouncer uses (SHOW DATABASES), "
            "or add that server as a target, so waiting pools name the session that holds "
            "them.")


CHECKS = (POOL_WAITING, POSTGRES_UNMATCHED)
RULES = (pool_waiters, servers_unmatched)
