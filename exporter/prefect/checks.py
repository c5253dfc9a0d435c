"""The Prefect checks of the diagnosis: pure, snapshot and context in, findings out. Each
check is declared once (a `Check`, gathered in CHECKS, with compat.py's and chain.py's)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from exporter.finding import ROOT, SYMPTOM, Check, Context, Finding, age
from exporter.labels import clean
from exporter.pgbouncer.checks import waiting_pools
from exporter.pgbouncer.snapshot import PgBouncerSnapshot
from exporter.postgres.involved import idle_past
from exporter.postgres.snapshot import PostgresSnapshot
from exporter.prefect import compat
from exporter.prefect.chain import DATABASE_BLOCKED, prefect_blocked
from exporter.prefect.metrics import ended_rows, events_lag, holders_running, pool_rows, runs_lag
from exporter.prefect.snapshot import PoolCounts, PrefectProbeSnapshot, PrefectSnapshot, WorkPool

LATE_ENABLED = "server.services.late_runs.enabled"
SCHEDULER_ENABLED = "server.services.scheduler.enabled"
POOL_SIZE = "server.database.sqlalchemy.pool_size"
MAX_OVERFLOW = "server.database.sqlalchemy.max_overflow"
STATEMENT_CACHE = "server.database.sqlalchemy.connect_args.statement_cache_size"
PREPARED_CACHE = "server.database.sqlalchemy.connect_args.prepared_statement_cache_size"

WORK_POOL_UNSERVED = Check(
    "work_pool_unserved", ("warning",),
    "a work pool with overdue runs is paused or has no online worker", (), SYMPTOM)
LATE_RUNS = Check(
    "late_runs", ("warning",), "Late runs in a work pool (or in none)", ("late_runs_warning",),
    SYMPTOM)
SCHEDULED_BACKLOG = Check(
    "scheduled_backlog", ("warning",), "the most overdue SCHEDULED run of a work pool is late",
    ("backlog_delay_warning_seconds",), SYMPTOM)
SCHEDULER_HORIZON = Check(
    "scheduler_horizon", ("warning",),
    "far too many future SCHEDULED runs: the scheduler creates too many",
    ("scheduled_runs_warning",))
LATE_RUNS_SERVICE_STALLED = Check(
    "late_runs_service_stalled", ("warning",),
    "overdue runs are not marked Late: the late_runs service is not running",
    ("overdue_unmarked_runs_warning",))
SCHEDULER_STALLED = Check(
    "scheduler_stalled", ("warning",),
    "scheduled deployments have no future run: the scheduler is not running",
    ("deployments_without_future_runs_warning",))
API_SLOW = Check(
    "api_slow", ("warning",), "GET /api/ready (a connection from the API's database pool) is "
    "slow", ("api_ready_warning_seconds",), SYMPTOM, sampled=True)
API_WAITS_ON_DATABASE = Check(
    "api_waits_on_database", ("info",),
    "the API waits on its database, and PgBouncer or PostgreSQL show why",
    ("api_pool_saturated_ready_seconds", "api_pool_saturated_ratio"), SYMPTOM, sampled=True)
API_POOL_SATURATED = Check(
    "prefect_api_pool_saturated", ("warning",),
    "the API server's own database pool is saturated: /api/ready slow, /api/health fast, "
    "the database calm", ("api_pool_saturated_ready_seconds", "api_pool_saturated_ratio"), ROOT,
    sampled=True)
EVENT_PIPELINE_STALLED = Check(
    "event_pipeline_stalled", ("warning",), "no new event while flow runs keep starting",
    ("event_pipeline_stall_seconds",))
EVENTS_RETENTION_LAGGING = Check(
    "events_retention_lagging", ("warning",),
    "the oldest event (or flow run) is past its retention period: cleanup is behind",
    ("retention_lag_warning_seconds",))
STUCK_RUNS = Check(
    "stuck_runs", ("warning",),
    "flow runs PENDING, RUNNING, CANCELLING or PAUSED for longer than --stuck-run-seconds",
    ("stuck_runs_warning",), SYMPTOM)
ZOMBIE_RUNS = Check(
    "zombie_runs", ("warning",), "RUNNING flow runs stopped sending heartbeats",
    ("zombie_runs_warning",), SYMPTOM)
HEARTBEATS_NOT_SEEN = Check(
    "heartbeats_not_seen", ("info",), "RUNNING flow runs and no heartbeat: zombies cannot be "
    "told")
SLOTS_LEAKED = Check(
    "concurrency_slots_leaked", ("warning",),
    "a concurrency limit full for long while fewer of its possible holders run",
    ("concurrency_slots_leak_seconds",))
QUEUE_UNPOLLED = Check(
    "work_queue_unpolled", ("warning",),
    "no worker polls a work queue with deployments while its pool's workers are online", (),
    SYMPTOM)
FAILED_RUNS = Check(
    "failed_runs", ("warning",), "the share of FAILED flow runs of a work pool",
    ("failed_runs_warning_ratio", "ended_runs_minimum"), SYMPTOM)
CRASHED_RUNS = Check(
    "crashed_runs", ("warning",), "the share of CRASHED flow runs of a work pool",
    ("crashed_runs_warning_ratio", "ended_runs_minimum"), SYMPTOM)


def statement_cache(prefect: PrefectSnapshot, ctx: Context) -> Iterator[Finding]:
    transaction_pools = [p for s in ctx.of(PgBouncerSnapshot) if not s.tracks_prepared_statements
                         for p in s.pools if p.pool_mode == "transaction"]
    if not transaction_pools or not prefect.settings:
        return  # no transaction pooling, or no settings to tell (Prefect Cloud has none)
    if compat.has(prefect.version, "statement_caches") is False:
        return  # no such settings before 3.2.7: compat.blind_spots says what to do instead
    caches = {k: prefect.settings.get(k) for k in (STATEMENT_CACHE, PREPARED_CACHE)}
    if all(v == 0 for v in caches.values()):
        return
    yield compat.STATEMENT_CACHE.finding(
        "warning", prefect.target,
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
            yield WORK_POOL_UNSERVED.finding(
                "warning", pf.target,
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
            yield LATE_RUNS.finding("warning", pf.target,
                                    f"{where}: {counts.late} Late run(s)", (overdue, context),
                                    BEHIND_ACTION)
        if delay > t["backlog_delay_warning_seconds"]:
            yield SCHEDULED_BACKLOG.finding(
                "warning", pf.target, f"{where}: the most overdue run is {age(delay)} late",
                (overdue, context), BEHIND_ACTION)


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
        yield SCHEDULER_HORIZON.finding(
            "warning", pf.target,
            f"{future} future SCHEDULED runs: the scheduler creates far too many",
            (f"scheduler max_runs {s.get('server.services.scheduler.max_runs', '?')}, "
             f"max_scheduled_time "
             f"{age(s.get('server.services.scheduler.max_scheduled_time'))}",),
            "Lower PREFECT_SERVER_SERVICES_SCHEDULER_MAX_RUNS and ..._MAX_SCHEDULED_TIME (e.g. "
            "P7D); look for deployments with very short intervals.")


def services_stalled(pf: PrefectSnapshot, ctx: Context) -> Iterator[Finding]:
    """The background services, judged by what they leave behind."""
    t, sv, s = ctx.thresholds, pf.services, pf.settings
    if sv is None:
        return
    if sv.unmarked_overdue > t["overdue_unmarked_runs_warning"]:
        pools = ", ".join(f"{p} {n}" for p, n in sorted(sv.unmarked_overdue_by_pool.items()) if n)
        disabled = s.get(LATE_ENABLED) == 0
        yield LATE_RUNS_SERVICE_STALLED.finding(
            "warning", pf.target,
            f"{sv.unmarked_overdue} overdue run(s) not marked Late: the late_runs service is "
            "not running",
            (f"SCHEDULED runs overdue by more than {age(sv.unmarked_after_seconds)} "
             "(late_runs.after_seconds + 2 loops) still named Scheduled"
             + (f" (by work pool: {pools})" if pools else ""),
             "the API server's settings have late_runs disabled" if disabled else
             "the API server's settings have late_runs enabled: where do the services run?"),
            "Check the background services: `prefect server services ls`, their process and "
            "logs; one of `prefect server start` (without --no-services) or `prefect server "
            "services start` must run.")
    if sv.deployments_without_future_runs > t["deployments_without_future_runs_warning"]:
        yield SCHEDULER_STALLED.finding(
            "warning", pf.target,
            f"{sv.deployments_without_future_runs} scheduled deployment(s) have no future run: "
            "the scheduler is not running",
            (f"{sv.recently_scheduled_deployments} deployment(s) had auto-scheduled runs within "
             f"the last day; {sv.deployments_without_future_runs} have none left in the future",
             "scheduler "
             + ("disabled" if s.get(SCHEDULER_ENABLED) == 0 else "enabled")
             + " in the API server's settings (deactivating a schedule also deletes its "
               "future runs)"),
            "Check the background services (scheduler): their process and logs; restart them. "
            "Runs that should have been created meanwhile are not backfilled.")


def latency(seconds: float) -> str:
    """A round trip as people say it: 6 ms, 1.4 s."""
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.1f} s"


def database_explains(ctx: Context) -> list[str]:
    """What PgBouncer and PostgreSQL show that would make the API wait on its database, as their
    own findings judge it: clients waiting in a PgBouncer pool, sessions waiting on locks, a
    transaction idle for longer than the idle_in_transaction finding allows. Empty: neither
    explains a slow /api/ready."""
    t, found = ctx.thresholds, []
    for pgb in ctx.of(PgBouncerSnapshot):
        found += [f"PgBouncer {pgb.target}: {w.waiting} client(s) wait in pool {w.name}, the "
                  f"oldest for {w.pool.maxwait_seconds:.1f}s" for w in waiting_pools(pgb, t)]
    for pg in ctx.of(PostgresSnapshot):
        if pg.blocked:
            found.append(f"PostgreSQL {pg.target}: {len(pg.blocked)} session(s) wait on locks, "
                         f"the longest for {age(max(b.wait_seconds for b in pg.blocked))}")
        idle = [g for g in pg.activity if idle_past(g, t)]
        if idle:
            found.append(f"PostgreSQL {pg.target}: {sum(g.sessions for g in idle)} session(s) "
                         "idle in transaction for over "
                         f"{age(t['idle_in_transaction_warning_seconds'])}, holding their "
                         "connections")
    return found


def api_pool(pf: PrefectProbeSnapshot, ctx: Context) -> Iterator[Finding]:
    """The probe: /api/ready (through the server's own database pool) against /api/health (no
    database). Ready slow and health fast, with nothing in PgBouncer or PostgreSQL to explain
    it: the server's pool is saturated. Judged on a failed poll's partial snapshot too."""
    t, probe = ctx.thresholds, pf.probe
    if probe is None:
        return
    sizes = _pool_sizes(pf)
    gap = f"/api/ready {latency(probe.ready_seconds)} vs /api/health " \
          f"{latency(probe.health_seconds)}"
    if probe.ready_seconds > t["api_ready_warning_seconds"]:
        yield API_SLOW.finding(
            "warning", pf.target,
            f"the API takes {probe.ready_seconds:.1f}s to reach its database"
            + ("" if probe.ready_ok else " (GET /api/ready failed)"),
            (f"{gap}: GET /api/ready checks a connection out of the API server's SQLAlchemy "
             f"pool: {sizes}",),
            "The API's pool is exhausted or the database is slow: see the connection and lock "
            "findings; raise pool_size/max_overflow only if max_connections has room.")
    if not (probe.ready_seconds > t["api_pool_saturated_ready_seconds"]
            and probe.ready_seconds > t["api_pool_saturated_ratio"] * probe.health_seconds):
        return
    explained = database_explains(ctx)
    if explained:
        yield API_WAITS_ON_DATABASE.finding(
            "info", pf.target,
            f"Prefect's API waits on its database ({gap}): PgBouncer or PostgreSQL explain it",
            tuple(explained[:5]),
            "Fix what their findings name (waiting pools, lock holders, idle transactions); "
            "Prefect's own pool is not the bottleneck, and raising it would add to the queue.")
        return
    yield API_POOL_SATURATED.finding(
        "warning", pf.target,
        f"Prefect's own database pool is saturated: {gap}",
        (f"GET /api/ready waits for a connection from the API server's SQLAlchemy pool "
         f"({sizes}); /api/health, which needs none, answers at once",
         _calm(ctx)),
        "Raise PREFECT_SERVER_DATABASE_SQLALCHEMY_POOL_SIZE (and ..._MAX_OVERFLOW) on the API "
        "server, keeping replicas x (pool_size + max_overflow) within PostgreSQL's "
        "max_connections (or PgBouncer's pool), or add API replicas; QueuePool timeouts and "
        "failing clients follow until then.")


def _pool_sizes(pf: PrefectProbeSnapshot) -> str:
    settings = pf.settings if isinstance(pf, PrefectSnapshot) else {}
    if not settings:
        return "pool_size and max_overflow not readable in this poll"
    size, overflow = (settings.get(k) for k in (POOL_SIZE, MAX_OVERFLOW))
    return (f"pool_size {'?' if size is None else f'{size:g}'}, max_overflow "
            f"{'?' if overflow is None else f'{overflow:g}'}")


def _calm(ctx: Context) -> str:
    pgbouncers = [s.target for s in ctx.of(PgBouncerSnapshot)]
    postgres = [s.target for s in ctx.of(PostgresSnapshot)]
    return ("; ".join(
        ([f"PgBouncer's pools ({', '.join(pgbouncers)}) have no waiting clients"]
         if pgbouncers else ["no PgBouncer monitored"])
        + ([f"PostgreSQL ({', '.join(postgres)}) has no lock waits and no old idle "
            "transactions"] if postgres else ["no PostgreSQL monitored"])))


def events_health(pf: PrefectSnapshot, ctx: Context) -> Iterator[Finding]:
    t, events, retention = ctx.thresholds, pf.events, pf.retention
    if events is not None:
        newest_age = (pf.taken_at - events.newest if events.newest is not None
                      else events.looked_back)
        started_after = (events.last_run_start is not None and
                         events.last_run_start - (pf.taken_at - newest_age) > 60)
        if newest_age > t["event_pipeline_stall_seconds"] and started_after:
            yield EVENT_PIPELINE_STALLED.finding(
                "warning", pf.target,
                f"no new event for {age(newest_age)} while flow runs keep starting",
                (("the newest event is " if events.newest is not None else
                  "no event within the last ") + age(newest_age)
                 + (" old" if events.newest is not None else ""),
                 f"a flow run started {age(pf.taken_at - (events.last_run_start or 0))} ago"),
                "Check the background services (event persister) and their logs; "
                "automations and the event feed are blind until they run again.")
    if retention is None:
        return
    for kind, lag, keep in (("events", events_lag(pf, retention), retention.events_retention),
                            ("flow runs", runs_lag(pf, retention), retention.runs_retention)):
        if keep is not None and lag > t["retention_lag_warning_seconds"]:
            yield EVENTS_RETENTION_LAGGING.finding(
                "warning", pf.target,
                f"{kind} cleanup is {age(lag)} behind",
                (f"the oldest of them is {age(lag + keep)} old, the retention period "
                 f"{age(keep)}",),
                "Prefect deletes old events in the event persister (< 3.6.21) or the db_vacuum "
                "service (3.6.21+, and flow runs where enabled): check those services run; "
                "the events and event_resources tables grow meanwhile.")


def runs_health(pf: PrefectSnapshot, ctx: Context) -> Iterator[Finding]:
    """Runs that never finish: stuck in a state, or RUNNING with a dead process."""
    t, runs = ctx.thresholds, pf.runs
    if runs is None:
        return
    for (pool, state_type), group in sorted(runs.stuck.items()):
        if group.stuck > t["stuck_runs_warning"]:
            where = f"work pool {pool}" if pool else "runs in no listed work pool"
            yield STUCK_RUNS.finding(
                "warning", pf.target,
                f"{where}: {group.stuck} flow run(s) {state_type} for over "
                f"{age(runs.stuck_after_seconds)}",
                (f"the oldest has been {state_type} for {age(group.oldest_seconds)}"
                 + ("" if runs.sampled < runs.sample_limit else
                    f" (counted among the {runs.sample_limit} scheduled earliest)"),),
                STUCK_ACTIONS.get(state_type, STUCK_ACTIONS["RUNNING"]))
    running = pf.scheduling.runs_by_state_type.get("RUNNING", 0)
    if runs.without_heartbeat is not None:
        zombies = sum(runs.without_heartbeat.values())
        if zombies > t["zombie_runs_warning"]:
            pools = ", ".join(f"{p or 'other'} {n}" for p, n in
                              sorted(runs.without_heartbeat.items()) if n)
            yield ZOMBIE_RUNS.finding(
                "warning", pf.target,
                f"{zombies} RUNNING flow run(s) stopped sending heartbeats",
                (f"no heartbeat for over {age(runs.heartbeat_timeout_seconds)} (by work pool: "
                 f"{pools})",),
                "Their process died (OOM kill, node lost, worker killed): mark them Crashed "
                "(prefect flow-run cancel, or a zombie automation: Prefect's docs, 'Detect "
                "zombie flows'), then look at the infrastructure's logs.")
    elif runs.heartbeats is False and running:
        yield HEARTBEATS_NOT_SEEN.finding(
            "info", pf.target,
            f"{running} RUNNING flow run(s), no heartbeat seen within a day: zombies cannot be "
            "told",
            ("flow-run heartbeats are off (before Prefect 3.6.22 they are unless "
             "PREFECT_FLOWS_HEARTBEAT_FREQUENCY is set where flows run)",),
            "Set PREFECT_FLOWS_HEARTBEAT_FREQUENCY=180 (or upgrade the flows' Prefect to 3.6.22+) "
            "so dead runs can be found.")


STUCK_ACTIONS = {
    "PENDING": "Runs PENDING for long never started: their infrastructure did not come up "
               "(image pull, quota, a worker that died after submitting). Cancel them and look "
               "at the worker's logs.",
    "CANCELLING": "Runs CANCELLING for long: their infrastructure never confirmed the "
                  "cancellation (it is gone). Set them Cancelled: prefect flow-run cancel, or "
                  "the API's set_state with force.",
    "PAUSED": "Runs PAUSED for long wait for input or a resume nobody gives: resume or cancel "
              "them.",
    "RUNNING": "Runs RUNNING for long are hung or their process died (see zombie runs): check "
               "their logs and infrastructure; cancel those that must not go on.",
}


def limits_leaked(pf: PrefectSnapshot, ctx: Context) -> Iterator[Finding]:
    limits = pf.limits
    if limits is None:
        return
    for limit in limits.limits:
        if limit.saturated_since is None:
            continue
        full_for = pf.taken_at - limit.saturated_since
        holders = holders_running(pf, limit)
        if full_for > ctx.thresholds["concurrency_slots_leak_seconds"] and \
                limit.active_slots > holders:
            yield SLOTS_LEAKED.finding(
                "warning", pf.target,
                f"concurrency limit {limit.name} has been full for {age(full_for)} with "
                f"{holders} possible holder(s) running",
                (f"{limit.active_slots} of {limit.slots} slots taken; "
                 + ("its holder task runs still RUNNING: " if limit.holders_running is not None
                    else "PENDING/RUNNING flow runs and RUNNING task runs, all of them: ")
                 + str(holders),),
                f"Release the leaked slots: reset the limit (prefect gcl update {limit.name} "
                "--active-slots <held>, or delete and recreate it); then find the runs that "
                "took slots without giving them back (crashed processes, slots taken outside "
                "the concurrency() context manager).")


def queues_unpolled(pf: PrefectSnapshot, ctx: Context) -> Iterator[Finding]:
    """NOT_READY queues with deployments in a pool whose workers are online (they poll other
    queues). An unpolled queue without deployments (a pool's unused `default`, with workers
    started with --work-queue) strands nothing: quiet."""
    online = {p.name: p.online_workers for p in pf.scheduling.pools}
    counted = pf.readiness.by_unpolled_queue if pf.readiness else {}
    for queue in pf.scheduling.queues:
        if queue.status != "NOT_READY" or online.get(queue.work_pool, 0) == 0:
            continue
        waiting = counted.get(queue.id)  # None: not counted (beyond the first 20)
        if waiting == 0:
            continue
        polled = (f"last polled {age(pf.taken_at - queue.last_polled)} ago"
                  if queue.last_polled else "never polled")
        yield QUEUE_UNPOLLED.finding(
            "warning", pf.target,
            f"no worker polls work queue {queue.name} of pool {queue.work_pool}",
            (f"{online[queue.work_pool]} worker(s) of the pool are online; the queue was "
             f"{polled}" + (f"; {waiting} deployment(s) in it are NOT_READY" if waiting else ""),),
            f"Start a worker for it (prefect worker start --pool {queue.work_pool} --work-"
            f"queue {queue.name}) or move its deployments to a polled queue; workers "
            "started with --work-queue poll only the queues they name.")


def outcome_ratios(pf: PrefectSnapshot, ctx: Context) -> Iterator[Finding]:
    t = ctx.thresholds
    for pool, counts in ended_rows(pf).items():
        ended = sum(counts.values())
        if ended < t["ended_runs_minimum"]:
            continue
        for check, state_type, limit in ((FAILED_RUNS, "FAILED", "failed_runs_warning_ratio"),
                                         (CRASHED_RUNS, "CRASHED",
                                          "crashed_runs_warning_ratio")):
            ratio = counts.get(state_type, 0) / ended
            if ratio > t[limit]:
                window = pf.outcomes.window_seconds if pf.outcomes else 0.0
                yield check.finding(
                    "warning", pf.target,
                    f"work pool {pool}: {ratio:.0%} of the flow runs that ended in the last "
                    f"{age(window)} {state_type}",
                    (", ".join(f"{n} {s}" for s, n in sorted(counts.items())),),
                    "FAILED: the flows' code raised (their logs say why). CRASHED: their "
                    "infrastructure failed (killed processes, evicted pods, image pulls): the "
                    "worker's logs and the platform's events say why.")


Rule = Callable[[PrefectProbeSnapshot, Context], Iterator[Finding]]


def polled(rule: Callable[[PrefectSnapshot, Context], Iterator[Finding]]) -> Rule:
    """A rule that needs a full poll: silent on a failed poll's partial (probe) snapshot."""
    def run(snap: PrefectProbeSnapshot, ctx: Context) -> Iterator[Finding]:
        if isinstance(snap, PrefectSnapshot):
            yield from rule(snap, ctx)

    run.__name__ = rule.__name__
    return run


CHECKS = (API_SLOW, API_WAITS_ON_DATABASE, API_POOL_SATURATED, WORK_POOL_UNSERVED, LATE_RUNS,
          SCHEDULED_BACKLOG, SCHEDULER_HORIZON, compat.STATEMENT_CACHE,
          LATE_RUNS_SERVICE_STALLED, SCHEDULER_STALLED, EVENT_PIPELINE_STALLED,
          EVENTS_RETENTION_LAGGING, STUCK_RUNS, ZOMBIE_RUNS, HEARTBEATS_NOT_SEEN, SLOTS_LEAKED,
          QUEUE_UNPOLLED, FAILED_RUNS, CRASHED_RUNS, compat.BLIND_SPOT, DATABASE_BLOCKED)

# The probe's rule on every snapshot (a failed poll's partial one too), the rest on a full
# poll; in this order (the doctor lists findings of one rank in it).
RULES: tuple[Rule, ...] = (
    api_pool, polled(scheduling), polled(scheduler_horizon), polled(statement_cache),
    polled(services_stalled), polled(events_health), polled(runs_health),
    polled(limits_leaked), polled(queues_unpolled), polled(outcome_ratios),
    polled(compat.blind_spots), polled(prefect_blocked))
