"""The PostgreSQL incidents a snapshot shows: lock chains, active statements whose client went
silent (ClientRead) and sessions idle in transaction. Pure: snapshot and context in,
observations out.

Each is observed exactly when the doctor's finding of the same name would be reported: both
render the same condition of checks.py (lock_chains, client_stall, old_transactions), and
carries the evidence the doctor shows, structured: who, since when, what statement (masked),
which table."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

from exporter.finding import Context, age
from exporter.incidents.model import MAX_ITEMS, Evidence, Observation, distinct, evidence_of
from exporter.postgres.checks import (
    CLIENT_READ_STALL,
    IDLE_IN_TRANSACTION_CHECK,
    LOCK_CHAIN,
    LockChain,
    client_stall,
    lock_chains,
    old_transactions,
)
from exporter.postgres.involved import stalled_session
from exporter.postgres.snapshot import Involved, PostgresSnapshot, Session


def postgres_incidents(pg: PostgresSnapshot, ctx: Context) -> Iterator[Observation]:
    yield from lock_chain_incidents(pg, ctx)
    yield from client_read_stalls(pg, ctx)
    yield from idle_in_transaction(pg, ctx)


def session_evidence(s: Session | None, pid: int, involved: Involved) -> dict[str, Any]:
    """Who a session is, as the doctor names it, and its statement (a fingerprint)."""
    if s is None:
        return {"pid": pid, "statement": involved.statements.get(pid)}
    return {"pid": s.pid, "application_name": s.application_name, "usename": s.usename,
            "datname": s.datname, "client_addr": s.client_addr, "state": s.state,
            "wait_event": s.wait_event, "transaction_age_seconds": s.transaction_age,
            "state_age_seconds": s.state_age, "statement": involved.statements.get(s.pid)}


def _who(s: Session | None) -> tuple[tuple[str, str], ...]:
    """The cause of a lock chain or a stall: which application, role and database."""
    if s is None:
        return (("application_name", ""), ("usename", ""), ("datname", ""))
    return (("application_name", s.application_name), ("usename", s.usename),
            ("datname", s.datname))


# ---- lock chains -----------------------------------------------------------------------------

def lock_chain_incidents(pg: PostgresSnapshot, ctx: Context) -> Iterator[Observation]:
    """One observation per holder identity (application, role, database): its root blockers
    and everyone behind them. Severity as the doctor's: on the longest wait of all."""
    chains: dict[tuple[tuple[str, str], ...], list[LockChain]] = {}
    for chain in lock_chains(pg, ctx.thresholds):
        chains.setdefault(_who(chain.holder), []).append(chain)
    for cause, roots in chains.items():
        yield _lock_chain(pg, cause, roots)


def _lock_chain(pg: PostgresSnapshot, cause: tuple[tuple[str, str], ...],
                roots: list[LockChain]) -> Observation:
    waits = {b.pid: b.wait_seconds for b in pg.blocked}
    top = max(roots, key=lambda r: (len(r.behind), max(waits.get(p, 0.0) for p in r.behind)))
    root, holder = top.root, top.holder
    behind = sorted(set().union(*(r.behind for r in roots)))
    relations = Counter(str(pg.involved.waits_on[p]) for p in behind
                        if p in pg.involved.waits_on)
    relation = relations.most_common(1)[0][0] if relations else ""
    blocked = [pg.involved.session(p) for p in behind]
    evidence = {
        **session_evidence(holder, root, pg.involved),
        "blocked_sessions": len(behind),
        "blocked_pids": behind[:MAX_ITEMS],
        "longest_wait_seconds": max(waits.get(p, 0.0) for p in behind),
        "relation": relation,
        "relations": [name for name, _ in relations.most_common(5)],
        "blocked_applications": distinct([s.application_name for s in blocked if s]),
        "blocked_statements": distinct([pg.involved.statements.get(p, "") for p in behind],
                                       limit=3),
        "root_pids": [r.root for r in roots] if len(roots) > 1 else None,
    }
    return Observation(
        LOCK_CHAIN.id, pg.target, cause, top.severity,
        f"pid {root} blocks {len(behind)} session(s)"
        + (" while idle in transaction" if top.idle else "")
        + (f" on {relation}" if relation else ""),
        evidence_of(evidence), magnitude=len(behind),
        instances=tuple(str(r.root) for r in roots))


