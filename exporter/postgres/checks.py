"""The PostgreSQL checks of the diagnosis: pure functions from a snapshot (and the context) to
findings, each with its evidence and what to do. The thresholds are the alert rules'.

Each check is declared once (a `Check`, gathered in CHECKS); a situation that is also an
incident (incidents.py) is judged once, by a condition here (lock_chains, client_stall,
old_transactions) that the finding and the observation both render."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from itertools import compress
from operator import attrgetter

from exporter.finding import ROOT, Check, Context, Finding, age
from exporter.postgres.activity import MAX_BLOCKERS_ASKED, SESSIONS_OF
from exporter.postgres.causes import cause
from exporter.postgres.involved import IDLE_IN_TRANSACTION, stalled_past
from exporter.postgres.locks import lock_roots
from exporter.postgres.snapshot import ActivityGroup, InvalidIndex, PostgresSnapshot, Session
from exporter.prefect.retention import how_to_clean, retention_of
from exporter.prefect.snapshot import PrefectSnapshot

SERVICES_CHANNEL = "prefect_automation_changes"
_STATE, _CLIENT_READ = attrgetter("state"), attrgetter("client_read_in_transaction")


def _who(s: Session) -> str:
    return (f"pid {s.pid} ({s.application_name or 'no application_name'}, {s.usename}@"
            f"{s.datname}, client {s.client_addr or '-'}, {s.state}, transaction "
            f"{age(s.transaction_age)})")


# ---- the checks -------------------------------------------------------------------------------

LOCK_CHAIN = Check(
    "lock_chain", ("critical", "warning"),
    "sessions wait on a lock behind a root blocker (who it is, how many wait, on which table)",
    ("blocked_wait_critical_seconds",), ROOT, incident=True)
CLIENT_READ_STALL = Check(
    "client_read_stall", ("critical",),
    "an active statement waits on its client (ClientRead) inside its transaction",
    ("client_read_stall_critical_seconds",), ROOT, incident=True)
IDLE_IN_TRANSACTION_CHECK = Check(
    "idle_in_transaction", ("critical", "warning"),
    "a transaction idle in transaction for long: it holds its locks and does nothing",
    ("idle_in_transaction_warning_seconds", "idle_in_transaction_critical_seconds"), ROOT,
    incident=True)
LONG_TRANSACTION = Check(
    "long_transaction", ("critical", "warning"),
    "an active transaction running for long: it holds locks and holds back vacuum",
    ("active_transaction_warning_seconds", "active_transaction_critical_seconds"), ROOT)
CONNECTION_BUDGET = Check(
    "connection_budget", ("critical", "warning", "info"),
    "client backends near max_connections - superuser_reserved, or Prefect's pools sized "
    "to exhaust it", ("connections_warning_ratio", "connections_critical_ratio"), ROOT)
DUPLICATED_SERVICES = Check(
    "duplicated_services", ("warning",),
    "more than one copy of Prefect's background services (LISTEN sessions), with no Redis "
    "docket", ("listen_sessions_warning",), ROOT)
NO_IDLE_IN_TRANSACTION_TIMEOUT = Check(
    "no_idle_in_transaction_timeout", ("warning",),
    "idle_in_transaction_session_timeout is off: nothing ends a forgotten transaction")
NO_STATEMENT_TIMEOUT = Check(
    "no_statement_timeout", ("info",), "statement_timeout is off")
HOT_TABLE_BLOAT = Check(
    "hot_table_bloat", ("warning",), "a hot Prefect table carries many dead tuples",
    ("dead_tuples_warning", "dead_tuples_warning_ratio"))
STALE_STATISTICS = Check(
    "stale_statistics", ("warning",),
    "a hot Prefect table changed a lot since its last ANALYZE: stale planner statistics",
    ("stale_statistics_warning_rows", "stale_statistics_warning_ratio"))
INVALID_INDEX = Check(
    "invalid_index", ("warning",),
    "an INVALID index left by a failed CREATE INDEX CONCURRENTLY, with its repair",
    ("invalid_indexes_warning",))
INDEX_BUILD = Check(
    "index_build", ("info",), "an index build (CREATE INDEX, REINDEX) is running")
DEADLOCKS = Check(
    "deadlocks", ("info",), "deadlocks counted in the watched database since the statistics "
    "were reset")
STATEMENTS_UNAVAILABLE = Check(
    "pg_stat_statements_unavailable", ("info",),
    "the slowest statements cannot be shown: pg_stat_statements is not installed or loaded")
TABLE_RETENTION_BACKLOG = Check(
    "table_retention_backlog", ("warning",),
    "a big Prefect table holds rows past the retention that should delete them",
    ("retention_lag_warning_seconds",))
TABLE_UNRETAINED_ROWS = Check(
    "table_unretained_rows", ("warning",),
    "a big Prefect table holds old rows that no retention of this Prefect release deletes",
    ("unretained_rows_warning_seconds",))
OLDEST_ROWS_UNREADABLE = Check(
    "oldest_rows_unreadable", ("info",),
    "how far back a big Prefect table goes cannot be read: the column grant to ask for",
    ("unread_table_warning_bytes",))
DATABASE_GROWING = Check(
    "database_growing", ("warning",),
    "a database over its size budget, or on course to pass it at the growth seen",
    ("database_size_limit_bytes", "database_full_warning_days"))
MISSING_PG_MONITOR = Check(
    "missing_pg_monitor", ("warning",),
    "the exporter's role cannot see other roles' sessions (no pg_monitor)")


# ---- conditions: what a check and its incident (incidents.py) both judge --------------------

@dataclass(frozen=True)
class LockChain:
    """A root blocker (a holder that is not waiting itself) and the sessions waiting behind
    it, as lock_chain judges them."""

    root: int
    behind: frozenset[int]
    holder: Session | None  # the root's details, when the snapshot lists it
    severity: str  # on the longest wait of all, whoever holds the lock (as the alert pages)
    longest_seconds: float  # the longest wait of all the blocked sessions

    @property
    def idle(self) -> bool:
        return self.holder is not None and self.holder.state in IDLE_IN_TRANSACTION


def lock_chains(pg: PostgresSnapshot, t: Mapping[str, float]) -> list[LockChain]:
    if not pg.blocked:
        return []
    holders = {s.pid: s for s in pg.blockers}
    longest = max(b.wait_seconds for b in pg.blocked)
    severity = "critical" if longest > t["blocked_wait_critical_seconds"] else "warning"
    return [LockChain(root, frozenset(behind), holders.get(root), severity, longest)
            for root, behind in lock_roots(pg)]


@dataclass(frozen=True)
class ClientStall:
    """Active statements whose client went silent inside their transaction, the longest past
    the threshold, as client_read_stall judges them (critical: it holds its locks)."""

    groups: tuple[ActivityGroup, ...]  # every activity group with such a statement
    past: tuple[ActivityGroup, ...]  # those whose longest stall is past the threshold
    longest_seconds: float
    threshold: float
    severity: str = "critical"


def client_stall(pg: PostgresSnapshot, t: Mapping[str, float]) -> ClientStall | None:
    stalled = tuple(compress(pg.activity, map(_CLIENT_READ, pg.activity)))
    past = tuple(g for g in stalled if stalled_past(g, t))
    if not past:
        return None
    return ClientStall(stalled, past, max(g.max_state_age or 0.0 for g in stalled),
                       t["client_read_stall_critical_seconds"])


@dataclass(frozen=True)
class OldTransaction:
    """The oldest transaction of one database and application in some states (idle in
    transaction, or active), past the warning threshold, as its check judges it."""

    check: Check  # IDLE_IN_TRANSACTION_CHECK or LONG_TRANSACTION
    states: tuple[str, ...]
    datname: str
    application_name: str
    seconds: float
    severity: str
    warning_seconds: float


# (check, states, warning threshold, critical threshold): as the alert rules group them
TRANSACTIONS = (
    (IDLE_IN_TRANSACTION_CHECK, IDLE_IN_TRANSACTION,
     "idle_in_transaction_warning_seconds", "idle_in_transaction_critical_seconds"),
    (LONG_TRANSACTION, ("active",),
     "active_transaction_warning_seconds", "active_transaction_critical_seconds"),
)


def old_transactions(pg: PostgresSnapshot, t: Mapping[str, float],
                     which: Check) -> list[OldTransaction]:
    """Per database and application, from every session (the activity groups), the oldest
    first."""
    _, states, warn, crit = next(row for row in TRANSACTIONS if row[0] == which)
    oldest: dict[tuple[str, str], float] = {}
    # the groups in these states picked by C loops: hundreds of groups, a few in each state
    for g in compress(pg.activity, map(frozenset(states).__contains__, map(_STATE, pg.activity))):
        if (g.max_transaction_age or 0) > t[warn]:
            key = (g.datname, g.application_name)
            oldest[key] = max(oldest.get(key, 0.0), g.max_transaction_age or 0.0)
    return [OldTransaction(which, states, datname, app, seconds,
                           "critical" if seconds > t[crit] else "warning", t[warn])
            for (datname, app), seconds in sorted(oldest.items(), key=lambda item: -item[1])]


# ---- PostgreSQL ------------------------------------------------------------------------------

def blocking_tree(pg: PostgresSnapshot, ctx: Context) -> Iterator[Finding]:
    """Who blocks whom, down to the root blockers: holders that are not waiting themselves."""
    # in a lock storm pg_blocking_pids() is asked for the longest waits only
    unasked = sum(1 for b in pg.blocked if not b.blocked_by)
    for chain in lock_chains(pg, ctx.thresholds):
        root, behind, holder = chain.root, chain.behind, chain.holder
        evidence = [f"root blocker: {_who(holder)}" if holder else f"root blocker: pid {root}",
                    f"{len(behind)} session(s) wait behind it (pids "
                    f"{', '.join(map(str, sorted(behind)[:10]))}), the longest for "
                    f"{age(chain.longest_seconds)}"]
        tables = sorted({str(pg.involved.waits_on[p]) for p in behind
                         if p in pg.involved.waits_on})
        if tables:
            evidence.append(f"they wait on {', '.join(tables[:5])}")
        if chain.idle:
            evidence.append("it is idle in transaction: it holds its locks and does nothing")
        if unasked:
            evidence.append(f"{unasked} more session(s) wait on locks, whom they wait behind "
                            f"not asked (pg_blocking_pids() for the {MAX_BLOCKERS_ASKED} "
                            "longest waits only)")
        yield LOCK_CHAIN.finding(
            chain.severity, pg.target,
            f"pid {root} blocks {len(behind)} session(s)"
            + (f" (of {len(pg.blocked)} waiting on locks)" if unasked else "")
            + (" while idle in transaction" if chain.idle else ""),
            tuple(evidence),
            f"SELECT pg_terminate_backend({root}); ends it (its transaction rolls back). For "
            "good: idle_in_transaction_session_timeout, lock_timeout for Prefect's role, short "
            "transactions in the client that took the lock.", cause(pg, root, behind))


def stalled_clients(pg: PostgresSnapshot, ctx: Context) -> Iterator[Finding]:
    stall = client_stall(pg, ctx.thresholds)
    if stall is None:
        return
    apps = sorted({g.application_name or "-" for g in stall.groups})
    yield CLIENT_READ_STALL.finding(
        stall.severity, pg.target,
        f"{sum(g.sessions for g in stall.groups)} active statement(s) wait on their client, "
        f"the longest for {age(stall.longest_seconds)}",
        (f"applications: {', '.join(apps[:10])}",
         "active statements waiting on ClientRead: the client stopped sending mid-statement, "
         "inside its transaction, holding its locks"),
        "Look at those clients: an event loop blocked by CPU-bound work, a proxy, a paused "
        "process, a COPY whose sender stalled. Terminate the session if it blocks others; "
        "TCP keepalives and statement_timeout end such stalls for good.")


def long_transactions(pg: PostgresSnapshot, ctx: Context) -> Iterator[Finding]:
    """Transactions idle or active for too long, per database and application, from every
    session (the activity groups), as the alert rules see them; the holder's pid and client
    come from the oldest-transactions list when it names them (--top-transactions)."""
    for which, *_ in TRANSACTIONS:
        for old in old_transactions(pg, ctx.thresholds, which):
            states, datname, app, seconds = (old.states, old.datname, old.application_name,
                                             old.seconds)
            holder = next((s for s in pg.oldest_transactions if s.state in states
                           and (s.datname, s.application_name) == (datname, app)), None)
            yield which.finding(
                old.severity, pg.target,
                f"a transaction {states[0]} for {age(seconds)} ({app or '-'} on {datname})",
                (_who(holder),) if holder else (
                    f"{app or 'no application_name'} on {datname}: its pid is not among the "
                    f"{len(pg.oldest_transactions)} oldest transactions the exporter lists "
                    "(--top-transactions)",),
                (f"SELECT pg_terminate_backend({holder.pid}); if it must not live on. "
                 if holder else "Find it: SELECT pid, state, xact_start FROM pg_stat_activity "
                 "ORDER BY xact_start LIMIT 5; then pg_terminate_backend(pid) if it must not "
                 "live on. ")
                + "Long transactions hold locks and keep vacuum from cleaning Prefect's hot "
                  "tables.", cause(pg, holder.pid) if holder else None)


def connection_budget(pg: PostgresSnapshot, ctx: Context) -> Iterator[Finding]:
    t = ctx.thresholds
    used = sum(map(SESSIONS_OF, pg.activity))  # hundreds of groups: map() is a C loop
    usable = pg.max_connections - pg.superuser_reserved_connections
    if usable <= 0:
        return
    ratio = used / usable
    evidence = [f"{used} client backends of max_connections {pg.max_connections} - "
                f"superuser_reserved_connections {pg.superuser_reserved_connections} = {usable} "
                f"({ratio:.0%})"]
    per_process = None
    prefect = next(iter(ctx.of(PrefectSnapshot)), None)
    if prefect is not None:
        size = prefect.settings.get("server.database.sqlalchemy.pool_size")
        overflow = prefect.settings.get("server.database.sqlalchemy.max_overflow")
        app = prefect.text_settings.get("server.database.sqlalchemy.connect_args.application_name")
        if size is not None and overflow is not None:
            per_process = int(size + overflow)
            evidence.append(f"each Prefect server process may open pool_size {size:g} + "
                            f"max_overflow {overflow:g} = {per_process} connections: "
                            f"{usable // max(per_process, 1)} processes fit in {usable}")
        if app:
            prefect_sessions = sum(g.sessions for g in pg.activity if g.application_name == app)
            evidence.append(f"{prefect_sessions} sessions are Prefect's (application_name "
                            f"{app!r})" + (f", about {-(-prefect_sessions // per_process)} "
                                           f"process(es) at full pools" if per_process else ""))
    if ratio > t["connections_warning_ratio"]:
        yield CONNECTION_BUDGET.finding(
            "critical" if ratio > t["connections_critical_ratio"]
            else "warning", pg.target, f"{ratio:.0%} of the usable connections are in use",
            tuple(evidence),
            "Replicas x workers x (pool_size + max_overflow) + services must fit under "
            "max_connections - superuser_reserved_connections: lower the pools, scale down, or "
            "put PgBouncer (transaction pooling, asyncpg statement caches off) in front.")
    elif per_process is not None and per_process * 2 > usable:
        yield CONNECTION_BUDGET.finding("info", pg.target,
                      "two Prefect server processes at full pools would exhaust the database",
                      tuple(evidence), "Lower pool_size + max_overflow or raise max_connections.")


def duplicated_services(pg: PostgresSnapshot, ctx: Context) -> Iterator[Finding]:
    t = ctx.thresholds
    copies = sum(g.sessions for g in pg.activity if g.listen_channel == SERVICES_CHANNEL)
    if any(pf.services_may_be_replicated for pf in ctx.of(PrefectSnapshot)):
        return  # a Redis docket: several service replicas are supported and expected
    if copies > t["listen_sessions_warning"]:
        apps = sorted({g.application_name or "-" for g in pg.activity
                       if g.listen_channel == SERVICES_CHANNEL})
        yield DUPLICATED_SERVICES.finding(
            "warning", pg.target,
            f"{copies} copies of Prefect's background services are running",
            (f"{copies} sessions LISTEN \"{SERVICES_CHANNEL}\" (applications: "
             f"{', '.join(apps)})",),
            "Run the services once (`prefect server services start` or one `prefect server "
            "start`), every other API replica with `--no-services`.")


def safety_nets(pg: PostgresSnapshot, ctx: Context) -> Iterator[Finding]:
    if pg.timeouts_seconds.get("idle_in_transaction_session_timeout") == 0:
        yield NO_IDLE_IN_TRANSACTION_TIMEOUT.finding(
            "warning", pg.target,
            "idle_in_transaction_session_timeout is off",
            ("a session left idle in transaction holds its locks until someone ends it",),
            "ALTER SYSTEM SET idle_in_transaction_session_timeout = '5min'; "
            "SELECT pg_reload_conf();  (or ALTER ROLE prefect SET ...)")
    if pg.timeouts_seconds.get("statement_timeout") == 0:
        yield NO_STATEMENT_TIMEOUT.finding("info", pg.target, "statement_timeout is off",
                      ("no statement is ever cancelled for running too long",),
                      "ALTER ROLE prefect SET statement_timeout = '60s';")


def hot_tables(pg: PostgresSnapshot, ctx: Context) -> Iterator[Finding]:
    t = ctx.thresholds
    for table in pg.tables:
        ratio = table.dead_tuples / (table.live_tuples + 1)  # as PostgresHotTableBloat
        if table.dead_tuples > t["dead_tuples_warning"] and ratio > t["dead_tuples_warning_ratio"]:
            last = max(table.last_vacuum or 0, table.last_autovacuum or 0)
            yield HOT_TABLE_BLOAT.finding(
                "warning", pg.target,
                f"{table.schema}.{table.table} carries {table.dead_tuples} dead tuples",
                (f"{table.dead_tuples} dead vs {table.live_tuples} live ({ratio:.0%}); last "
                 f"vacuum {age(pg.taken_at - last) + ' ago' if last else 'never'}",),
                f"VACUUM (VERBOSE) {table.schema}.{table.table}; end long transactions that "
                "hold back the horizon; tune autovacuum for this table.")


def stale_statistics(pg: PostgresSnapshot, ctx: Context) -> Iterator[Finding]:
    """A hot table that changed a lot since its last ANALYZE: the planner still plans for the
    table it was, and Prefect's /flow_runs/filter, /count and /history turn to slow plans."""
    t = ctx.thresholds
    for table in pg.tables:
        changed, live = table.modified_since_analyze, table.live_tuples
        ratio = changed / (live + 1)  # as PostgresHotTableStaleStatistics
        if changed <= t["stale_statistics_warning_rows"] or \
                ratio <= t["stale_statistics_warning_ratio"]:
            continue
        name = f"{table.schema}.{table.table}"
        last = table.last_analyze
        evidence = [f"{changed} rows changed since its last ANALYZE, {ratio:.0%} of its "
                    f"{live} live rows; last analyzed "
                    + (f"{age(pg.taken_at - last)} ago" if last else "never")]
        off = "autovacuum_enabled=false" in table.autovacuum_options
        if table.autovacuum_options:
            evidence.append(f"its own autovacuum settings: {', '.join(table.autovacuum_options)}")
        yield STALE_STATISTICS.finding(
            "warning", pg.target,
            f"{name}: {changed} rows changed since its last ANALYZE (stale planner statistics)",
            tuple(evidence),
            f"Now: ANALYZE {name}; (it reads a sample and blocks none of Prefect's reads or "
            "writes). "
            + (f"Autovacuum is off for this table: ALTER TABLE {name} RESET "
               "(autovacuum_enabled); " if off else
               f"So that autovacuum keeps up: ALTER TABLE {name} SET "
               "(autovacuum_analyze_scale_factor = 0.02); ")
            + "and end long transactions that hold autovacuum back.")


