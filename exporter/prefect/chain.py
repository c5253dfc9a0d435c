"""Prefect API -> PgBouncer -> PostgreSQL: when Prefect's database sessions wait on a lock, or
the PgBouncer pool they go through has clients waiting, the Prefect-side finding names the
session at the root (pid, application, how long, the table). Pure: the fresh snapshots in.

Prefect's sessions are those with its application_name when the server reports one
(server.database.sqlalchemy.connect_args.application_name); otherwise those of its database:
the database of the PostgreSQL targets that hold Prefect's tables (the hot tables the
exporter reads are found in the target's own database)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from exporter.finding import SYMPTOM, Cause, Check, Context, Finding, age
from exporter.pgbouncer.snapshot import PgBouncerSnapshot
from exporter.postgres.causes import cause, session_of
from exporter.postgres.locks import lock_roots
from exporter.postgres.snapshot import PostgresSnapshot
from exporter.prefect.snapshot import PrefectSnapshot

APP_SETTING = "server.database.sqlalchemy.connect_args.application_name"
PREFECT_TABLE = "flow_run"  # a database with this hot table is Prefect's

DATABASE_BLOCKED = Check(
    "prefect_database_blocked", ("critical", "warning"),
    "Prefect's database sessions wait behind a session on PostgreSQL (directly or through "
    "their PgBouncer pool): its API requests hang", ("blocked_wait_critical_seconds",),
    SYMPTOM, incident=True)


@dataclass(frozen=True)
class Blocked:
    """Prefect's sessions waiting behind one root blocker."""

    cause: Cause
    victims: tuple[int, ...]  # Prefect's sessions among those waiting behind it
    longest_seconds: float


def _is_prefect(pg: PostgresSnapshot, app: str) -> Callable[[int], bool]:
    databases = {pg.address.dbname} if any(t.table == PREFECT_TABLE for t in pg.tables) else set()

    def check(pid: int) -> bool:
        s = session_of(pg, pid) or pg.group_of(pid)
        if s is None:
            return False
        return s.application_name == app if app else s.datname in databases

    return check


def blocked_sessions(pg: PostgresSnapshot, app: str) -> list[Blocked]:
    """The root blockers Prefect's sessions wait behind, the most victims first."""
    is_prefect = _is_prefect(pg, app)
    waits = {b.pid: b.wait_seconds for b in pg.blocked}
    found = []
    for root, victims in lock_roots(pg):
        ours = tuple(sorted(p for p in victims if is_prefect(p)))
        if ours:
            found.append(Blocked(cause(pg, root, ours), ours,
                                 max(waits.get(p, 0.0) for p in ours)))
    return sorted(found, key=lambda b: (-len(b.victims), b.cause.pid))


def pool_waits(pgb: PgBouncerSnapshot, ctx: Context, app: str
               ) -> Iterator[tuple[str, Cause | None]]:
    """Waiting PgBouncer pools that serve Prefect (their server connections are Prefect's
    sessions), with what holds each."""
    # imported here: the kinds' packages import each other's snapshots while they initialise
    from exporter.pgbouncer.checks import waiting_pools

    postgres = ctx.of(PostgresSnapshot)
    for w in waiting_pools(pgb, ctx.thresholds, postgres):
        if w.backends is None:
            continue
        pg = next(p for p in postgres if p.target == w.backends.postgres)
        if any(_is_prefect(pg, app)(b.pid) for b in w.backends.backends):
            yield (f"PgBouncer {pgb.target} pool {w.name}: {w.waiting} client(s) wait for a "
                   "server connection"), w.backends.cause


@dataclass(frozen=True)
class PrefectBlocked:
    """The condition: Prefect's database work waits behind one root session (directly on
    PostgreSQL or through its PgBouncer pool). One per root; its finding (the doctor) and its
    incident (the running exporter) are both made from it, so they appear and go together."""

    target: str  # the Prefect target
    cause: Cause
    lines: tuple[str, ...]  # what waits behind it, one line per PostgreSQL target or pool
    longest_seconds: float  # the longest lock wait of Prefect's sessions behind it (0: none)
    sessions: int  # Prefect's sessions waiting on a lock behind it
    pools: int  # PgBouncer pools serving Prefect whose clients wait for what it holds
    app: str  # how Prefect's sessions were told: its application_name; '' by its database
    readable: bool  # the API answered; False: it could not be read meanwhile
    severity: str


