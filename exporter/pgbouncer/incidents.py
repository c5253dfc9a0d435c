"""The PgBouncer incidents a snapshot shows: pools with clients waiting for a server
connection. Pure; observed exactly when the doctor's pgbouncer_pool_waiting finding would be,
one per pool."""

from __future__ import annotations

from collections.abc import Iterator

from exporter.finding import Context
from exporter.incidents.model import Observation, evidence_of
from exporter.pgbouncer.snapshot import PgBouncerSnapshot


def pool_waiting(pgb: PgBouncerSnapshot, ctx: Context) -> Iterator[Observation]:
    t = ctx.thresholds
    sizes = {db.name: db.values.get("pool_size") for db in pgb.databases}
    for pool in pgb.pools:
        waiting = pool.counts.get("cl_waiting", 0)
        if waiting <= t["pgbouncer_waiting_clients_warning"]:
            continue
        name = f"{pool.database}/{pool.user}"
        yield Observation(
            "pgbouncer_pool_waiting", pgb.target,
            (("database", pool.database), ("user", pool.user)),
            "critical" if pool.maxwait_seconds > t["pgbouncer_maxwait_critical_seconds"]
            else "warning",
            f"{waiting} client(s) wait for a server connection in pool {name}",
            evidence_of({"pool": name, "waiting_clients": waiting,
                         "active_clients": pool.counts.get("cl_active", 0),
                         "server_connections": pool.counts.get("sv_active", 0),
                         "pool_size": sizes.get(pool.database),
                         "maxwait_seconds": pool.maxwait_seconds,
                         "pool_mode": pool.pool_mode}),
            magnitude=waiting)
