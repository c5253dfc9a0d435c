"""Prefect snapshot -> metric families. Pure: no I/O, no clock (ages are from taken_at). Each
metric's spec is declared here, beside the builder that emits it."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from prometheus_client.core import Metric

from exporter.finding import Finding
from exporter.labels import OTHER, Folder, bounded_max, bounded_sum, clean
from exporter.metricspec import MetricOptions, MetricSpec, Specs
from exporter.prefect.chain import DATABASE_BLOCKED
from exporter.prefect.retention import retention_of
from exporter.prefect.snapshot import (
    UNFINISHED_STATE_TYPES,
    ConcurrencyLimit,
    PoolCounts,
    PrefectProbeSnapshot,
    PrefectSnapshot,
    Retention,
)

POOL_STATUSES = ("READY", "NOT_READY", "PAUSED")


_pf = Specs("prefect")


API_UP = _pf("prefect_api_up", "target",
             "1 if the last poll of the Prefect API succeeded, else 0.")
SERVER_INFO = _pf("prefect_server_info", "target version",
                  "Always 1; the Prefect server version (GET /admin/version; '' where not "
                  "offered).")
FLOW_RUNS = _pf("prefect_flow_runs", "target state_type",
                "Flow runs now in each current state type: SCHEDULED, PENDING, RUNNING, "
                "CANCELLING, PAUSED (not a history: finished runs are not counted).")
BACKLOG_RUNS = _pf("prefect_scheduled_backlog_runs", "target work_pool",
                   "SCHEDULED runs whose expected start is in the past (Late ones included). "
                   "work_pool 'other': runs in no work pool or in pools beyond the top N.")
BACKLOG_MAX_DELAY = _pf("prefect_scheduled_backlog_max_delay_seconds", "target work_pool",
                        "How far past its expected start the most overdue SCHEDULED run is; 0 "
                        "when none.")
LATE_RUNS = _pf("prefect_late_runs", "target work_pool",
                "Runs in state Late (marked by the server's late_runs service).")
UPCOMING_RUNS = _pf("prefect_upcoming_runs", "target work_pool",
                    "SCHEDULED runs expected to start within the horizon (--prefect-upcoming-"
                    "horizon-seconds, default 1 h).")
SCHEDULED_RUNS = _pf("prefect_scheduled_runs", "target",
                     "Every SCHEDULED run expected to start in the future: catches a scheduler "
                     "creating far too many runs.")
RUNS_IN_FLIGHT = _pf("prefect_work_pool_runs_in_flight", "target work_pool",
                     "Runs PENDING or RUNNING in the pool (what its concurrency limit counts).")
POOL_INFO = _pf("prefect_work_pool_info", "target work_pool type",
                "Always 1; the work pool's type (process, kubernetes, docker, ...).")
POOL_STATUS = _pf("prefect_work_pool_status", "target work_pool status",
                  "1 for the pool's current status, 0 for the others: READY, NOT_READY (no "
                  "online worker), PAUSED.")
POOL_PAUSED = _pf("prefect_work_pool_paused", "target work_pool",
                  "1 if the work pool is paused.")
POOL_LIMIT = _pf("prefect_work_pool_concurrency_limit", "target work_pool",
                 "The pool's concurrency limit; absent when unlimited.")
POOL_WORKERS = _pf("prefect_work_pool_workers", "target work_pool",
                   "Workers known to the pool.")
POOL_ONLINE_WORKERS = _pf("prefect_work_pool_online_workers", "target work_pool",
                          "Workers whose heartbeat is recent (status ONLINE).")
POOL_LAST_HEARTBEAT = _pf("prefect_work_pool_last_heartbeat_timestamp_seconds",
                          "target work_pool",
                          "Unix time of the freshest worker heartbeat; absent with no worker.")
QUEUE_PAUSED = _pf("prefect_work_queue_paused", "target work_pool work_queue",
                   "1 if the work queue is paused.")
QUEUE_LIMIT = _pf("prefect_work_queue_concurrency_limit", "target work_pool work_queue",
                  "The queue's concurrency limit; absent when unlimited.")
DOCKET_INFO = _pf("prefect_server_docket_info", "target scheme",
                  "Always 1; the scheme of the server's docket (server.docket.url, Prefect "
                  "3.6+): memory = one background-services process; redis = several replicas "
                  "share the work (several LISTEN sessions are then expected). Only the scheme: "
                  "the URL may hold a password.")
SERVER_SETTING = _pf("prefect_server_setting", "target name",
                     "Numeric server settings from GET /admin/settings by JSON path (durations "
                     "in seconds, booleans 0/1): database pool_size, max_overflow, asyncpg "
                     "statement caches, scheduler and late_runs knobs.")
API_REQUESTS = _pf("prefect_api_requests_total", "target endpoint",
                   "The exporter's own requests to the Prefect API, by endpoint.", "counter")
API_REQUEST_ERRORS = _pf("prefect_api_request_errors_total", "target endpoint",
                         "Of those, the ones that failed (transport error, HTTP 4xx/5xx, bad "
                         "JSON).", "counter")
API_REQUEST_SECONDS = _pf("prefect_api_request_duration_seconds_total", "target endpoint",
                          "Time spent in those requests; divided by the requests, the mean "
                          "latency.", "counter")

READY_SECONDS = _pf("prefect_api_ready_duration_seconds", "target",
                    "The last GET /api/ready round trip, timed at the start of every poll on a "
                    "connection of its own (published even when the rest of the poll fails): "
                    "one connection checked out of the API server's own database pool. Rises "
                    "first when that pool is exhausted (QueuePool timeouts) while PgBouncer and "
                    "PostgreSQL look calm.")
READY_FAILURES = _pf("prefect_api_ready_failures_total", "target",
                     "GET /api/ready answers that were not 200 (503: database not available) or "
                     "did not come within half the poll timeout.", "counter")
HEALTH_SECONDS = _pf("prefect_api_health_duration_seconds", "target",
                     "The last GET /api/health round trip, timed beside /api/ready: the API "
                     "answering without its database. Ready slow while health is fast: the "
                     "server's own database pool is saturated.")
HEALTH_FAILURES = _pf("prefect_api_health_failures_total", "target",
                      "GET /api/health answers that were not 200 or did not come within half "
                      "the poll timeout.", "counter")
UNMARKED_OVERDUE = _pf("prefect_overdue_unmarked_runs", "target work_pool",
                       "SCHEDULED runs still named Scheduled, overdue by more than "
                       "late_runs.after_seconds plus two loop_seconds: the late_runs service "
                       "should have marked them Late. > 0: it is not running.")
DEPLOYMENTS_RECENTLY_SCHEDULED = _pf(
    "prefect_deployments_recently_scheduled", "target",
    "Deployments (not paused) with an auto-scheduled run expected within the last day or later: "
    "the ones Prefect's scheduler looks after.")
DEPLOYMENTS_WITHOUT_FUTURE = _pf(
    "prefect_deployments_without_future_runs", "target",
    "Of those, the ones with no future auto-scheduled run: the scheduler is not running (or a "
    "schedule was just deactivated).")
EVENTS_NEWEST_AGE = _pf("prefect_events_newest_age_seconds", "target",
                        "Age of the newest event. When none is within a day: at least a day "
                        "(86400). Old on a busy server: the event pipeline stopped.")
RUN_LAST_START_AGE = _pf("prefect_flow_run_last_start_age_seconds", "target",
                         "Age of the latest flow run start. A run started after the newest event "
                         "should have left events: with events older than it, the pipeline "
                         "stopped.")
EVENTS_OLDEST_AGE = _pf("prefect_events_oldest_age_seconds", "target",
                        "Age of the oldest event still stored, where it is past the retention "
                        "period or within the hour after it (looked for only there, to stay "
                        "cheap); absent otherwise, e.g. on a server younger than its retention "
                        "period (read every 5 minutes).")
RETENTION_LAG = _pf("prefect_retention_lag_seconds", "target kind",
                    "How far cleanup is behind: age of the oldest row past its retention minus "
                    "the retention (kind events: server.events.retention_period; flow_runs: "
                    "db_vacuum's retention_period, where it deletes flow runs); 0 when nothing "
                    "is overdue. > 0: cleanup is not keeping up. Read every 5 minutes.")
TABLE_RETENTION = _pf(
    "prefect_table_retention_seconds", "target table",
    "The retention that keeps each of Prefect's big tables bounded on this server, by release "
    "and settings (events, event_resources: server.events.retention_period; flow_run, "
    "task_run, log, artifact: db_vacuum's retention_period where it deletes flow runs). No "
    "series for a table nothing deletes from (2.x's event_resources; flow runs before 3.6.19 "
    "or without db_vacuum's flow_runs).")

STUCK_RUNS = _pf("prefect_flow_runs_stuck", "target work_pool state_type",
                 "Flow runs in PENDING, RUNNING, CANCELLING or PAUSED for longer than "
                 "--stuck-run-seconds (default 1 h), from their state's own timestamp.")
OLDEST_STATE_AGE = _pf("prefect_flow_run_oldest_state_age_seconds",
                       "target work_pool state_type",
                       "How long the longest-waiting run of that pool has been in that state; "
                       "0 when none is.")
STUCK_SAMPLE_COMPLETE = _pf("prefect_flow_runs_stuck_sample_complete", "target",
                            "1 when every unfinished run was read (fewer than 200); 0: the stuck "
                            "counts cover the 200 scheduled earliest.")
HEARTBEATS_SEEN = _pf("prefect_flow_run_heartbeats_seen", "target",
                      "1 if a flow-run heartbeat event was seen within a day (Prefect 3.6.22+ "
                      "sends them by default); 0: the exporter cannot tell a zombie run from one "
                      "without heartbeats and counts none.")
WITHOUT_HEARTBEAT = _pf("prefect_flow_runs_without_heartbeat", "target work_pool",
                        "RUNNING flow runs whose last heartbeat is older than "
                        "--heartbeat-timeout-seconds: zombies (their process died). Only where "
                        "heartbeats are seen.")
RUNS_ENDED = _pf("prefect_flow_runs_ended", "target work_pool state_type",
                 "Flow runs that ended within --outcome-window-seconds (default 1 h) by terminal "
                 "state type: COMPLETED, FAILED, CRASHED, CANCELLED (Prefect 3.0.4+; before "
                 "3.6.14 runs that never started have no end time and are not counted).")
TASK_RUNS_RUNNING = _pf("prefect_task_runs_running", "target", "Task runs now RUNNING.")
LIMIT_SLOTS = _pf("prefect_concurrency_limit_slots", "target limit",
                  "A concurrency limit's slots (global limits; tag limits as tag:<tag>).")
LIMIT_ACTIVE = _pf("prefect_concurrency_limit_active_slots", "target limit",
                   "Slots of the limit taken now.")
LIMIT_SATURATED = _pf("prefect_concurrency_limit_saturated_seconds", "target limit",
                      "How long the limit has been full, as the exporter saw it; 0 when not.")
LIMIT_HOLDERS = _pf("prefect_concurrency_limit_holders_running", "target limit",
                    "Runs that could hold the limit's slots and are running: a tag limit's "
                    "holder task runs still RUNNING; for a global limit (the API names no "
                    "holders) every PENDING or RUNNING flow run and RUNNING task run. Fewer "
                    "than its active slots for long: slots leaked.")
QUEUE_STATUS = _pf("prefect_work_queue_status", "target work_pool work_queue status",
                   "1 for the queue's status, 0 for the others: READY, NOT_READY (no worker "
                   "polled it lately), PAUSED.")
QUEUE_POLLED_AGE = _pf("prefect_work_queue_last_polled_age_seconds",
                       "target work_pool work_queue",
                       "Time since a worker last polled the queue; absent when never.")
QUEUE_DEPLOYMENTS = _pf("prefect_work_queue_unpolled_deployments",
                        "target work_pool work_queue",
                        "Deployments in a NOT_READY queue (no worker polls it), which wait; "
                        "counted for the first 20 such queues, absent for the others.")
DEPLOYMENTS = _pf("prefect_deployments", "target status",
                  "Deployments by the status their work queue gives them: NOT_READY (in a queue "
                  "no worker polls), READY, UNKNOWN (no work queue: served by flow.serve(); "
                  "Prefect offers no filter on their status).")

DATABASE_BLOCKED_ROOTS = _pf(
    "prefect_database_blocked_roots", "target severity",
    "Sessions on PostgreSQL that Prefect's database work waits behind (its sessions on a lock, "
    "or its PgBouncer pool's clients), by the doctor's severity: its prefect_database_blocked "
    "findings, one per root (critical: one of its sessions has waited past "
    "blocked_wait_critical_seconds, or the API could not be read meanwhile). 0 for each "
    "configured Prefect target when none.")

SPECS: tuple[MetricSpec, ...] = (
    API_UP, SERVER_INFO, FLOW_RUNS, BACKLOG_RUNS, BACKLOG_MAX_DELAY, LATE_RUNS, UPCOMING_RUNS,
    SCHEDULED_RUNS, RUNS_IN_FLIGHT, POOL_INFO, POOL_STATUS, POOL_PAUSED, POOL_LIMIT,
    POOL_WORKERS, POOL_ONLINE_WORKERS, POOL_LAST_HEARTBEAT, QUEUE_PAUSED, QUEUE_LIMIT,
    DOCKET_INFO, SERVER_SETTING, API_REQUESTS, API_REQUEST_ERRORS, API_REQUEST_SECONDS,
    READY_SECONDS, READY_FAILURES, HEALTH_SECONDS, HEALTH_FAILURES, UNMARKED_OVERDUE,
    DEPLOYMENTS_RECENTLY_SCHEDULED, DEPLOYMENTS_WITHOUT_FUTURE, EVENTS_NEWEST_AGE,
    RUN_LAST_START_AGE, EVENTS_OLDEST_AGE,
    RETENTION_LAG, TABLE_RETENTION, STUCK_RUNS, OLDEST_STATE_AGE, STUCK_SAMPLE_COMPLETE,
    HEARTBEATS_SEEN,
    WITHOUT_HEARTBEAT, RUNS_ENDED, TASK_RUNS_RUNNING, LIMIT_SLOTS, LIMIT_ACTIVE,
    LIMIT_SATURATED, LIMIT_HOLDERS, QUEUE_STATUS, QUEUE_POLLED_AGE, QUEUE_DEPLOYMENTS, DEPLOYMENTS,
    DATABASE_BLOCKED_ROOTS)


def prefect_verdicts(targets: Sequence[str], findings: Sequence[Finding]) -> Iterator[Metric]:
    """The doctor's prefect_database_blocked per target and severity: it joins Prefect's
    settings, PostgreSQL's lock tree and PgBouncer's pools, which no PromQL on the exported
    series can; every configured target has its series, so 0 is distinguishable from absent."""
    roots = DATABASE_BLOCKED_ROOTS.family()
    for target in targets:
        for severity in DATABASE_BLOCKED.severities:
            roots.add_metric([target, severity], sum(
                1 for f in findings if f.check == DATABASE_BLOCKED.id and f.target == target
                and f.severity == severity))
    yield roots


def prefect_families(snap: PrefectProbeSnapshot, options: MetricOptions
                     ) -> Iterator[Metric]:
    """The probe, from a full poll or from a failed one's partial snapshot; the rest only from a
    full poll."""
    yield from _probe(snap)
    if isinstance(snap, PrefectSnapshot):
        yield from _polled(snap, options)


def _probe(snap: PrefectProbeSnapshot) -> Iterator[Metric]:
    probe = snap.probe
    if probe is None:
        return
    for spec_, value in ((READY_SECONDS, probe.ready_seconds),
                         (READY_FAILURES, probe.ready_failures),
                         (HEALTH_SECONDS, probe.health_seconds),
                         (HEALTH_FAILURES, probe.health_failures)):
        yield spec_.sample([snap.target], value)


def _polled(snap: PrefectSnapshot, options: MetricOptions) -> Iterator[Metric]:
    target = snap.target
    yield SERVER_INFO.sample([target, snap.version], 1)
    states = FLOW_RUNS.family()
    for state_type, count in snap.scheduling.runs_by_state_type.items():
        states.add_metric([target, state_type], count)
    yield states
    yield SCHEDULED_RUNS.sample([target], snap.scheduling.scheduled_future)
    yield from _scheduling(snap, target)
    yield from _work_pools(snap, target)
    yield from _work_queues(snap, target)
    yield from _settings(snap, target)
    yield from _requests(snap, target)
    yield from _services(snap, target)
    yield from _events(snap, target)
    yield from _retention(snap, target)
    yield from _runs(snap, target)
    yield from _outcomes(snap, target)
    yield from _limits(snap, target, options.label_top_n)
    yield from _readiness(snap, target)


def pool_rows(snap: PrefectSnapshot) -> dict[str, PoolCounts]:
    """Counts per listed work pool, plus OTHER: what the totals hold beyond them (runs in no
    work pool, or in pools beyond the top N). Counts are taken concurrently, so the remainder is
    clamped at 0. OTHER's oldest run is known only when it is older than every listed pool's."""
    sch = snap.scheduling
    rows = {clean(name): counts for name, counts in sch.pool_counts.items()}
    t = sch.totals
    listed = list(sch.pool_counts.values())
    oldest_listed = min((c.oldest_backlog_start for c in listed
                         if c.oldest_backlog_start is not None), default=None)
    other_oldest = t.oldest_backlog_start if t.oldest_backlog_start is not None and (
        oldest_listed is None or t.oldest_backlog_start < oldest_listed) else None
    rows[OTHER] = PoolCounts(
        backlog=max(0, t.backlog - sum(c.backlog for c in listed)),
        late=max(0, t.late - sum(c.late for c in listed)),
        upcoming=max(0, t.upcoming - sum(c.upcoming for c in listed)),
        in_flight=max(0, t.in_flight - sum(c.in_flight for c in listed)),
        oldest_backlog_start=other_oldest)
    return rows


SCHEDULING_COLUMNS = ((BACKLOG_RUNS, "backlog"), (LATE_RUNS, "late"),
                      (UPCOMING_RUNS, "upcoming"), (RUNS_IN_FLIGHT, "in_flight"))


def _scheduling(snap: PrefectSnapshot, target: str) -> Iterator[Metric]:
    rows = pool_rows(snap)
    for metric_spec, attribute in SCHEDULING_COLUMNS:
        metric = metric_spec.family()
        for pool, counts in rows.items():
            metric.add_metric([target, pool], getattr(counts, attribute))
        yield metric
    delay = BACKLOG_MAX_DELAY.family()
    for pool, counts in rows.items():
        if counts.oldest_backlog_start is not None:
            delay.add_metric([target, pool], max(0.0, snap.taken_at - counts.oldest_backlog_start))
        elif counts.backlog == 0:
            delay.add_metric([target, pool], 0.0)
    yield delay


def _work_pools(snap: PrefectSnapshot, target: str) -> Iterator[Metric]:
    info, status, paused, limit = (POOL_INFO.family(), POOL_STATUS.family(),
                                   POOL_PAUSED.family(), POOL_LIMIT.family())
    workers, online, heartbeat = (POOL_WORKERS.family(), POOL_ONLINE_WORKERS.family(),
                                  POOL_LAST_HEARTBEAT.family())
    for pool in snap.scheduling.pools:
        labels = [target, clean(pool.name)]
        info.add_metric([*labels, clean(pool.type)], 1)
        for name in POOL_STATUSES:
            status.add_metric([*labels, name], 1 if pool.status == name else 0)
        paused.add_metric(labels, 1 if pool.paused else 0)
        if pool.concurrency_limit is not None:
            limit.add_metric(labels, pool.concurrency_limit)
        workers.add_metric(labels, pool.workers)
        online.add_metric(labels, pool.online_workers)
        if pool.last_heartbeat is not None:
            heartbeat.add_metric(labels, pool.last_heartbeat)
    yield from (info, status, paused, limit, workers, online, heartbeat)


QUEUE_STATUSES = ("READY", "NOT_READY", "PAUSED")


def _work_queues(snap: PrefectSnapshot, target: str) -> Iterator[Metric]:
    paused = QUEUE_PAUSED.family()
    limit = QUEUE_LIMIT.family()
    status = QUEUE_STATUS.family()
    polled = QUEUE_POLLED_AGE.family()
    for queue in snap.scheduling.queues:
        labels = [target, clean(queue.work_pool), clean(queue.name)]
        paused.add_metric(labels, 1 if queue.paused else 0)
        if queue.concurrency_limit is not None:
            limit.add_metric(labels, queue.concurrency_limit)
        if queue.status:
            for name in QUEUE_STATUSES:
                status.add_metric([*labels, name], 1 if queue.status == name else 0)
        if queue.last_polled is not None:
            polled.add_metric(labels, max(0.0, snap.taken_at - queue.last_polled))
    yield from (paused, limit, status, polled)


def _settings(snap: PrefectSnapshot, target: str) -> Iterator[Metric]:
    if snap.docket_scheme:
        yield DOCKET_INFO.sample([target, snap.docket_scheme], 1)
    metric = SERVER_SETTING.family()
    for name, value in sorted(snap.settings.items()):
        metric.add_metric([target, name], value)
    yield metric
    kept = TABLE_RETENTION.family()
    for table, keep in sorted(retention_of(snap).items()):
        kept.add_metric([target, table], keep.seconds)
    yield kept


def _requests(snap: PrefectSnapshot, target: str) -> Iterator[Metric]:
    count = API_REQUESTS.family()
    errors = API_REQUEST_ERRORS.family()
    seconds = API_REQUEST_SECONDS.family()
    for endpoint, stats in sorted(snap.requests.items()):
        count.add_metric([target, endpoint], stats.count)
        errors.add_metric([target, endpoint], stats.errors)
        seconds.add_metric([target, endpoint], stats.seconds)
    yield from (count, errors, seconds)


def _services(snap: PrefectSnapshot, target: str) -> Iterator[Metric]:
    services = snap.services
    if services is None:
        return
    unmarked = UNMARKED_OVERDUE.family()
    listed = {clean(p): n for p, n in services.unmarked_overdue_by_pool.items()}
    for pool, count in listed.items():
        unmarked.add_metric([target, pool], count)
    unmarked.add_metric([target, OTHER], max(0, services.unmarked_overdue - sum(listed.values())))
    recent = DEPLOYMENTS_RECENTLY_SCHEDULED.sample([target],
                                                   services.recently_scheduled_deployments)
    without = DEPLOYMENTS_WITHOUT_FUTURE.sample([target], services.deployments_without_future_runs)
    yield from (unmarked, recent, without)


def _events(snap: PrefectSnapshot, target: str) -> Iterator[Metric]:
    events = snap.events
    if events is None:
        return
    yield EVENTS_NEWEST_AGE.sample([target], snap.taken_at - events.newest
                                   if events.newest is not None else events.looked_back)
    if events.last_run_start is not None:
        yield RUN_LAST_START_AGE.sample([target], max(0.0, snap.taken_at - events.last_run_start))


def _retention(snap: PrefectSnapshot, target: str) -> Iterator[Metric]:
    retention = snap.retention
    if retention is None:
        return
    if retention.oldest_event is not None:
        yield EVENTS_OLDEST_AGE.sample([target], snap.taken_at - retention.oldest_event)
    lag = RETENTION_LAG.family()
    lag.add_metric([target, "events"], events_lag(snap, retention))
    if retention.runs_retention is not None:
        lag.add_metric([target, "flow_runs"], runs_lag(snap, retention))
    yield lag


def events_lag(snap: PrefectSnapshot, retention: Retention) -> float:
    if not retention.events_overdue or retention.oldest_event is None:
        return 0.0
    return max(0.0, snap.taken_at - retention.oldest_event - retention.events_retention)


def runs_lag(snap: PrefectSnapshot, retention: Retention) -> float:
    end, keep = retention.oldest_overdue_run_end, retention.runs_retention
    if end is None or keep is None:
        return 0.0
    return max(0.0, snap.taken_at - end - keep)


def _pool_label(pool: str) -> str:
    return clean(pool) if pool else OTHER


def _runs(snap: PrefectSnapshot, target: str) -> Iterator[Metric]:
    runs = snap.runs
    if runs is None:
        return
    stuck, oldest = STUCK_RUNS.family(), OLDEST_STATE_AGE.family()
    for pool in [*snap.scheduling.pool_counts, ""]:
        for state_type in UNFINISHED_STATE_TYPES:
            group = runs.stuck.get((pool, state_type))
            labels = [target, _pool_label(pool), state_type]
            stuck.add_metric(labels, group.stuck if group else 0)
            oldest.add_metric(labels, group.oldest_seconds if group else 0.0)
    complete = STUCK_SAMPLE_COMPLETE.sample([target], 1 if runs.sampled < runs.sample_limit else 0)
    yield from (stuck, oldest, complete)
    if runs.heartbeats is not None:
        yield HEARTBEATS_SEEN.sample([target], 1 if runs.heartbeats else 0)
    if runs.without_heartbeat is not None:
        zombies = WITHOUT_HEARTBEAT.family()
        for pool in [*snap.scheduling.pool_counts, ""]:
            zombies.add_metric([target, _pool_label(pool)], runs.without_heartbeat.get(pool, 0))
        yield zombies


def ended_rows(snap: PrefectSnapshot) -> dict[str, dict[str, int]]:
    """Ended runs by work pool label and state type, 'other' = the totals beyond the pools."""
    outcomes = snap.outcomes
    if outcomes is None:
        return {}
    rows = {clean(p): dict(c) for p, c in outcomes.by_pool.items()}
    rows[OTHER] = {t: max(0, n - sum(c.get(t, 0) for c in outcomes.by_pool.values()))
                   for t, n in outcomes.totals.items()}
    return rows


def _outcomes(snap: PrefectSnapshot, target: str) -> Iterator[Metric]:
    rows = ended_rows(snap)
    if not rows:
        return
    ended = RUNS_ENDED.family()
    for pool, counts in rows.items():
        for state_type, count in counts.items():
            ended.add_metric([target, pool, state_type], count)
    yield ended


def holders_running(snap: PrefectSnapshot, limit: ConcurrencyLimit) -> int:
    """Who could hold the limit's slots and is running (see LIMIT_HOLDERS)."""
    if limit.holders_running is not None:
        return limit.holders_running
    running = sum(snap.scheduling.runs_by_state_type.get(t, 0) for t in ("PENDING", "RUNNING"))
    return running + (snap.limits.running_task_runs if snap.limits else 0)