def _rebuild(ix: InvalidIndex) -> str:
    """How to repair an invalid index without blocking Prefect's writes."""
    name = f"{ix.schema}.{ix.name}"
    if "_ccnew" in ix.name or "_ccold" in ix.name:
        return (f"DROP INDEX CONCURRENTLY {name}; (a leftover of a failed REINDEX CONCURRENTLY: "
                "the original index is still there and valid)")
    again = ix.definition.replace(" INDEX ", " INDEX CONCURRENTLY ", 1)
    return (f"REINDEX INDEX CONCURRENTLY {name}; or DROP INDEX CONCURRENTLY {name}; then "
            f"re-run {again};"
            + (" It is UNIQUE: remove the duplicate rows that failed it first, or it fails "
               "again." if ix.unique else "")
            + " A Prefect migration's index is not rebuilt by `prefect server database "
              "upgrade` (CREATE INDEX CONCURRENTLY IF NOT EXISTS skips the invalid one).")


def invalid_indexes(pg: PostgresSnapshot, ctx: Context) -> Iterator[Finding]:
    """Each invalid index of the watched database, by name, with its repair."""
    if pg.invalid_index_count <= ctx.thresholds["invalid_indexes_warning"]:
        return
    unnamed = pg.invalid_index_count - len(pg.invalid_indexes)
    for ix in pg.invalid_indexes:
        yield INVALID_INDEX.finding(
            "warning", pg.target,
            f"index {ix.schema}.{ix.name} on {ix.table} is INVALID",
            (f"pg_index.indisvalid is false and no build of it is running in {pg.database}: "
             "a CREATE INDEX CONCURRENTLY or REINDEX CONCURRENTLY failed or was cancelled "
             "(a statement or lock timeout, a restart, a duplicate key)",
             "the planner never uses it, every write still maintains it"
             + (f"; {unnamed} more invalid indexes are not listed" if unnamed > 0 else "")),
            _rebuild(ix))


