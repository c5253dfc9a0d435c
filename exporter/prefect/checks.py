"""The Prefect checks of the diagnosis: pure, snapshot and context in, findings out."""

from __future__ import annotations

from collections.abc import Iterator

from exporter.finding import Context, Finding, age
from exporter.pgbouncer.snapshot import PgBouncerSnapshot
from exporter.prefect import compat
from exporter.prefect.snapshot import PrefectSnapshot

STATEMENT_CACHE = "server.database.sqlalchemy.connect_args.statement_cache_size"
PREPARED_CACHE = "server.database.sqlalchemy.connect_args.prepared_statement_cache_size"


def statement_cache(prefect: PrefectSnapshot, ctx: Context) -> Iterator[Finding]:
    transaction_pools = [p for s in ctx.of(PgBouncerSnapshot) for p in s.pools
                         if p.pool_mode == "transaction"]
    if not transaction_pools or not prefect.settings:
        return  # no transaction pooling, or no settings to tell (Prefect Cloud has none)
    if compat.has(prefect.version, "statement_caches") is False:
        return  # no such settings before 3.2.7: compat.blind_spots says what to do instead
    caches = {k: prefect.settings.get(k) for k in (STATEMENT_CACHE, PREPARED_CACHE)}
    if all(v == 0 for v in caches.values()):
        return
    yield Finding(
        "statement_cache_with_transaction_pooling", "critical", prefect.target,
        "PgBouncer pools in transaction mode, but Prefect's asyncpg statement caches are on",
        (f"transaction pooling: {', '.join(sorted({p.database for p in transaction_pools}))}",
         "Prefect reports " + ", ".join(f"{k.rsplit('.', 1)[1]}="
                                        f"{'unset' if v is None else f'{v:g}'}"
                                        for k, v in caches.items())),
        "Set PREFECT_SERVER_DATABASE_SQLALCHEMY_CONNECT_ARGS_STATEMENT_CACHE_SIZE=0 and "
        "..._PREPARED_STATEMENT_CACHE_SIZE=0 (single underscore) on every Prefect server "
        "process, or expect `prepared statement \"__asyncpg_stmt_...\" does not exist`.")


def scheduling(pf: PrefectSnapshot, ctx: Context) -> Iterator[Finding]:
    t = ctx.thresholds
    now = pf.taken_at
    sch = pf.scheduling
    for pool in sch.pools:
        counts = sch.pool_counts.get(pool.name)
        if counts is None or counts.backlog == 0:
            continue
        delay = now - counts.oldest_backlog_start if counts.oldest_backlog_start else 0.0
        if pool.paused or pool.online_workers == 0:
            yield Finding(
                "work_pool_unserved", "critical" if counts.late else "warning", pf.target,
                f"work pool {pool.name} has {counts.backlog} overdue run(s) and "
                + ("is paused" if pool.paused else "no online worker"),
                (f"{counts.backlog} SCHEDULED past their start ({counts.late} Late), the oldest "
                 f"{age(delay)} overdue; {pool.online_workers} of {pool.workers} workers "
                 f"online; status {pool.status}",),
                f"prefect work-pool resume {pool.name}" if pool.paused
                else f"start a worker: prefect worker start --pool {pool.name}")
        elif delay > t["backlog_delay_warning_seconds"] or counts.late > t["late_runs_warning"]:
            yield Finding(
                "scheduled_backlog", "warning", pf.target,
                f"work pool {pool.name}: {counts.backlog} overdue run(s), {counts.late} Late",
                (f"the oldest is {age(delay)} overdue; {pool.online_workers} worker(s) online, "
                 f"{counts.in_flight} run(s) in flight, concurrency limit "
                 f"{pool.concurrency_limit if pool.concurrency_limit is not None else 'none'}",),
                "Workers cannot keep up or the pool's concurrency limit is reached; add workers "
                "or raise the limit, and check the database alerts (workers poll through it).")
    if sch.scheduled_future > t["scheduled_runs_warning"]:
        s = pf.settings
        yield Finding(
            "scheduler_horizon", "warning", pf.target,
            f"{sch.scheduled_future} future SCHEDULED runs: the scheduler creates far too many",
            (f"scheduler max_runs {s.get('server.services.scheduler.max_runs', '?')}, "
             f"max_scheduled_time "
             f"{age(s.get('server.services.scheduler.max_scheduled_time'))}",),
            "Lower PREFECT_SERVER_SERVICES_SCHEDULER_MAX_RUNS and ..._MAX_SCHEDULED_TIME (e.g. "
            "P7D); look for deployments with very short intervals.")


def prefect_checks(pf: PrefectSnapshot, ctx: Context) -> Iterator[Finding]:
    yield from scheduling(pf, ctx)
    yield from statement_cache(pf, ctx)
    yield from compat.blind_spots(pf, ctx)
