"""The Prefect checks of the diagnosis: pure, snapshot and context in, findings out."""

from __future__ import annotations

from collections.abc import Iterator

from exporter.finding import Context, Finding, age
from exporter.labels import clean
from exporter.pgbouncer.snapshot import PgBouncerSnapshot
from exporter.prefect.metrics import pool_rows
from exporter.prefect.snapshot import PoolCounts, PrefectSnapshot, WorkPool

STATEMENT_CACHE = "server.database.sqlalchemy.connect_args.statement_cache_size"
PREPARED_CACHE = "server.database.sqlalchemy.connect_args.prepared_statement_cache_size"


def _tracks_prepared_statements(pgb: PgBouncerSnapshot) -> bool:
    """PgBouncer 1.21+ with max_prepared_statements > 0 keeps named prepared statements
    working through transaction pooling, asyncpg's among them."""
    value = pgb.config.get("max_prepared_statements", "").strip()
    return value.isdigit() and int(value) > 0


def statement_cache(prefect: PrefectSnapshot, ctx: Context) -> Iterator[Finding]:
    transaction_pools = [p for s in ctx.of(PgBouncerSnapshot) if not _tracks_prepared_statements(s)
                         for p in s.pools if p.pool_mode == "transaction"]
    if not transaction_pools or not prefect.settings:
        return  # no transaction pooling, or no settings to tell (Prefect Cloud has none)
    caches = {k: prefect.settings.get(k) for k in (STATEMENT_CACHE, PREPARED_CACHE)}
    if all(v == 0 for v in caches.values()):
        return
    yield Finding(
        "statement_cache_with_transaction_pooling", "warning", prefect.target,
        "PgBouncer pools in transaction mode, but Prefect's asyncpg statement caches are on",
        (f"transaction pooling: {', '.join(sorted({p.database for p in transaction_pools}))} "
         "(max_prepared_statements off)",
         "Prefect reports " + ", ".join(f"{k.rsplit('.', 1)[1]}="
                                        f"{'unset' if v is None else f'{v:g}'}"
                                        for k, v in caches.items())),
        "Set PREFECT_SERVER_DATABASE_SQLALCHEMY_CONNECT_ARGS_STATEMENT_CACHE_SIZE=0 and "
        "..._PREPARED_STATEMENT_CACHE_SIZE=0 (single underscore) on every Prefect server "
        "process (or max_prepared_statements > 0 on PgBouncer 1.21+), or expect "
        "`prepared statement \"__asyncpg_stmt_...\" does not exist`.")


def scheduling(pf: PrefectSnapshot, ctx: Context) -> Iterator[Finding]:
    """Per work pool, as the alerts see it: a pool with overdue runs and nobody to take them
    (paused, no online worker) is the one finding about it; other pools (and runs in no pool,
    'other') with Late runs or an old backlog are behind."""
    t = ctx.thresholds
    pools = {clean(p.name): p for p in pf.scheduling.pools}
    for name, counts in pool_rows(pf).items():
        pool = pools.get(name)
        delay = pf.taken_at - counts.oldest_backlog_start if counts.oldest_backlog_start else 0.0
        overdue = (f"{counts.backlog} SCHEDULED past their start ({counts.late} Late), the "
                   f"oldest {age(delay)} overdue")
        if pool is not None and counts.backlog > 0 and (pool.paused or not pool.online_workers):
            yield Finding(
                "work_pool_unserved", "warning", pf.target,
                f"work pool {name} has {counts.backlog} overdue run(s) and "
                + ("is paused" if pool.paused else "no online worker"),
                (f"{overdue}; {pool.online_workers} of {pool.workers} workers online; status "
                 f"{pool.status}",),
                f"prefect work-pool resume {pool.name}" if pool.paused
                else f"start a worker: prefect worker start --pool {pool.name}")
            continue
        where = f"work pool {name}" if pool is not None else "runs in no listed work pool"
        context = _served(pool, counts)
        if counts.late > t["late_runs_warning"]:
            yield Finding("late_runs", "warning", pf.target,
                          f"{where}: {counts.late} Late run(s)", (overdue, context),
                          BEHIND_ACTION)
        if delay > t["backlog_delay_warning_seconds"]:
            yield Finding("scheduled_backlog", "warning", pf.target,
                          f"{where}: the most overdue run is {age(delay)} late",
                          (overdue, context), BEHIND_ACTION)
    yield from scheduler_horizon(pf, ctx)


BEHIND_ACTION = ("Workers cannot keep up or the pool's concurrency limit is reached; add workers "
                 "or raise the limit, and check the database alerts (workers poll through it).")


def _served(pool: WorkPool | None, counts: PoolCounts) -> str:
    if pool is None:
        return (f"{counts.in_flight} run(s) in flight (flow.serve() runs, or pools beyond "
                "--label-top-n)")
    limit = pool.concurrency_limit if pool.concurrency_limit is not None else "none"
    return (f"{pool.online_workers} worker(s) online, {counts.in_flight} run(s) in flight, "
            f"concurrency limit {limit}")


def scheduler_horizon(pf: PrefectSnapshot, ctx: Context) -> Iterator[Finding]:
    future = pf.scheduling.scheduled_future
    if future > ctx.thresholds["scheduled_runs_warning"]:
        s = pf.settings
        yield Finding(
            "scheduler_horizon", "warning", pf.target,
            f"{future} future SCHEDULED runs: the scheduler creates far too many",
            (f"scheduler max_runs {s.get('server.services.scheduler.max_runs', '?')}, "
             f"max_scheduled_time "
             f"{age(s.get('server.services.scheduler.max_scheduled_time'))}",),
            "Lower PREFECT_SERVER_SERVICES_SCHEDULER_MAX_RUNS and ..._MAX_SCHEDULED_TIME (e.g. "
            "P7D); look for deployments with very short intervals.")


def prefect_checks(pf: PrefectSnapshot, ctx: Context) -> Iterator[Finding]:
    yield from scheduling(pf, ctx)
    yield from statement_cache(pf, ctx)