def index_builds(pg: PostgresSnapshot, ctx: Context) -> Iterator[Finding]:
    for b in pg.index_builds:
        done = "" if b.done_ratio is None else f", {b.done_ratio:.0%} of this phase done"
        yield INDEX_BUILD.finding(
            "info", pg.target,
            f"{b.command} {b.name or '(not named yet)'} on {b.schema}.{b.table} is running",
            (f"pid {b.pid}, phase {b.phase}{done}",),
            "Let it finish: cancelling a CONCURRENTLY build leaves an INVALID index behind. A "
            "Prefect migration building it holds `prefect server database upgrade` until then.")


def deadlocks(pg: PostgresSnapshot, ctx: Context) -> Iterator[Finding]:
    """Deadlocks counted in the watched database. The doctor sees one count since the statistics
    were reset, so this is information; the alert (PostgresDeadlocks) judges their rate."""
    count = next((d.deadlocks for d in pg.databases if d.datname == pg.database), 0)
    if count:
        yield DEADLOCKS.finding(
            "info", pg.target,
            f"{count} deadlock(s) in {pg.database} since its statistics were reset",
            ("PostgreSQL cancelled one transaction of each (ERROR: deadlock detected); "
             "postgres_deadlocks_total's rate says whether they still happen",),
            "The server log (log_lock_waits = on) names the statements. Prefect's known cases: "
            "several background-services copies (task-run recorder, mark_deployments_ready) "
            "updating the same rows; see the runbook PostgresDeadlocks.")


