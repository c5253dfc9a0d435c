"""What a PostgreSQL snapshot says about one backend, by pid, and the session at the root of
what it waits for: the pure lookups that let PgBouncer's and Prefect's findings name the
session that causes them (exporter/finding.Cause). Nothing here reads the database: the
activity read's groups list their pids, and the lock chain's sessions are read by pid when
there is one (exporter/postgres/involved.py)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import NamedTuple

from exporter.finding import Cause
from exporter.postgres.involved import IDLE_IN_TRANSACTION
from exporter.postgres.locks import lock_roots
from exporter.postgres.snapshot import PostgresSnapshot, Session

# What a backend is doing, as the join of a PgBouncer pool reports it (the pg_state label):
# a bounded set, in the order the doctor lists them.
WAITING_ON_LOCK = "waiting_on_lock"
IDLE_IN_TRANSACTION_STATE = "idle_in_transaction"
# "idle": in no statement and no transaction when PostgreSQL was read (the activity read lists
# the pids of the other backends only), or connected since.
PG_STATES = (IDLE_IN_TRANSACTION_STATE, WAITING_ON_LOCK, "active", "other", "idle")


class Backend(NamedTuple):
    """One backend as the snapshot knows it."""

    pid: int
    pg_state: str  # one of PG_STATES
    application_name: str
    datname: str
    transaction_seconds: float | None  # its own when it is listed by pid, else its group's
    root: int | None  # for a session waiting on a lock: the root blocker it waits behind


def session_of(pg: PostgresSnapshot, pid: int) -> Session | None:
    """A backend's details when the snapshot lists it by pid (blockers, the sessions of
    incidents, the oldest transactions)."""
    return (pg.involved.session(pid)
            or next((s for s in pg.blockers if s.pid == pid), None)
            or next((s for s in pg.oldest_transactions if s.pid == pid), None))


def roots_by_victim(pg: PostgresSnapshot) -> dict[int, int]:
    """For every session waiting on a lock, the root blocker of its chain."""
    return {victim: root for root, victims in lock_roots(pg) for victim in victims}


def backend(pg: PostgresSnapshot, pid: int, roots: dict[int, int] | None = None) -> Backend:
    roots = roots_by_victim(pg) if roots is None else roots
    listed = session_of(pg, pid)
    group = pg.group_of(pid)
    state = listed.state if listed else group.state if group else ""
    app = listed.application_name if listed else group.application_name if group else ""
    datname = listed.datname if listed else group.datname if group else ""
    seconds = (listed.transaction_age if listed
               else group.max_transaction_age if group else None)
    if pid in roots:
        pg_state = WAITING_ON_LOCK
    elif state in IDLE_IN_TRANSACTION:
        pg_state = IDLE_IN_TRANSACTION_STATE
    elif state in ("active", "idle"):
        pg_state = state
    else:
        pg_state = "other" if listed or group else "idle"
    return Backend(pid, pg_state, app, datname, seconds, roots.get(pid))


def cause(pg: PostgresSnapshot, root: int, victims: Iterable[int] = ()) -> Cause:
    """The root blocker `root` (or any backend) as a Cause, with the table its victims wait on
    (the most common one)."""
    listed, group = session_of(pg, root), pg.group_of(root)
    relations = Counter(str(pg.involved.waits_on[p]) for p in victims
                        if p in pg.involved.waits_on)
    return Cause(
        pg.target, root,
        listed.application_name if listed else group.application_name if group else "",
        listed.state if listed else group.state if group else "state unknown",
        listed.transaction_age if listed else group.max_transaction_age if group else None,
        relations.most_common(1)[0][0] if relations else "")
