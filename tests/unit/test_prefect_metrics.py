"""Prefect snapshot -> metric families, with no server: the work pool 'other' arithmetic."""

from __future__ import annotations

from exporter.labels import OTHER
from exporter.metricspec import MetricOptions
from exporter.prefect.metrics import pool_rows, prefect_families
from exporter.prefect.snapshot import PoolCounts
from tests.factories import prefect_snapshot
from tests.helpers import render


def test_other_is_what_the_totals_hold_beyond_the_listed_pools() -> None:
    snap = prefect_snapshot(
        totals=PoolCounts(backlog=10, late=4, upcoming=7, in_flight=3,
                          oldest_backlog_start=100.0),
        pool_counts={"a": PoolCounts(6, 3, 2, 1, 500.0), "b": PoolCounts(1, 0, 5, 0, 300.0)})
    other = pool_rows(snap)[OTHER]
    # runs in no work pool (flow.serve) or in pools beyond the top N
    assert (other.backlog, other.late, other.upcoming, other.in_flight) == (3, 1, 0, 2)
    # the totals' most overdue run is older than every listed pool's: it is other's
    assert other.oldest_backlog_start == 100.0


def test_other_is_never_negative_and_knows_no_oldest_it_cannot_place() -> None:
    # counts are taken concurrently: a run may move between a pool's count and the total's
    snap = prefect_snapshot(
        totals=PoolCounts(backlog=2, late=0, upcoming=1, in_flight=0,
                          oldest_backlog_start=300.0),
        pool_counts={"a": PoolCounts(3, 1, 1, 1, 300.0)})
    other = pool_rows(snap)[OTHER]
    assert (other.backlog, other.late, other.upcoming, other.in_flight) == (0, 0, 0, 0)
    assert other.oldest_backlog_start is None  # the oldest overdue run is a's


def test_backlog_delay_per_pool_from_the_snapshot_time() -> None:
    snap = prefect_snapshot(
        taken_at=1000.0, totals=PoolCounts(2, 0, 0, 0, 400.0),
        pool_counts={"a": PoolCounts(2, 0, 0, 0, 400.0), "empty": PoolCounts(0, 0, 0, 0, None)})
    s = render(prefect_families(snap, MetricOptions(label_top_n=20)))
    assert s.value("prefect_scheduled_backlog_max_delay_seconds", work_pool="a") == 600.0
    assert s.value("prefect_scheduled_backlog_max_delay_seconds", work_pool="empty") == 0.0
    assert s.value("prefect_scheduled_backlog_max_delay_seconds", work_pool=OTHER) == 0.0
    assert s.value("prefect_scheduled_backlog_runs", work_pool=OTHER) == 0
