"""Prefect snapshot -> metric families, with no server: the work pool 'other' arithmetic."""

from __future__ import annotations

from exporter.labels import OTHER
from exporter.metricspec import MetricOptions
from exporter.prefect.metrics import pool_rows, prefect_families
from exporter.prefect.snapshot import (
    ConcurrencyLimit,
    PoolCounts,
    Readiness,
    RequestStats,
    StuckGroup,
    WorkQueue,
)
from tests.factories import (
    events,
    limits,
    outcomes,
    prefect_probe,
    prefect_snapshot,
    probe,
    retention,
    runs,
    services,
)
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


def test_services_events_and_retention_metrics() -> None:
    snap = prefect_snapshot(
        taken_at=1_000_000.0,
        probe=probe(ready_seconds=0.25, health_seconds=0.003, ready_failures=3,
                    health_failures=1),
        services=services(unmarked_overdue=5,
                          unmarked_overdue_by_pool={"a": 2}, deployments_without_future_runs=1,
                          recently_scheduled_deployments=4),
        events=events(1_000_000.0, newest=999_400.0, last_run_start=999_970.0),
        retention=retention(1_000_000.0, oldest_event=1_000_000.0 - 7 * 86400 - 5400,
                            events_overdue=True, runs_retention=90 * 86400.0,
                            oldest_overdue_run_end=1_000_000.0 - 90 * 86400 - 60),
        requests={"/ready": RequestStats(count=10, errors=3, seconds=1.0)})
    s = render(prefect_families(snap, MetricOptions(label_top_n=20)))
    assert s.value("prefect_api_ready_duration_seconds") == 0.25
    assert s.value("prefect_api_ready_failures_total") == 3
    assert s.value("prefect_api_health_duration_seconds") == 0.003
    assert s.value("prefect_api_health_failures_total") == 1
    assert s.value("prefect_overdue_unmarked_runs", work_pool="a") == 2
    assert s.value("prefect_overdue_unmarked_runs", work_pool=OTHER) == 3
    assert s.value("prefect_deployments_without_future_runs") == 1
    assert s.value("prefect_deployments_recently_scheduled") == 4
    assert s.value("prefect_events_newest_age_seconds") == 600
    assert s.value("prefect_flow_run_last_start_age_seconds") == 30
    assert s.value("prefect_events_oldest_age_seconds") == 7 * 86400 + 5400
    assert s.value("prefect_retention_lag_seconds", kind="events") == 5400
    assert s.value("prefect_retention_lag_seconds", kind="flow_runs") == 60


def test_no_event_within_a_day_reads_at_least_a_day_and_nothing_overdue_is_no_lag() -> None:
    snap = prefect_snapshot(taken_at=5e6, events=events(5e6, newest=None, looked_back=86400.0),
                            retention=retention(5e6, oldest_event=None, events_overdue=False))
    s = render(prefect_families(snap, MetricOptions(label_top_n=20)))
    assert s.value("prefect_events_newest_age_seconds") == 86400
    assert s.find("prefect_events_oldest_age_seconds") is None
    assert s.value("prefect_retention_lag_seconds", kind="events") == 0
    assert s.find("prefect_retention_lag_seconds", kind="flow_runs") is None


def test_a_failed_polls_partial_snapshot_exports_its_probe_and_nothing_else() -> None:
    s = render(prefect_families(prefect_probe(ready_seconds=1.4, health_seconds=0.006),
                                MetricOptions(label_top_n=20)))
    assert s.value("prefect_api_ready_duration_seconds") == 1.4
    assert s.value("prefect_api_health_duration_seconds") == 0.006
    assert s.names() == {"prefect_api_ready_duration_seconds", "prefect_api_ready_failures_total",
                         "prefect_api_health_duration_seconds",
                         "prefect_api_health_failures_total"}


def test_a_server_without_events_or_services_parts_exports_none_of_them() -> None:
    snap = prefect_snapshot(probe=None, services=None, events=None, retention=None)
    names = render(prefect_families(snap, MetricOptions(label_top_n=20))).names()
    assert not names & {"prefect_api_ready_duration_seconds", "prefect_events_newest_age_seconds",
                        "prefect_retention_lag_seconds"}


def test_stuck_zombies_outcomes_limits_and_deployment_status() -> None:
    snap = prefect_snapshot(
        taken_at=10_000.0, pool_counts={"a": PoolCounts(0, 0, 0, 0, None)},
        runs_by_state_type={"RUNNING": 1, "PENDING": 0},
        runs=runs(stuck={("a", "RUNNING"): StuckGroup(1, 7200.0),
                         ("", "PAUSED"): StuckGroup(0, 30.0)},
                  without_heartbeat={"": 2}),
        outcomes=outcomes({"COMPLETED": 10, "FAILED": 3, "CRASHED": 1, "CANCELLED": 0},
                          {"a": {"COMPLETED": 4, "FAILED": 3, "CRASHED": 0, "CANCELLED": 0}}),
        limits=limits(ConcurrencyLimit("etl", 2, 2, True, None, 9_000.0),
                      ConcurrencyLimit("tag:db", 3, 1, True, 1, None), running_task_runs=4),
        readiness=Readiness(deployments=10, in_a_queue=7, in_unpolled_queues=2),
        queues=(WorkQueue("a", "gpu", False, None, "q", "NOT_READY", 9_100.0),))
    s = render(prefect_families(snap, MetricOptions(label_top_n=20)))
    assert s.value("prefect_flow_runs_stuck", work_pool="a", state_type="RUNNING") == 1
    assert s.value("prefect_flow_run_oldest_state_age_seconds", work_pool="a",
                   state_type="RUNNING") == 7200
    # every listed pool and 'other', every unfinished state, zero when nothing is there
    assert len(s.values("prefect_flow_runs_stuck")) == 2 * 4
    assert s.value("prefect_flow_runs_stuck", work_pool=OTHER, state_type="CANCELLING") == 0
    assert s.value("prefect_flow_runs_without_heartbeat", work_pool=OTHER) == 2
    assert s.value("prefect_flow_runs_without_heartbeat", work_pool="a") == 0
    assert s.value("prefect_flow_runs_ended", work_pool="a", state_type="FAILED") == 3
    assert s.value("prefect_flow_runs_ended", work_pool=OTHER, state_type="COMPLETED") == 6
    assert s.value("prefect_flow_runs_ended", work_pool=OTHER, state_type="CRASHED") == 1
    assert s.value("prefect_concurrency_limit_saturated_seconds", limit="etl") == 1000
    # a global limit's possible holders: every PENDING/RUNNING flow run and RUNNING task run
    assert s.value("prefect_concurrency_limit_holders_running", limit="etl") == 1 + 4
    assert s.value("prefect_concurrency_limit_holders_running", limit="tag:db") == 1
    assert s.value("prefect_deployments", status="NOT_READY") == 2
    assert s.value("prefect_deployments", status="READY") == 5
    assert s.value("prefect_deployments", status="UNKNOWN") == 3
    assert s.value("prefect_work_queue_status", work_queue="gpu", status="NOT_READY") == 1
    assert s.value("prefect_work_queue_last_polled_age_seconds", work_queue="gpu") == 900
