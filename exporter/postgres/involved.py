"""Which sessions an incident is about, and which table a blocked session waits on: the pure
decisions behind the source's reads of the involved sessions (source.py holds the SQL).

The source asks for query text and pg_locks only when these say there is something to read,
so a quiet database costs nothing more than before."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

from exporter.postgres.activity import InTransaction
from exporter.postgres.snapshot import ActivityGroup, BlockedSession, Relation, Session

# The states of a session idle in transaction: the one list the checks, the incidents, the
# chain and the join read (the activity SQL in source.py groups by pg_stat_activity.state).
IDLE_IN_TRANSACTION = ("idle in transaction", "idle in transaction (aborted)")
MAX_BLOCKED_DETAILS = 50  # blocked sessions whose details and statements are read, longest first
MAX_OTHER_DETAILS = 50  # stalled clients and idle-in-transaction holders read, oldest first


def stalled_past(g: ActivityGroup, t: Mapping[str, float]) -> bool:
    """An activity group with an active statement whose client went silent inside its
    transaction (ClientRead) for longer than client_read_stall reports."""
    return (g.client_read_in_transaction
            and (g.max_state_age or 0.0) > t["client_read_stall_critical_seconds"])


def stalled_session(s: Session) -> bool:
    """A session read by pid whose active statement waits on its client (the activity SQL's
    client_read_in_transaction, for one session: idle sessions wait on ClientRead too)."""
    return s.state == "active" and s.wait_event == "ClientRead"


def idle_past(g: ActivityGroup, t: Mapping[str, float]) -> bool:
    """An activity group idle in transaction for longer than idle_in_transaction warns."""
    return (g.state in IDLE_IN_TRANSACTION
            and (g.max_transaction_age or 0.0) > t["idle_in_transaction_warning_seconds"])


def stalls_past_thresholds(activity: Iterable[ActivityGroup], t: Mapping[str, float]) -> bool:
    """Whether an active statement whose client went silent, or a session idle in
    transaction, is past the threshold at which the doctor reports it (the activity groups say
    so without a read)."""
    return any(stalled_past(g, t) or idle_past(g, t) for g in activity)


def explicit_pids(blocked: Sequence[BlockedSession]) -> list[int]:
    """Every blocker, and the blocked sessions that waited longest: the sessions of a lock chain
    whose details are read by pid."""
    blockers = {pid for b in blocked for pid in b.blocked_by}
    longest = sorted(blocked, key=lambda b: (-b.wait_seconds, b.pid))[:MAX_BLOCKED_DETAILS]
    return sorted(blockers | {b.pid for b in longest})


def involved_pids(explicit: Sequence[int], in_transaction: Iterable[InTransaction],
                  t: Mapping[str, float]) -> list[int]:
    """The sessions whose details (and statements) the incidents read, in the order they are
    shown: the lock chain's, then the stalled clients and the sessions idle in transaction past
    their thresholds (at most MAX_OTHER_DETAILS); each part oldest transaction first. The
    activity read lists every session in a transaction, so they are chosen here, and only these
    are read again by pid (a session out of any transaction, such as an idle holder of a
    session-level advisory lock, is read all the same)."""
    sessions = sorted(in_transaction)  # pids differ: groups are never compared
    minus_ages = {s.pid: s.minus_age for s in sessions}
    chain = sorted(explicit, key=lambda pid: (pid not in minus_ages, minus_ages.get(pid), pid))
    chained = set(explicit)
    others = [s.pid for s in sessions if s.pid not in chained
              and (stalled_past(s.group, t) or idle_past(s.group, t))]
    return [*chain, *others[:MAX_OTHER_DETAILS]]


class LockRow(NamedTuple):
    """One lock of a blocked session on a table (LOCKS_SQL's columns, in order)."""

    pid: int
    schema: str
    table: str
    granted: bool
    locktype: str


def waited_on(rows: Iterable[LockRow]) -> dict[int, Relation]:
    """The table each blocked session waits on. A session queued behind a row lock waits on the
    holder's transaction id, which names no table: it then holds the tuple lock of the row it
    wants (granted) on that table; failing that, the one table it has locked, if only one."""
    by_pid: dict[int, list[LockRow]] = {}
    for row in rows:
        by_pid.setdefault(row.pid, []).append(row)
    found: dict[int, Relation] = {}
    for pid, locks in by_pid.items():
        relation = (_first(lock for lock in locks if not lock.granted)
                    or _first(lock for lock in locks if lock.locktype == "tuple"))
        tables = {Relation(lock.schema, lock.table) for lock in locks}
        if relation is not None:
            found[pid] = relation
        elif len(tables) == 1:
            found[pid] = tables.pop()
    return found


def _first(locks: Iterable[LockRow]) -> Relation | None:
    lock = next(iter(locks), None)
    return Relation(lock.schema, lock.table) if lock else None
