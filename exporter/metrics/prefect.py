"""Prefect snapshot -> metric families. Pure: no I/O, no clock (ages are from taken_at)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import Metric

from exporter.catalogue import family
from exporter.labels import OTHER, clean
from exporter.sources.prefect import PoolCounts, PrefectSnapshot

POOL_STATUSES = ("READY", "NOT_READY", "PAUSED")


def prefect_families(snap: PrefectSnapshot, target: str) -> Iterator[Metric]:
    info = family("prefect_server_info")
    info.add_metric([target, snap.version], 1)
    yield info
    states = family("prefect_flow_runs")
    for state_type, count in snap.runs_by_state_type.items():
        states.add_metric([target, state_type], count)
    yield states
    future = family("prefect_scheduled_runs")
    future.add_metric([target], snap.scheduled_future)
    yield future
    yield from _scheduling(snap, target)
    yield from _work_pools(snap, target)
    yield from _work_queues(snap, target)
    yield from _settings(snap, target)
    yield from _requests(snap, target)


def pool_rows(snap: PrefectSnapshot) -> dict[str, PoolCounts]:
    """Counts per listed work pool, plus OTHER: what the totals hold beyond them (runs in no
    work pool, or in pools beyond the top N). Counts are taken concurrently, so the remainder is
    clamped at 0. OTHER's oldest run is known only when it is older than every listed pool's."""
    rows = {clean(name): counts for name, counts in snap.pool_counts.items()}
    t = snap.totals
    listed = list(snap.pool_counts.values())
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


def _scheduling(snap: PrefectSnapshot, target: str) -> Iterator[Metric]:
    rows = pool_rows(snap)
    columns = (("prefect_scheduled_backlog_runs", "backlog"), ("prefect_late_runs", "late"),
               ("prefect_upcoming_runs", "upcoming"),
               ("prefect_work_pool_runs_in_flight", "in_flight"))
    for name, attribute in columns:
        metric = family(name)
        for pool, counts in rows.items():
            metric.add_metric([target, pool], getattr(counts, attribute))
        yield metric
    delay = family("prefect_scheduled_backlog_max_delay_seconds")
    for pool, counts in rows.items():
        if counts.oldest_backlog_start is not None:
            delay.add_metric([target, pool], max(0.0, snap.taken_at - counts.oldest_backlog_start))
        elif counts.backlog == 0:
            delay.add_metric([target, pool], 0.0)
    yield delay


def _work_pools(snap: PrefectSnapshot, target: str) -> Iterator[Metric]:
    names = ("prefect_work_pool_info", "prefect_work_pool_status", "prefect_work_pool_paused",
             "prefect_work_pool_concurrency_limit", "prefect_work_pool_workers",
             "prefect_work_pool_online_workers",
             "prefect_work_pool_last_heartbeat_timestamp_seconds")
    m = {name: family(name) for name in names}
    for pool in snap.pools:
        labels = [target, clean(pool.name)]
        m["prefect_work_pool_info"].add_metric([*labels, clean(pool.type)], 1)
        for status in POOL_STATUSES:
            m["prefect_work_pool_status"].add_metric([*labels, status],
                                                      1 if pool.status == status else 0)
        m["prefect_work_pool_paused"].add_metric(labels, 1 if pool.paused else 0)
        if pool.concurrency_limit is not None:
            m["prefect_work_pool_concurrency_limit"].add_metric(labels, pool.concurrency_limit)
        m["prefect_work_pool_workers"].add_metric(labels, pool.workers)
        m["prefect_work_pool_online_workers"].add_metric(labels, pool.online_workers)
        if pool.last_heartbeat is not None:
            m["prefect_work_pool_last_heartbeat_timestamp_seconds"].add_metric(
                labels, pool.last_heartbeat)
    yield from m.values()


def _work_queues(snap: PrefectSnapshot, target: str) -> Iterator[Metric]:
    paused = family("prefect_work_queue_paused")
    limit = family("prefect_work_queue_concurrency_limit")
    for queue in snap.queues:
        labels = [target, clean(queue.work_pool), clean(queue.name)]
        paused.add_metric(labels, 1 if queue.paused else 0)
        if queue.concurrency_limit is not None:
            limit.add_metric(labels, queue.concurrency_limit)
    yield paused
    yield limit


def _settings(snap: PrefectSnapshot, target: str) -> Iterator[Metric]:
    metric = family("prefect_server_setting")
    for name, value in sorted(snap.settings.items()):
        metric.add_metric([target, name], value)
    yield metric


def _requests(snap: PrefectSnapshot, target: str) -> Iterator[Metric]:
    count = family("prefect_api_requests_total")
    errors = family("prefect_api_request_errors_total")
    seconds = family("prefect_api_request_duration_seconds_total")
    for endpoint, stats in sorted(snap.requests.items()):
        count.add_metric([target, endpoint], stats.count)
        errors.add_metric([target, endpoint], stats.errors)
        seconds.add_metric([target, endpoint], stats.seconds)
    yield from (count, errors, seconds)