# ---- active statements whose client went silent ----------------------------------------------

def client_read_stalls(pg: PostgresSnapshot, ctx: Context) -> Iterator[Observation]:
    """As the doctor's client_read_stall: when the longest stall passes the threshold; one
    observation per application, role and database with a stall past it."""
    stall = client_stall(pg, ctx.thresholds)
    if stall is None:
        return
    counts: Counter[tuple[tuple[str, str], ...]] = Counter()
    for g in stall.past:
        counts[(("application_name", g.application_name), ("usename", g.usename),
                ("datname", g.datname))] += g.sessions
    for cause, groups_sessions in counts.items():
        sessions = [s for s in pg.involved.sessions
                    if _who(s) == cause and stalled_session(s)
                    and (s.state_age or 0.0) > stall.threshold]
        yield _stall(pg, cause, sessions, groups_sessions, stall.severity)


def _stall(pg: PostgresSnapshot, cause: tuple[tuple[str, str], ...], sessions: list[Session],
           counted: int, severity: str) -> Observation:
    longest = max(sessions, key=lambda s: (s.state_age or 0.0, -s.pid), default=None)
    app = dict(cause)["application_name"] or "-"
    count = len(sessions) or counted
    evidence = {
        **(session_evidence(longest, longest.pid, pg.involved) if longest else {}),
        "stalled_sessions": count,
        "stalled_pids": sorted(s.pid for s in sessions)[:MAX_ITEMS],
    }
    return Observation(
        CLIENT_READ_STALL.id, pg.target, cause, severity,
        f"{count} session(s) of {app} wait on their client inside a transaction"
        + (f", the longest for {age(longest.state_age)}" if longest else ""),
        evidence_of(evidence), magnitude=count,
        instances=tuple(str(s.pid) for s in sessions))


# ---- idle in transaction ---------------------------------------------------------------------

def idle_in_transaction(pg: PostgresSnapshot, ctx: Context) -> Iterator[Observation]:
    """As the doctor's idle_in_transaction: per database and application whose oldest
    transaction idle in transaction is past the warning threshold."""
    candidates = _candidates(pg)
    for old in old_transactions(pg, ctx.thresholds, IDLE_IN_TRANSACTION_CHECK):
        datname, app, seconds = old.datname, old.application_name, old.seconds
        sessions = [s for s in candidates.get((datname, app), ())
                    if s.state in old.states and (s.transaction_age or 0.0) > old.warning_seconds]
        holder = max(sessions, key=lambda s: (s.transaction_age or 0.0, -s.pid), default=None)
        pids = {s.pid for s in sessions}
        evidence: dict[str, Evidence] = evidence_of({
            **(session_evidence(holder, holder.pid, pg.involved) if holder else
               {"application_name": app, "datname": datname}),
            "idle_sessions": len(pids) or None,
        })
        yield Observation(
            IDLE_IN_TRANSACTION_CHECK.id, pg.target,
            (("application_name", app), ("datname", datname)), old.severity,
            f"a transaction idle in transaction for {age(seconds)} ({app or '-'} on "
            f"{datname})" + (f", pid {holder.pid}" if holder else ""),
            evidence, magnitude=len(pids) or 1, instances=tuple(sorted(map(str, pids))))


def _candidates(pg: PostgresSnapshot) -> dict[tuple[str, str], list[Session]]:
    """The sessions read by pid, then the oldest transactions (the doctor's fallback), by
    database and application: hundreds of applications may each have a transaction idle."""
    by_who: dict[tuple[str, str], list[Session]] = {}
    for s in (*pg.involved.sessions, *pg.oldest_transactions):
        by_who.setdefault((s.datname, s.application_name), []).append(s)
    return by_who