def statements_unavailable(pg: PostgresSnapshot, ctx: Context) -> Iterator[Finding]:
    """The slowest statements need pg_stat_statements in the watched database."""
    top = pg.top_statements
    if top is None or top.status == "read":
        return
    steps = {
        "not installed": "shared_preload_libraries = 'pg_stat_statements' in postgresql.conf "
                         "(a restart), then, in the Prefect database, CREATE EXTENSION "
                         "pg_stat_statements; (pg_monitor can read it).",
        "not loaded": "The extension exists but the library is not loaded: add "
                      "pg_stat_statements to shared_preload_libraries and restart PostgreSQL.",
    }
    yield STATEMENTS_UNAVAILABLE.finding(
        "info", pg.target,
        f"the slowest statements of {pg.database} cannot be shown: pg_stat_statements is "
        f"{top.status}",
        ("without it, slow Prefect API calls (asyncpg TimeoutError, /flow_runs/filter) cannot "
         "be traced to the statements behind them",),
        steps.get(top.status, "Give the exporter's role pg_monitor and a statement_timeout "
                              "the read fits in, or turn it off with --top-statements 0."))


def _days(seconds: float) -> str:
    return f"{seconds / 86400:.1f} days" if seconds >= 2 * 86400 else age(seconds)


def retention_backlog(pg: PostgresSnapshot, ctx: Context) -> Iterator[Finding]:
    """Big Prefect tables holding rows older than the retention that should have deleted them,
    or old rows that no retention of this Prefect release deletes at all. The retention comes
    from the Prefect target's settings and release (exporter/prefect/retention.py)."""
    t = ctx.thresholds
    prefect = next(iter(ctx.of(PrefectSnapshot)), None)
    kept = retention_of(prefect) if prefect else {}
    release = f"Prefect {prefect.version}" if prefect and prefect.version else "this Prefect"
    for r in pg.oldest_rows:
        if r.age_seconds is None:
            continue
        name, keep = f"{r.schema}.{r.table}", kept.get(r.table)
        evidence = f"min({r.column}) is {_days(r.age_seconds)} ago"
        if keep is not None and r.age_seconds - keep.seconds > t["retention_lag_warning_seconds"]:
            yield TABLE_RETENTION_BACKLOG.finding(
                "warning", pg.target,
                f"{name} holds rows {_days(r.age_seconds)} old, "
                f"{_days(r.age_seconds - keep.seconds)} past their retention",
                (evidence, f"{keep.by} should delete them after {_days(keep.seconds)}"),
                how_to_clean(r.table, prefect, r.column))
        elif keep is None and r.age_seconds > t["unretained_rows_warning_seconds"]:
            why = (f"no retention of {release} deletes {r.table} rows" if prefect else
                   "no Prefect API target is configured: its retention settings are unknown")
            yield TABLE_UNRETAINED_ROWS.finding(
                "warning", pg.target,
                f"{name} holds rows {_days(r.age_seconds)} old that nothing deletes",
                (evidence, why),
                how_to_clean(r.table, prefect, r.column))


