"""The PostgreSQL checks of the diagnosis: pure functions from a snapshot (and the context) to
findings, each with its evidence and what to do. The thresholds are the alert rules'."""

from __future__ import annotations

from collections.abc import Iterator

from exporter.finding import Context, Finding, age
from exporter.postgres.causes import cause
from exporter.postgres.locks import lock_roots
from exporter.postgres.snapshot import InvalidIndex, PostgresSnapshot, Session
from exporter.prefect.retention import how_to_clean, retention_of
from exporter.prefect.snapshot import PrefectSnapshot

SERVICES_CHANNEL = "prefect_automation_changes"


def _who(s: Session) -> str:
    return (f"pid {s.pid} ({s.application_name or 'no application_name'}, {s.usename}@"
            f"{s.datname}, client {s.client_addr or '-'}, {s.state}, transaction "
            f"{age(s.transaction_age)})")


# ---- PostgreSQL ------------------------------------------------------------------------------

def blocking_tree(pg: PostgresSnapshot, ctx: Context) -> Iterator[Finding]:
    """Who blocks whom, down to the root blockers: holders that are not waiting themselves."""
    t = ctx.thresholds
    if not pg.blocked:
        return
    holders = {s.pid: s for s in pg.blockers}
    longest = max(b.wait_seconds for b in pg.blocked)
    for root, behind in lock_roots(pg):
        holder = holders.get(root)
        idle = holder is not None and holder.state.startswith("idle in transaction")
        # as PostgresSessionsBlocked pages: on the wait, whoever holds the lock
        critical = longest > t["blocked_wait_critical_seconds"]
        evidence = [f"root blocker: {_who(holder)}" if holder else f"root blocker: pid {root}",
                    f"{len(behind)} session(s) wait behind it (pids "
                    f"{', '.join(map(str, sorted(behind)[:10]))}), the longest for "
                    f"{age(longest)}"]
        tables = sorted({str(pg.involved.waits_on[p]) for p in behind
                         if p in pg.involved.waits_on})
        if tables:
            evidence.append(f"they wait on {', '.join(tables[:5])}")
        if idle:
            evidence.append("it is idle in transaction: it holds its locks and does nothing")
        yield Finding(
            "lock_chain", "critical" if critical else "warning", pg.target,
            f"pid {root} blocks {len(behind)} session(s)"
            + (" while idle in transaction" if idle else ""),
            tuple(evidence),
            f"SELECT pg_terminate_backend({root}); ends it (its transaction rolls back). For "
            "good: idle_in_transaction_session_timeout, lock_timeout for Prefect's role, short "
            "transactions in the client that took the lock.", cause(pg, root, behind))


def stalled_clients(pg: PostgresSnapshot, ctx: Context) -> Iterator[Finding]:
    t = ctx.thresholds
    stalled = [g for g in pg.activity if g.client_read_in_transaction]
    if not stalled:
        return
    longest = max(g.max_state_age or 0.0 for g in stalled)
    if longest <= t["client_read_stall_critical_seconds"]:
        return
    apps = sorted({g.application_name or "-" for g in stalled})
    yield Finding(
        "client_read_stall", "critical", pg.target,
        f"{sum(g.sessions for g in stalled)} active statement(s) wait on their client, the "
        f"longest for {age(longest)}",
        (f"applications: {', '.join(apps[:10])}",
         "active statements waiting on ClientRead: the client stopped sending mid-statement, "
         "inside its transaction, holding its locks"),
        "Look at those clients: an event loop blocked by CPU-bound work, a proxy, a paused "
        "process, a COPY whose sender stalled. Terminate the session if it blocks others; "
        "TCP keepalives and statement_timeout end such stalls for good.")


# (check, states, warning threshold, critical threshold): as the alert rules group them
TRANSACTION_CHECKS = (
    ("idle_in_transaction", ("idle in transaction", "idle in transaction (aborted)"),
     "idle_in_transaction_warning_seconds", "idle_in_transaction_critical_seconds"),
    ("long_transaction", ("active",),
     "active_transaction_warning_seconds", "active_transaction_critical_seconds"),
)


