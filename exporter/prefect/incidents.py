"""The Prefect incidents a snapshot shows: Prefect's database work waiting behind a session on
PostgreSQL (prefect_database_blocked). Pure; observed exactly when the doctor's finding would be:
both are made from chain.blocked, with the API read (a full poll) or not (a failed poll's probe
snapshot, whose finding the doctor makes from the failure: Prefect's sessions are then told by
their database, and it is critical).

One incident per PostgreSQL target and application of the root: a storm of short blocks by one
application is one incident with occurrences (the root's pid tells them apart)."""

from __future__ import annotations

from collections.abc import Iterator

from exporter.finding import Context
from exporter.incidents.model import Observation, evidence_of
from exporter.prefect.chain import DATABASE_BLOCKED, PrefectBlocked, blocked, title
from exporter.prefect.snapshot import PrefectProbeSnapshot, PrefectSnapshot


def prefect_incidents(snap: PrefectProbeSnapshot, ctx: Context) -> Iterator[Observation]:
    pf = snap if isinstance(snap, PrefectSnapshot) else None
    for b in blocked(snap.target, pf, ctx):
        yield _observation(b)


def _observation(b: PrefectBlocked) -> Observation:
    c = b.cause
    evidence = evidence_of({
        "pid": c.pid, "application_name": c.application_name, "state": c.state,
        "transaction_age_seconds": c.transaction_seconds, "relation": c.relation,
        "postgres_target": c.target,
        "prefect_sessions_waiting": b.sessions or None,
        "longest_wait_seconds": b.longest_seconds if b.sessions else None,
        "waiting_pools": b.pools or None,
        "waits": list(b.lines),
        "prefect_sessions_told_by": (f"application_name {b.app}" if b.app else "database"),
        "api_readable": b.readable,
    })
    return Observation(
        DATABASE_BLOCKED.id, b.target,
        (("postgres_target", c.target), ("application_name", c.application_name)),
        b.severity, title(b), evidence, magnitude=max(b.sessions, 1),
        instances=(str(c.pid),))