def oldest_rows_unreadable(pg: PostgresSnapshot, ctx: Context) -> Iterator[Finding]:
    """Big tables whose retention backlog cannot be read: pg_monitor's default. Said only for
    tables past a size (hot-table sizes need no grant), so a small database stays quiet."""
    sizes = {(t.schema, t.table): t.total_bytes for t in pg.tables}
    limit = ctx.thresholds["unread_table_warning_bytes"]
    hidden = [r for r in pg.oldest_rows
              if not r.readable and sizes.get((r.schema, r.table), 0) >= limit]
    if not hidden:
        return
    yield OLDEST_ROWS_UNREADABLE.finding(
        "info", pg.target,
        f"how far back {len(hidden)} big Prefect table(s) go is not read",
        ("pg_monitor cannot read Prefect's rows: the retention backlog of "
         + ", ".join(f"{r.table} ({_bytes(sizes[(r.schema, r.table)])})" for r in hidden)
         + " is unknown",),
        "Opt in, one timestamp column per table and nothing else (min() over an index, once a "
        "minute): " + " ".join(f'GRANT SELECT ("{r.column}") ON {r.schema}.{r.table} TO '
                               f"{pg.role or '<the exporter role>'};" for r in hidden))


def database_growing(pg: PostgresSnapshot, ctx: Context) -> Iterator[Finding]:
    """A database over its size budget, or on course to pass it within the warning window at
    the growth the exporter has seen (the alert: predict_linear over 6 h). Growth needs a
    running exporter's history; a one-shot doctor sees only the size."""
    t = ctx.thresholds
    limit, days = t["database_size_limit_bytes"], t["database_full_warning_days"]
    if limit <= 0:
        return
    for db in pg.databases:
        growth = pg.growth_bytes_per_second.get(db.datname)
        seconds_left = (limit - db.bytes) / growth if growth and growth > 0 else None
        if db.bytes <= limit and (seconds_left is None or seconds_left > days * 86400):
            continue
        trend = (f"growing {_bytes(growth * 86400)}/day over the last hours" if growth
                 else "growth unknown (the exporter needs 30 min of history)")
        yield DATABASE_GROWING.finding(
            "warning", pg.target,
            f"database {db.datname} is {_bytes(db.bytes)} of a {_bytes(limit)} budget"
            + (f": full in {seconds_left / 86400:.1f} days" if seconds_left and
               seconds_left > 0 else ": over it"),
            (trend, "the largest hot tables: " + ", ".join(
                f"{s.table} {_bytes(s.total_bytes)}"
                for s in sorted(pg.tables, key=lambda s: -s.total_bytes)[:3])),
            "Check Prefect's retention (server.events.retention_period; db_vacuum for flow "
            "runs) and the events/log tables' growth against cleanup "
            "(prefect_pg:postgres_table_net_growth_rows:rate1h); VACUUM returns space to "
            "PostgreSQL, not to the disk (pg_repack, VACUUM FULL in a maintenance window).")