def _limits(snap: PrefectSnapshot, target: str, top_n: int) -> Iterator[Metric]:
    if snap.limits is None:
        return
    yield TASK_RUNS_RUNNING.sample([target], snap.limits.running_task_runs)
    limits = snap.limits.limits
    name_of = Folder({lim.name: lim.active_slots for lim in limits}, top_n)
    columns = ((LIMIT_SLOTS, lambda lim: lim.slots), (LIMIT_ACTIVE, lambda lim: lim.active_slots),
               (LIMIT_SATURATED, lambda lim: snap.taken_at - lim.saturated_since
                if lim.saturated_since is not None else 0.0),
               (LIMIT_HOLDERS, lambda lim: holders_running(snap, lim)))
    for metric_spec, value_of in columns:
        metric = metric_spec.family()
        folded = (bounded_sum if metric_spec is not LIMIT_SATURATED else bounded_max)(
            (name_of(lim.name), float(value_of(lim))) for lim in limits)
        for name, value in sorted(folded.items()):
            metric.add_metric([target, name], value)
        yield metric


def _readiness(snap: PrefectSnapshot, target: str) -> Iterator[Metric]:
    r = snap.readiness
    if r is None:
        return
    deployments = DEPLOYMENTS.family()
    for status, count in (("READY", r.in_a_queue - r.in_unpolled_queues),
                          ("NOT_READY", r.in_unpolled_queues),
                          ("UNKNOWN", r.deployments - r.in_a_queue)):
        deployments.add_metric([target, status], max(0, count))
    yield deployments
    waiting = QUEUE_DEPLOYMENTS.family()
    for queue in snap.scheduling.queues:
        if queue.id in r.by_unpolled_queue:
            waiting.add_metric([target, clean(queue.work_pool), clean(queue.name)],
                               r.by_unpolled_queue[queue.id])
    yield waiting