def long_transactions(pg: PostgresSnapshot, ctx: Context) -> Iterator[Finding]:
    """Transactions idle or active for too long, per database and application, from every
    session (the activity groups), as the alert rules see them; the holder's pid and client
    come from the oldest-transactions list when it names them (--top-transactions)."""
    t = ctx.thresholds
    for check, states, warn, crit in TRANSACTION_CHECKS:
        oldest: dict[tuple[str, str], float] = {}
        for g in pg.activity:
            if g.state in states and (g.max_transaction_age or 0) > t[warn]:
                key = (g.datname, g.application_name)
                oldest[key] = max(oldest.get(key, 0.0), g.max_transaction_age or 0.0)
        for (datname, app), seconds in sorted(oldest.items(), key=lambda item: -item[1]):
            holder = next((s for s in pg.oldest_transactions if s.state in states
                           and (s.datname, s.application_name) == (datname, app)), None)
            yield Finding(
                check, "critical" if seconds > t[crit] else "warning", pg.target,
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
    used = sum(g.sessions for g in pg.activity)
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
        yield Finding(
            "connection_budget", "critical" if ratio > t["connections_critical_ratio"]
            else "warning", pg.target, f"{ratio:.0%} of the usable connections are in use",
            tuple(evidence),
            "Replicas x workers x (pool_size + max_overflow) + services must fit under "
            "max_connections - superuser_reserved_connections: lower the pools, scale down, or "
            "put PgBouncer (transaction pooling, asyncpg statement caches off) in front.")
    elif per_process is not None and per_process * 2 > usable:
        yield Finding("connection_budget", "info", pg.target,
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
        yield Finding(
            "duplicated_services", "warning", pg.target,
            f"{copies} copies of Prefect's background services are running",
            (f"{copies} sessions LISTEN \"{SERVICES_CHANNEL}\" (applications: "
             f"{', '.join(apps)})",),
            "Run the services once (`prefect server services start` or one `prefect server "
            "start`), every other API replica with `--no-services`.")


def safety_nets(pg: PostgresSnapshot, ctx: Context) -> Iterator[Finding]:
    if pg.timeouts_seconds.get("idle_in_transaction_session_timeout") == 0:
        yield Finding(
            "no_idle_in_transaction_timeout", "warning", pg.target,
            "idle_in_transaction_session_timeout is off",
            ("a session left idle in transaction holds its locks until someone ends it",),
            "ALTER SYSTEM SET idle_in_transaction_session_timeout = '5min'; "
            "SELECT pg_reload_conf();  (or ALTER ROLE prefect SET ...)")
    if pg.timeouts_seconds.get("statement_timeout") == 0:
        yield Finding("no_statement_timeout", "info", pg.target, "statement_timeout is off",
                      ("no statement is ever cancelled for running too long",),
                      "ALTER ROLE prefect SET statement_timeout = '60s';")


def hot_tables(pg: PostgresSnapshot, ctx: Context) -> Iterator[Finding]:
    t = ctx.thresholds
    for table in pg.tables:
        ratio = table.dead_tuples / (table.live_tuples + 1)  # as PostgresHotTableBloat
        if table.dead_tuples > t["dead_tuples_warning"] and ratio > t["dead_tuples_warning_ratio"]:
            last = max(table.last_vacuum or 0, table.last_autovacuum or 0)
            yield Finding(
                "hot_table_bloat", "warning", pg.target,
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
        yield Finding(
            "stale_statistics", "warning", pg.target,
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
        yield Finding(
            "invalid_index", "warning", pg.target,
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
        yield Finding(
            "index_build", "info", pg.target,
            f"{b.command} {b.name or '(not named yet)'} on {b.schema}.{b.table} is running",
            (f"pid {b.pid}, phase {b.phase}{done}",),
            "Let it finish: cancelling a CONCURRENTLY build leaves an INVALID index behind. A "
            "Prefect migration building it holds `prefect server database upgrade` until then.")


def deadlocks(pg: PostgresSnapshot, ctx: Context) -> Iterator[Finding]:
    """Deadlocks counted in the watched database. The doctor sees one count since the statistics
    were reset, so this is information; the alert (PostgresDeadlocks) judges their rate."""
    count = next((d.deadlocks for d in pg.databases if d.datname == pg.database), 0)
    if count:
        yield Finding(
            "deadlocks", "info", pg.target,
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
    yield Finding(
        "pg_stat_statements_unavailable", "info", pg.target,
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
            yield Finding(
                "table_retention_backlog", "warning", pg.target,
                f"{name} holds rows {_days(r.age_seconds)} old, "
                f"{_days(r.age_seconds - keep.seconds)} past their retention",
                (evidence, f"{keep.by} should delete them after {_days(keep.seconds)}"),
                how_to_clean(r.table, prefect, r.column))
        elif keep is None and r.age_seconds > t["unretained_rows_warning_seconds"]:
            why = (f"no retention of {release} deletes {r.table} rows" if prefect else
                   "no Prefect API target is configured: its retention settings are unknown")
            yield Finding(
                "table_unretained_rows", "warning", pg.target,
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
    yield Finding(
        "oldest_rows_unreadable", "info", pg.target,
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
        yield Finding(
            "database_growing", "warning", pg.target,
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
        yield Finding(
            "missing_pg_monitor", "warning", pg.target,
            "the exporter's role cannot see other roles' sessions",
            ("without pg_monitor (pg_read_all_stats), state, query, waits and transaction ages "
             "of other roles read NULL: stuck transactions and lock chains are invisible",),
            "GRANT pg_monitor TO <the exporter's role>;")


CHECKS = (blocking_tree, stalled_clients, long_transactions, duplicated_services, safety_nets,
          hot_tables, stale_statistics, invalid_indexes, index_builds, deadlocks,
          statements_unavailable, retention_backlog, oldest_rows_unreadable, database_growing,
          blind_spots, connection_budget)


def postgres_checks(pg: PostgresSnapshot, ctx: Context) -> Iterator[Finding]:
    for check in CHECKS:
        yield from check(pg, ctx)