def _bytes(value: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def blind_spots(pg: PostgresSnapshot, ctx: Context) -> Iterator[Finding]:
    if not pg.can_read_all_stats:
        yield MISSING_PG_MONITOR.finding(
            "warning", pg.target,
            "the exporter's role cannot see other roles' sessions",
            ("without pg_monitor (pg_read_all_stats), state, query, waits and transaction ages "
             "of other roles read NULL: stuck transactions and lock chains are invisible",),
            "GRANT pg_monitor TO <the exporter's role>;")


CHECKS = (LOCK_CHAIN, CLIENT_READ_STALL, IDLE_IN_TRANSACTION_CHECK, LONG_TRANSACTION,
          CONNECTION_BUDGET, DUPLICATED_SERVICES, NO_IDLE_IN_TRANSACTION_TIMEOUT,
          NO_STATEMENT_TIMEOUT, HOT_TABLE_BLOAT, STALE_STATISTICS, INVALID_INDEX, INDEX_BUILD,
          DEADLOCKS, STATEMENTS_UNAVAILABLE, TABLE_RETENTION_BACKLOG, TABLE_UNRETAINED_ROWS,
          OLDEST_ROWS_UNREADABLE, DATABASE_GROWING, MISSING_PG_MONITOR)

# run in this order: the doctor lists findings of one rank in it
RULES = (blocking_tree, stalled_clients, long_transactions, duplicated_services, safety_nets,
         hot_tables, stale_statistics, invalid_indexes, index_builds, deadlocks,
         statements_unavailable, retention_backlog, oldest_rows_unreadable, database_growing,
         blind_spots, connection_budget)
