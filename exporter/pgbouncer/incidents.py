"""The PgBouncer incidents a snapshot shows: pools with clients waiting for a server
connection. Pure; observed exactly when the doctor's pgbouncer_pool_waiting finding would be
(both judge the pools with checks.waiting_pools), one per pool."""

from __future__ import annotations

from collections.abc import Iterator

from exporter.finding import Context
from exporter.incidents.model import Observation, evidence_of
from exporter.pgbouncer.checks import waiting_pools
from exporter.pgbouncer.snapshot import PgBouncerSnapshot


def pool_waiting(pgb: PgBouncerSnapshot, ctx: Context) -> Iterator[Observation]:
    for w in waiting_pools(pgb, ctx.thresholds):
        yield Observation(
            "pgbouncer_pool_waiting", pgb.target,
            (("database", w.pool.database), ("user", w.pool.user)), w.severity,
            f"{w.waiting} client(s) wait for a server connection in pool {w.name}",
            evidence_of({"pool": w.name, "waiting_clients": w.waiting,
                         "active_clients": w.active, "server_connections": w.servers,
                         "pool_size": w.pool_size, "maxwait_seconds": w.pool.maxwait_seconds,
                         "pool_mode": w.pool.pool_mode}),
            magnitude=w.waiting)
