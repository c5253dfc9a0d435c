"""The diagnosis: pure functions from the latest snapshots to ranked findings.

Each check looks at one failure mode of a self-hosted Prefect database and, when it sees it,
says what is wrong, the evidence (pids, applications, ages, pools), and what to do. The
thresholds are the alert rules' (exporter/alerting.py), so the doctor and the pager agree.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from exporter.alerting import thresholds
from exporter.sources.pgbouncer import PgBouncerSnapshot
from exporter.sources.postgres import PostgresSnapshot, Session
from exporter.sources.prefect import PrefectSnapshot

SEVERITY_RANK = {"critical": 0, "warning": 1, "info": 2}
SERVICES_CHANNEL = "prefect_automation_changes"
STATEMENT_CACHE = "server.database.sqlalchemy.connect_args.statement_cache_size"
PREPARED_CACHE = "server.database.sqlalchemy.connect_args.prepared_statement_cache_size"


@dataclass(frozen=True)
class Finding:
    check: str  # a stable identifier, also the metric label
    severity: str  # critical | warning | info
    target: str
    title: str
    evidence: tuple[str, ...]
    action: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SourceFailure:
    kind: str
    target: str
    error: str


@dataclass(frozen=True)
class Snapshots:
    """What the diagnosis reads: the latest fresh snapshot of each target, and the failures."""

    postgres: dict[str, PostgresSnapshot] = field(default_factory=dict)
    pgbouncer: dict[str, PgBouncerSnapshot] = field(default_factory=dict)
    prefect: dict[str, PrefectSnapshot] = field(default_factory=dict)
    failures: tuple[SourceFailure, ...] = ()


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}min"
    return f"{seconds / 3600:.1f}h"


def _who(s: Session) -> str:
    return (f"pid {s.pid} ({s.application_name or 'no application_name'}, {s.usename}@"
            f"{s.datname}, client {s.client_addr or '-'}, {s.state}, transaction "
            f"{_age(s.transaction_age)})")


# ---- PostgreSQL ------------------------------------------------------------------------------

def blocking_tree(target: str, pg: PostgresSnapshot, t: dict[str, float]) -> Iterator[Finding]:
    """Who blocks whom, down to the root blockers: holders that are not waiting themselves."""
    if not pg.blocked:
        return
    waiting = {b.pid for b in pg.blocked}
    holders = {s.pid: s for s in pg.blockers}
    blocked_by: dict[int, set[int]] = {}
    for b in pg.blocked:
        for pid in b.blocked_by:
            blocked_by.setdefault(pid, set()).add(b.pid)
    roots = sorted(pid for pid in blocked_by if pid not in waiting)
    longest = max(b.wait_seconds for b in pg.blocked)

    def victims(pid: int, seen: set[int]) -> set[int]:
        for child in blocked_by.get(pid, set()) - seen:
            seen.add(child)
            victims(child, seen)
        return seen

    for root in roots or sorted(blocked_by):
        holder = holders.get(root)
        behind = victims(root, set())
        idle = holder is not None and holder.state.startswith("idle in transaction")
        critical = idle or longest > t["blocked_wait_critical_seconds"]
        evidence = [f"root blocker: {_who(holder)}" if holder else f"root blocker: pid {root}",
                    f"{len(behind)} session(s) wait behind it (pids "
                    f"{', '.join(map(str, sorted(behind)[:10]))}), the longest for "
                    f"{_age(longest)}"]
        if idle:
            evidence.append("it is idle in transaction: it holds its locks and does nothing")
        yield Finding(
            "lock_chain", "critical" if critical else "warning", target,
            f"pid {root} blocks {len(behind)} session(s)"
            + (" while idle in transaction" if idle else ""),
            tuple(evidence),
            f"SELECT pg_terminate_backend({root}); ends it (its transaction rolls back). For "
            "good: idle_in_transaction_session_timeout, lock_timeout for Prefect's role, short "
            "transactions in the client that took the lock.")


def stalled_clients(target: str, pg: PostgresSnapshot, t: dict[str, float]) -> Iterator[Finding]:
    stalled = [g for g in pg.activity if g.client_read_in_transaction]
    if not stalled:
        return
    longest = max(g.max_state_age or 0.0 for g in stalled)
    if longest <= t["client_read_stall_critical_seconds"]:
        return
    active = [g for g in stalled if g.state == "active"]
    apps = sorted({g.application_name or "-" for g in stalled})
    yield Finding(
        "client_read_stall", "critical", target,
        f"{sum(g.sessions for g in stalled)} session(s) wait on their client inside a "
        f"transaction, the longest for {_age(longest)}",
        (f"applications: {', '.join(apps[:10])}",
         f"{sum(g.sessions for g in active)} of them are active statements waiting on ClientRead "
         "(the client stopped sending mid-statement); the rest are idle in transaction"),
        "Look at those clients: an event loop blocked by CPU-bound work, a proxy, a paused "
        "process. Terminate the session if it blocks others; idle_in_transaction_session_timeout "
        "and TCP keepalives end such stalls for good.")


def long_transactions(target: str, pg: PostgresSnapshot, t: dict[str, float]) -> Iterator[Finding]:
    limits = {"idle in transaction": ("idle_in_transaction_warning_seconds",
                                      "idle_in_transaction_critical_seconds"),
              "idle in transaction (aborted)": ("idle_in_transaction_warning_seconds",
                                                "idle_in_transaction_critical_seconds"),
              "active": ("active_transaction_warning_seconds",
                         "active_transaction_critical_seconds")}
    for s in pg.oldest_transactions:
        warn, crit = limits.get(s.state, (None, None))
        if warn is None or crit is None or (s.transaction_age or 0) <= t[warn]:
            continue
        severity = "critical" if (s.transaction_age or 0) > t[crit] else "warning"
        yield Finding(
            "long_transaction", severity, target,
            f"a transaction {s.state} for {_age(s.transaction_age)}", (_who(s),),
            f"SELECT pg_terminate_backend({s.pid}); if it must not live on. Long transactions "
            "hold locks and keep vacuum from cleaning Prefect's hot tables.")


def connection_budget(target: str, pg: PostgresSnapshot, prefect: PrefectSnapshot | None,
                      t: dict[str, float]) -> Iterator[Finding]:
    used = sum(g.sessions for g in pg.activity)
    usable = pg.max_connections - pg.superuser_reserved_connections
    if usable <= 0:
        return
    ratio = used / usable
    evidence = [f"{used} client backends of max_connections {pg.max_connections} - "
                f"superuser_reserved_connections {pg.superuser_reserved_connections} = {usable} "
                f"({ratio:.0%})"]
    per_process = None
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
            else "warning", target, f"{ratio:.0%} of the usable connections are in use",
            tuple(evidence),
            "Replicas x workers x (pool_size + max_overflow) + services must fit under "
            "max_connections - superuser_reserved_connections: lower the pools, scale down, or "
            "put PgBouncer (transaction pooling, asyncpg statement caches off) in front.")
    elif per_process is not None and per_process * 2 > usable:
        yield Finding("connection_budget", "info", target,
                      "two Prefect server processes at full pools would exhaust the database",
                      tuple(evidence), "Lower pool_size + max_overflow or raise max_connections.")


def duplicated_services(target: str, pg: PostgresSnapshot, t: dict[str, float]
                        ) -> Iterator[Finding]:
    copies = sum(g.sessions for g in pg.activity if g.listen_channel == SERVICES_CHANNEL)
    if copies > t["listen_sessions_warning"]:
        apps = sorted({g.application_name or "-" for g in pg.activity
                       if g.listen_channel == SERVICES_CHANNEL})
        yield Finding(
            "duplicated_services", "warning", target,
            f"{copies} copies of Prefect's background services are running",
            (f"{copies} sessions LISTEN \"{SERVICES_CHANNEL}\" (applications: "
             f"{', '.join(apps)})",),
            "Run the services once (`prefect server services start` or one `prefect server "
            "start`), every other API replica with `--no-services`.")


def safety_nets(target: str, pg: PostgresSnapshot, t: dict[str, float]) -> Iterator[Finding]:
    if pg.timeouts_seconds.get("idle_in_transaction_session_timeout") == 0:
        yield Finding(
            "no_idle_in_transaction_timeout", "warning", target,
            "idle_in_transaction_session_timeout is off",
            ("a session left idle in transaction holds its locks until someone ends it",),
            "ALTER SYSTEM SET idle_in_transaction_session_timeout = '5min'; "
            "SELECT pg_reload_conf();  (or ALTER ROLE prefect SET ...)")
    if pg.timeouts_seconds.get("statement_timeout") == 0:
        yield Finding("no_statement_timeout", "info", target, "statement_timeout is off",
                      ("no statement is ever cancelled for running too long",),
                      "ALTER ROLE prefect SET statement_timeout = '60s';")


def hot_tables(target: str, pg: PostgresSnapshot, t: dict[str, float]) -> Iterator[Finding]:
    for table in pg.tables:
        ratio = table.dead_tuples / max(table.live_tuples, 1)
        if table.dead_tuples > t["dead_tuples_warning"] and ratio > t["dead_tuples_warning_ratio"]:
            last = max(table.last_vacuum or 0, table.last_autovacuum or 0)
            yield Finding(
                "hot_table_bloat", "warning", target,
                f"{table.schema}.{table.table} carries {table.dead_tuples} dead tuples",
                (f"{table.dead_tuples} dead vs {table.live_tuples} live ({ratio:.0%}); last "
                 f"vacuum {_age(pg.taken_at - last) + ' ago' if last else 'never'}",),
                f"VACUUM (VERBOSE) {table.schema}.{table.table}; end long transactions that "
                "hold back the horizon; tune autovacuum for this table.")


def blind_spots(target: str, pg: PostgresSnapshot, t: dict[str, float]) -> Iterator[Finding]:
    if not pg.can_read_all_stats:
        yield Finding(
            "missing_pg_monitor", "warning", target,
            "the exporter's role cannot see other roles' sessions",
            ("without pg_monitor (pg_read_all_stats), state, query, waits and transaction ages "
             "of other roles read NULL: stuck transactions and lock chains are invisible",),
            "GRANT pg_monitor TO <the exporter's role>;")


# ---- PgBouncer and Prefect -------------------------------------------------------------------

def pool_waiters(target: str, pgb: PgBouncerSnapshot, t: dict[str, float]) -> Iterator[Finding]:
    sizes = {db.name: db.values.get("pool_size") for db in pgb.databases}
    for pool in pgb.pools:
        waiting = pool.counts.get("cl_waiting", 0)
        if waiting <= t["pgbouncer_waiting_clients_warning"]:
            continue
        active = pool.counts.get("cl_active", 0)
        servers = pool.counts.get("sv_active", 0)
        size = sizes.get(pool.database)
        yield Finding(
            "pgbouncer_pool_waiting",
            "critical" if pool.maxwait_seconds > t["pgbouncer_maxwait_critical_seconds"]
            else "warning", target,
            f"{waiting} client(s) wait for a server connection in pool "
            f"{pool.database}/{pool.user}",
            (f"demand {active + waiting} clients ({active} served, {waiting} waiting) vs "
             f"pool_size {size if size is not None else '?'} ({servers} server connections "
             f"busy); the oldest has waited {pool.maxwait_seconds:.1f}s; pool_mode "
             f"{pool.pool_mode}",),
            "Find what holds the pool's server connections (long or idle transactions on "
            "PostgreSQL). Raise pool_size only if max_connections has room for replicas x "
            "pool sizes.")


def statement_cache(pgbs: Iterable[PgBouncerSnapshot], prefect: PrefectSnapshot | None,
                    target: str) -> Iterator[Finding]:
    transaction_pools = [p for s in pgbs for p in s.pools if p.pool_mode == "transaction"]
    if not transaction_pools or prefect is None or not prefect.settings:
        return  # no transaction pooling, or no settings to tell (Prefect Cloud has none)
    caches = {k: prefect.settings.get(k) for k in (STATEMENT_CACHE, PREPARED_CACHE)}
    if all(v == 0 for v in caches.values()):
        return
    yield Finding(
        "statement_cache_with_transaction_pooling", "critical", target,
        "PgBouncer pools in transaction mode, but Prefect's asyncpg statement caches are on",
        (f"transaction pooling: {', '.join(sorted({p.database for p in transaction_pools}))}",
         "Prefect reports " + ", ".join(f"{k.rsplit('.', 1)[1]}="
                                        f"{'unset' if v is None else f'{v:g}'}"
                                        for k, v in caches.items())),
        "Set PREFECT_SERVER_DATABASE_SQLALCHEMY_CONNECT_ARGS_STATEMENT_CACHE_SIZE=0 and "
        "..._PREPARED_STATEMENT_CACHE_SIZE=0 (single underscore) on every Prefect server "
        "process, or expect `prepared statement \"__asyncpg_stmt_...\" does not exist`.")


def scheduling(target: str, pf: PrefectSnapshot, t: dict[str, float]) -> Iterator[Finding]:
    now = pf.taken_at
    for pool in pf.pools:
        counts = pf.pool_counts.get(pool.name)
        if counts is None or counts.backlog == 0:
            continue
        delay = now - counts.oldest_backlog_start if counts.oldest_backlog_start else 0.0
        if pool.paused or pool.online_workers == 0:
            yield Finding(
                "work_pool_unserved", "critical" if counts.late else "warning", target,
                f"work pool {pool.name} has {counts.backlog} overdue run(s) and "
                + ("is paused" if pool.paused else "no online worker"),
                (f"{counts.backlog} SCHEDULED past their start ({counts.late} Late), the oldest "
                 f"{_age(delay)} overdue; {pool.online_workers} of {pool.workers} workers "
                 f"online; status {pool.status}",),
                f"prefect work-pool resume {pool.name}" if pool.paused
                else f"start a worker: prefect worker start --pool {pool.name}")
        elif delay > t["backlog_delay_warning_seconds"] or counts.late > t["late_runs_warning"]:
            yield Finding(
                "scheduled_backlog", "warning", target,
                f"work pool {pool.name}: {counts.backlog} overdue run(s), {counts.late} Late",
                (f"the oldest is {_age(delay)} overdue; {pool.online_workers} worker(s) online, "
                 f"{counts.in_flight} run(s) in flight, concurrency limit "
                 f"{pool.concurrency_limit if pool.concurrency_limit is not None else 'none'}",),
                "Workers cannot keep up or the pool's concurrency limit is reached; add workers "
                "or raise the limit, and check the database alerts (workers poll through it).")
    if pf.scheduled_future > t["scheduled_runs_warning"]:
        s = pf.settings
        yield Finding(
            "scheduler_horizon", "warning", target,
            f"{pf.scheduled_future} future SCHEDULED runs: the scheduler creates far too many",
            (f"scheduler max_runs {s.get('server.services.scheduler.max_runs', '?')}, "
             f"max_scheduled_time "
             f"{_age(s.get('server.services.scheduler.max_scheduled_time'))}",),
            "Lower PREFECT_SERVER_SERVICES_SCHEDULER_MAX_RUNS and ..._MAX_SCHEDULED_TIME (e.g. "
            "P7D); look for deployments with very short intervals.")


def source_failures(failures: Sequence[SourceFailure]) -> Iterator[Finding]:
    for f in failures:
        yield Finding("source_down", "critical", f.target, f"cannot read {f.kind} {f.target}",
                      (f.error,), "Is it up and reachable with these credentials? The exporter "
                      "keeps retrying; its other sources are not affected.")


PostgresCheck = Callable[[str, PostgresSnapshot, dict[str, float]], Iterator[Finding]]
POSTGRES_CHECKS: tuple[PostgresCheck, ...] = (
    blocking_tree, stalled_clients, long_transactions, duplicated_services, safety_nets,
    hot_tables, blind_spots)


def snapshots_from(states: Iterable[Any], stale_after: float, now: float) -> Snapshots:
    """The fresh snapshots of poller states, and the targets that are down."""
    by_kind: dict[str, dict[str, Any]] = {"postgres": {}, "pgbouncer": {}, "prefect": {}}
    failures = []
    for state in states:
        snap = state.snapshot
        if snap is not None and now - snap.taken_at <= stale_after:
            by_kind[state.kind][state.target] = snap
        if not state.up and state.polls:
            failures.append(SourceFailure(state.kind, state.target, state.last_error))
    return Snapshots(by_kind["postgres"], by_kind["pgbouncer"], by_kind["prefect"],
                     tuple(failures))


def diagnose(snaps: Snapshots, overrides: dict[str, float] | None = None) -> list[Finding]:
    """Every finding, the most severe first."""
    t = thresholds(overrides)
    prefect = next(iter(snaps.prefect.values()), None)
    found: list[Finding] = list(source_failures(snaps.failures))
    for target, pg in snaps.postgres.items():
        for check in POSTGRES_CHECKS:
            found += check(target, pg, t)
        found += connection_budget(target, pg, prefect, t)
    for target, pgb in snaps.pgbouncer.items():
        found += pool_waiters(target, pgb, t)
    for target, pf in snaps.prefect.items():
        found += scheduling(target, pf, t)
        found += statement_cache(snaps.pgbouncer.values(), pf, target)
    return sorted(found, key=lambda f: SEVERITY_RANK[f.severity])


def exit_code(findings: Sequence[Finding]) -> int:
    """0 when nothing is wrong (info only), 1 on warnings, 2 on critical findings."""
    severities = {f.severity for f in findings}
    return 2 if "critical" in severities else 1 if "warning" in severities else 0


def render_text(findings: Sequence[Finding]) -> str:
    if not findings:
        return "No findings: nothing wrong seen in the configured targets.\n"
    lines = []
    for i, f in enumerate(findings, start=1):
        lines.append(f"{i}. [{f.severity.upper()}] {f.title}  ({f.check}, {f.target})")
        lines += [f"     evidence: {e}" for e in f.evidence]
        lines.append(f"     do: {f.action}")
        lines.append("")
    counts = {s: sum(1 for f in findings if f.severity == s) for s in SEVERITY_RANK}
    lines.append(", ".join(f"{n} {s}" for s, n in counts.items()))
    return "\n".join(lines) + "\n"
