"""Lock chains: who waits behind whom, down to the root blockers. Pure, and apart from the
checks so that the other kinds' joins (exporter/postgres/causes.py) can use it without
importing the checks."""

from __future__ import annotations

from exporter.postgres.snapshot import PostgresSnapshot


def lock_roots(pg: PostgresSnapshot) -> list[tuple[int, set[int]]]:
    """Each root blocker (a holder that is not waiting itself; every holder when they all wait,
    a deadlock in the making) with every session that waits behind it, directly or not. The
    doctor's lock_chain finding and the lock_chain incident are both made of these."""
    waiting = {b.pid for b in pg.blocked}
    blocked_by: dict[int, set[int]] = {}
    for b in pg.blocked:
        for pid in b.blocked_by:
            blocked_by.setdefault(pid, set()).add(b.pid)
    roots = sorted(pid for pid in blocked_by if pid not in waiting)

    def victims(pid: int, seen: set[int]) -> set[int]:
        for child in blocked_by.get(pid, set()) - seen:
            seen.add(child)
            victims(child, seen)
        return seen

    return [(root, victims(root, set())) for root in roots or sorted(blocked_by)]
