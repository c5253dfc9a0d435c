"""The PgBouncer checks of the diagnosis: pure, snapshot and context in, findings out."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from exporter.finding import Context, Finding
from exporter.pgbouncer.snapshot import PgBouncerSnapshot, Pool


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

    @property
    def name(self) -> str:
        return f"{self.pool.database}/{self.pool.user}"


def waiting_pools(pgb: PgBouncerSnapshot, t: Mapping[str, float]) -> Iterator[WaitingPool]:
    sizes = {db.name: db.values.get("pool_size") for db in pgb.databases}
    for pool in pgb.pools:
        waiting = pool.counts.get("cl_waiting", 0)
        if waiting <= t["pgbouncer_waiting_clients_warning"]:
            continue
        yield WaitingPool(
            pool, "critical" if pool.maxwait_seconds > t["pgbouncer_maxwait_critical_seconds"]
            else "warning", waiting, pool.counts.get("cl_active", 0),
            pool.counts.get("sv_active", 0), sizes.get(pool.database))


def pool_waiters(pgb: PgBouncerSnapshot, ctx: Context) -> Iterator[Finding]:
    for w in waiting_pools(pgb, ctx.thresholds):
        size = w.pool_size if w.pool_size is not None else "?"
        yield Finding(
            "pgbouncer_pool_waiting", w.severity, pgb.target,
            f"{w.waiting} client(s) wait for a server connection in pool {w.name}",
            (f"demand {w.active + w.waiting} clients ({w.active} served, {w.waiting} waiting) "
             f"vs pool_size {size} ({w.servers} server connections busy); the oldest has "
             f"waited {w.pool.maxwait_seconds:.1f}s; pool_mode {w.pool.pool_mode}",),
            "Find what holds the pool's server connections (long or idle transactions on "
            "PostgreSQL). Raise pool_size only if max_connections has room for replicas x "
            "pool sizes.")
