"""The PgBouncer checks of the diagnosis: pure, snapshot and context in, findings out."""

from __future__ import annotations

from collections.abc import Iterator

from exporter.finding import Context, Finding
from exporter.pgbouncer.snapshot import PgBouncerSnapshot


def pool_waiters(pgb: PgBouncerSnapshot, ctx: Context) -> Iterator[Finding]:
    t = ctx.thresholds
    sizes = {db.name: db.values.get("pool_size") for db in pgb.databases}
    for pool in pgb.pools:
        waiting = pool.counts.get("cl_waiting", 0)
        if waiting <= t["pgbouncer_waiting_clients_warning"]:
            continue
        active = pool.counts.get("cl_active", 0)
        servers = pool.counts.get("sv_active", 0)
        size = sizes.get(pool.database)
        yield Finding(
            "pgbouncer_pool_waiting",
            "critical" if pool.maxwait_seconds > t["pgbouncer_maxwait_critical_seconds"]
            else "warning", pgb.target,
            f"{waiting} client(s) wait for a server connection in pool "
            f"{pool.database}/{pool.user}",
            (f"demand {active + waiting} clients ({active} served, {waiting} waiting) vs "
             f"pool_size {size if size is not None else '?'} ({servers} server connections "
             f"busy); the oldest has waited {pool.maxwait_seconds:.1f}s; pool_mode "
             f"{pool.pool_mode}",),
            "Find what holds the pool's server connections (long or idle transactions on "
            "PostgreSQL). Raise pool_size only if max_connections has room for replicas x "
            "pool sizes.")
