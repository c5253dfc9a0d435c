"""The PgBouncer incidents a snapshot shows: pools with clients waiting for a server
connection. Pure; observed exactly when the doctor's pgbouncer_pool_waiting finding would be
(both judge the pools with checks.waiting_pools), one per pool, with what its server
connections do on PostgreSQL and the session that holds them as evidence."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from exporter.finding import Context
from exporter.incidents.model import Observation, evidence_of
from exporter.pgbouncer.checks import POOL_WAITING, WaitingPool, waiting_pools
from exporter.pgbouncer.snapshot import PgBouncerSnapshot
from exporter.postgres.causes import PG_STATES
from exporter.postgres.snapshot import PostgresSnapshot


def pool_waiting(pgb: PgBouncerSnapshot, ctx: Context) -> Iterator[Observation]:
    for w in waiting_pools(pgb, ctx.thresholds, ctx.of(PostgresSnapshot)):
        yield Observation(
            POOL_WAITING.id, pgb.target,
            (("database", w.pool.database), ("user", w.pool.user)), w.severity,
            f"{w.waiting} client(s) wait for a server connection in pool {w.name}",
            evidence_of({"pool": w.name, "waiting_clients": w.waiting,
                         "active_clients": w.active, "server_connections": w.servers,
                         "pool_size": w.pool_size, "maxwait_seconds": w.pool.maxwait_seconds,
                         "pool_mode": w.pool.pool_mode, **_chain(w)}),
            magnitude=w.waiting)


def _chain(w: WaitingPool) -> dict[str, Any]:
    """The chain, as evidence: the pool's server connections by what they do on PostgreSQL,
    and the session at the root."""
    if w.backends is None:
        return {}
    c = w.backends.cause
    return {"postgres_target": w.backends.postgres,
            "server_backends": ", ".join(f"{n} {s}" for s in PG_STATES
                                         if (n := w.backends.count(s))),
            "cause_pid": c.pid if c else None,
            "cause_application_name": c.application_name if c else None,
            "cause_state": c.state if c else None,
            "cause_transaction_seconds": c.transaction_seconds if c else None,
            "cause_relation": c.relation or None if c else None}