def blocked(target: str, pf: PrefectSnapshot | None, ctx: Context) -> list[PrefectBlocked]:
    """Each root that holds Prefect's sessions. `pf` is None when the API could not be read:
    Prefect's sessions are then told by their database, and it is critical (its requests hang
    behind the same root)."""
    app = pf.text_settings.get(APP_SETTING, "") if pf else ""
    causes: dict[tuple[str, int], Cause] = {}
    lines: dict[tuple[str, int], list[str]] = {}
    longest: dict[tuple[str, int], float] = {}
    sessions: dict[tuple[str, int], int] = {}
    pools: dict[tuple[str, int], int] = {}
    for pg in ctx.of(PostgresSnapshot):
        for b in blocked_sessions(pg, app):
            key = b.cause.key
            causes.setdefault(key, b.cause)
            lines.setdefault(key, []).append(
                f"{len(b.victims)} of Prefect's sessions on {pg.target} wait on a lock behind "
                f"it (pids {', '.join(map(str, b.victims[:10]))}), the longest for "
                f"{age(b.longest_seconds)}")
            longest[key] = max(longest.get(key, 0.0), b.longest_seconds)
            sessions[key] = sessions.get(key, 0) + len(b.victims)
    for pgb in ctx.of(PgBouncerSnapshot):
        for line, c in pool_waits(pgb, ctx, app):
            if c is not None:
                causes.setdefault(c.key, c)
                lines.setdefault(c.key, []).append(f"{line}, held by pid {c.pid}")
                pools[c.key] = pools.get(c.key, 0) + 1
    critical_after = ctx.thresholds["blocked_wait_critical_seconds"]
    return [PrefectBlocked(
        target, c, tuple(lines[key]), longest.get(key, 0.0), sessions.get(key, 0),
        pools.get(key, 0), app, pf is not None,
        "critical" if longest.get(key, 0.0) > critical_after or pf is None else "warning")
        for key, c in causes.items()]


def database_blocked(target: str, pf: PrefectSnapshot | None, ctx: Context,
                     failure: str = "") -> Iterator[Finding]:
    """One finding on the Prefect target per root that holds Prefect's sessions (directly on
    PostgreSQL or through its PgBouncer pool). `pf` is None when the API could not be read
    (`failure` says why): its requests hang behind the same root."""
    for b in blocked(target, pf, ctx):
        yield _finding(b, failure)


def title(b: PrefectBlocked) -> str:
    c = b.cause
    table = f", table {c.relation}" if c.relation else ""
    return (f"Prefect's database work waits behind pid {c.pid} (on {c.target}{table}): its API "
            "requests that need it hang")


def _finding(b: PrefectBlocked, failure: str) -> Finding:
    # the API's own latency is its checks' (api_slow): this says what it waits behind
    c = b.cause
    symptom = [] if b.readable else [f"the API could not be read: {failure}"]
    who = ([f"Prefect's sessions told by application_name {b.app!r}"] if b.app else
           ["Prefect's sessions told by their database (Prefect reports no application_name: "
            "set PREFECT_SERVER_DATABASE_SQLALCHEMY_CONNECT_ARGS_APPLICATION_NAME to tell them "
            "from other clients of that database)"])
    return DATABASE_BLOCKED.finding(
        b.severity, b.target, title(b), (f"root: {c}", *b.lines, *symptom, *who),
        f"SELECT pg_terminate_backend({c.pid}); on {c.target} ends it (its transaction rolls "
        "back) and Prefect's requests go through; for good, idle_in_transaction_session_timeout "
        "and lock_timeout, and short transactions in the client that took the lock.",
        c)


def prefect_blocked(pf: PrefectSnapshot, ctx: Context) -> Iterator[Finding]:
    """The check: Prefect's sessions wait behind a root (the API answered)."""
    yield from database_blocked(pf.target, pf, ctx)


def unreadable_blocked(target: str, error: str, ctx: Context) -> Iterator[Finding]:
    """The API could not be read (a timeout, typically) while Prefect's sessions wait behind
    a root: that root is the likely reason."""
    yield from database_blocked(target, None, ctx, error)
