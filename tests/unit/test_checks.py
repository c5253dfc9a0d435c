"""Every check of the diagnosis, by id, fires on a hand-made snapshot: the smallest one that
shows its situation. `pytest tests/unit/test_checks.py -k stuck_runs` finds the check's test.

A new check (declared in its kind's checks.py, gathered in exporter/diagnosis.CHECKS) needs a
line in FIRES: test_every_check_has_a_snapshot_that_fires_it fails until it has one. Finer
tests of a check's evidence and edges live in test_findings.py, test_chain.py,
test_prefect_*.py and test_redis_checks.py; test_parity.py holds the doctor to the alerts."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from exporter import alerting, cli, roots
from exporter.diagnosis import BY_ID, CHECKS, diagnose
from exporter.finding import SEVERITY_RANK, Context, SourceFailure
from exporter.kinds import KINDS
from exporter.pgbouncer.snapshot import Database, Pool
from exporter.postgres.snapshot import (
    Address,
    BlockedSession,
    DatabaseSize,
    IndexBuild,
    Involved,
    Relation,
    TopStatements,
)
from exporter.prefect.snapshot import (
    ConcurrencyLimit,
    PoolCounts,
    Readiness,
    StuckGroup,
    WorkPool,
    WorkQueue,
)
from exporter.redis.snapshot import Stream
from exporter.source import Snapshot
from exporter.thresholds import THRESHOLDS, thresholds
from tests.factories import (
    events,
    group,
    healthy_pg,
    invalid_index,
    limits,
    oldest,
    outcomes,
    pgbouncer_snapshot,
    prefect_probe,
    prefect_snapshot,
    probe,
    redis_group,
    redis_snapshot,
    redis_stream,
    retention,
    runs,
    services,
    session,
    table,
)

NOW = 10_000.0
IDLE = "idle in transaction"


@dataclass(frozen=True)
class Fires:
    snapshots: tuple[Snapshot, ...]
    failures: tuple[SourceFailure, ...] = ()
    overrides: Mapping[str, float] = field(default_factory=dict)
    also: frozenset[str] = frozenset()  # what the same situation fires besides


def pg(*groups: Any, **kw: Any) -> Snapshot:
    """A healthy PostgreSQL (ten idle sessions, both timeouts set) with what is given."""
    if groups:
        kw["activity"] = (group(sessions=10), *groups)
    return replace(healthy_pg(**kw), taken_at=NOW)


def pf(**kw: Any) -> Snapshot:
    return prefect_snapshot(taken_at=NOW, **kw)


def pgb(*pools: Pool, **kw: Any) -> Snapshot:
    return pgbouncer_snapshot(pools, taken_at=NOW, **kw)


def pool(waiting: int) -> Pool:
    return Pool("prefect", "prefect", "transaction",
                {"cl_active": 5, "cl_waiting": waiting, "sv_active": 5}, 2.0)


def rds(*streams: Stream, **kw: Any) -> Snapshot:
    return redis_snapshot(*streams, taken_at=NOW, **kw)


def served(online: int = 1, paused: bool = False) -> WorkPool:
    return WorkPool("a", "process", "PAUSED" if paused else "READY" if online else "NOT_READY",
                    paused, None, max(online, 1), online, NOW - 5)


def overdue(late: int, since: float, *pools: WorkPool) -> Snapshot:
    counts = PoolCounts(late or 1, late, 0, 0, NOW - since)
    return pf(totals=counts, pool_counts={"a": counts}, pools=pools)


def events_stream(persister: tuple[float, ...], delivered: str = "1000-9", lag: int = 0,
                  ghost: bool = False) -> Stream:
    groups = [redis_group("event-persister", delivered, persister, lag=lag),
              redis_group("reactive-triggers", "1000-9", (1.0,))]
    if ghost:
        groups.append(redis_group("ephemeral-old", "1000-1", (7200.0,), lag=8))
    return redis_stream("events", *groups, last_generated_id="1000-9")


def prefect_sessions_blocked() -> Snapshot:
    """Four of Prefect's sessions (application_name prefect-server, as prefect_snapshot()
    reports) wait on flow_run behind pid 4711 of another application."""
    writers = (4801, 4802, 4803, 4804)
    holder = session(4711, age=30.0, app="incident-holder")
    return pg(activity=(group(app="incident-holder", state=IDLE, max_transaction_age=30.0),
                        group(app="prefect-server", state="active", wait_event_type="Lock",
                              wait_event="relation", sessions=4, max_transaction_age=20.0)),
              group_pids=((4711,), writers),
              blocked=tuple(BlockedSession(pid, (4711,), 20.0) for pid in writers),
              blockers=(holder,),
              involved=Involved((holder,), {}, {p: Relation("public", "flow_run")
                                                for p in writers}),
              tables=(table("flow_run", 10, 0),))


RUNNING_A = {"pools": (served(),), "pool_counts": {"a": PoolCounts(0, 0, 0, 1, None)}}

# check id -> the smallest situation that makes it fire
FIRES: dict[str, Fires] = {
    # ---- exporter/diagnosis.py
    "source_down": Fires((pg(),), (SourceFailure("postgres", "db2", "connection refused"),)),
    # ---- exporter/postgres/checks.py
    "lock_chain": Fires((pg(group(), blocked=(BlockedSession(10, (1,), 30.0),),
                            blockers=(session(1),)),)),
    "client_read_stall": Fires((pg(group(app="copier", state="active",
                                         client_read_in_transaction=True,
                                         max_transaction_age=91.0, max_state_age=90.0)),)),
    "idle_in_transaction": Fires((pg(group(app="holder", state=IDLE,
                                           max_transaction_age=400.0)),)),
    "long_transaction": Fires((pg(group(app="etl", state="active",
                                        max_transaction_age=700.0)),)),
    "connection_budget": Fires((pg(activity=(group(sessions=84),)),)),
    "duplicated_services": Fires((pg(group(app="s", listen_channel="prefect_automation_changes",
                                           sessions=2)), pf(docket_scheme="memory"))),
    "no_idle_in_transaction_timeout": Fires((pg(timeouts_seconds={
        "idle_in_transaction_session_timeout": 0.0, "statement_timeout": 60.0}),)),
    "no_statement_timeout": Fires((pg(timeouts_seconds={
        "idle_in_transaction_session_timeout": 300.0, "statement_timeout": 0.0}),)),
    "hot_table_bloat": Fires((pg(tables=(table("log", 100_000, 500_000, None, NOW - 10),)),)),
    "stale_statistics": Fires((pg(tables=(table("log", 30_000, 0,
                                                modified_since_analyze=30_000),)),)),
    "invalid_index": Fires((pg(invalid_indexes=(invalid_index("ix_log__flow_run_id"),),
                               invalid_index_count=1),)),
    "index_build": Fires((pg(index_builds=(IndexBuild(
        7, "public", "task_run", "ix_t", "CREATE INDEX CONCURRENTLY", "building index", 0.4),)),)),
    "deadlocks": Fires((pg(database="prefect",
                           databases=(DatabaseSize("prefect", 1, deadlocks=2),)),)),
    "pg_stat_statements_unavailable": Fires((pg(top_statements=TopStatements(
        NOW, "not installed")),)),
    "table_retention_backlog": Fires((pg(oldest_rows=(oldest("events", "occurred",
                                                             8 * 86400),)), pf())),
    "table_unretained_rows": Fires((pg(oldest_rows=(oldest("log", "timestamp", 40 * 86400),)),
                                    pf())),
    "oldest_rows_unreadable": Fires((pg(oldest_rows=(oldest("log", "timestamp", None),),
                                        tables=(table("log", 10, 0, total_bytes=2 * 1024 ** 3),)),
                                     )),
    "database_growing": Fires((pg(databases=(DatabaseSize("prefect", 2_000_000_000),)),),
                              overrides={"database_size_limit_bytes": 1e9}),
    "missing_pg_monitor": Fires((pg(can_read_all_stats=False),)),
    # ---- exporter/pgbouncer/checks.py
    "pgbouncer_pool_waiting": Fires((pgb(pool(3)),)),
    "pgbouncer_postgres_unmatched": Fires((pgb(pool(0), databases=(Database(
        "prefect", "elsewhere", "5432", "prefect", "", "", {"pool_size": 5}),)),
        pg(address=Address("db", "5432", "prefect")))),
    # ---- exporter/prefect/checks.py, compat.py, chain.py
    "api_slow": Fires((pf(probe=probe(ready_seconds=3.5, ready_ok=False, health_seconds=3.0)),)),
    "api_waits_on_database": Fires((pgb(pool(12)), pf(probe=probe(
        ready_seconds=1.4, health_seconds=0.006))), also=frozenset({"pgbouncer_pool_waiting"})),
    "prefect_api_pool_saturated": Fires((pg(), prefect_probe(NOW, ready_seconds=1.4,
                                                             health_seconds=0.006))),
    "work_pool_unserved": Fires((overdue(2, 60, served(online=0)),)),
    "late_runs": Fires((overdue(2, 60, served()),)),
    "scheduled_backlog": Fires((overdue(0, 900, served()),)),
    "scheduler_horizon": Fires((pf(scheduled_future=50_000),)),
    "statement_cache_with_transaction_pooling": Fires((
        pgb(pool(0)), pf(settings={"server.database.sqlalchemy.pool_size": 5.0}))),
    "late_runs_service_stalled": Fires((pf(services=services(
        unmarked_overdue=2, unmarked_overdue_by_pool={"a": 2}), pools=(served(),)),)),
    "scheduler_stalled": Fires((pf(services=services(deployments_without_future_runs=1)),)),
    "event_pipeline_stalled": Fires((pf(events=events(NOW, newest=NOW - 900,
                                                      last_run_start=NOW - 60)),)),
    "events_retention_lagging": Fires((pf(retention=retention(
        NOW, oldest_event=NOW - 7 * 86400 - 7200, events_overdue=True)),)),
    "stuck_runs": Fires((pf(**RUNNING_A, runs=runs(stuck={("a", "RUNNING"): StuckGroup(
        1, 7200.0)})),)),
    "zombie_runs": Fires((pf(**RUNNING_A, runs=runs(without_heartbeat={"a": 1})),)),
    "heartbeats_not_seen": Fires((pf(runs_by_state_type={"RUNNING": 2},
                                     runs=runs(heartbeats=False, without_heartbeat=None)),)),
    "concurrency_slots_leaked": Fires((pf(limits=limits(
        ConcurrencyLimit("etl", 2, 2, True, None, NOW - 1200))),)),
    "work_queue_unpolled": Fires((pf(
        pools=(served(),), pool_counts={"a": PoolCounts(0, 0, 0, 0, None)},
        queues=(WorkQueue("a", "gpu", False, None, "q1", "NOT_READY", NOW - 900),),
        readiness=Readiness(4, 3, 2, {"q1": 2})),)),
    "failed_runs": Fires((pf(outcomes=outcomes(
        {"COMPLETED": 6, "FAILED": 4, "CRASHED": 0, "CANCELLED": 0})),)),
    "crashed_runs": Fires((pf(outcomes=outcomes(
        {"COMPLETED": 8, "FAILED": 0, "CRASHED": 2, "CANCELLED": 0})),)),
    "prefect_version_blind_spot": Fires((pf(version="2.20.27", vacuum_kinds=None),)),
    "prefect_database_blocked": Fires((prefect_sessions_blocked(), pf()),
                                      also=frozenset({"lock_chain"})),
    # ---- exporter/redis/checks.py
    "prefect_services_down": Fires((rds(redis_stream(
        "prefect:stream", redis_group("docket-workers", "1000-9", (75.0,)),
        last_generated_id="1000-9"), target="docket"),)),
    "prefect_events_not_persisted": Fires((rds(events_stream(persister=(), delivered="1000-2",
                                                             lag=7)),)),
    "redis_stream_group_abandoned": Fires((rds(events_stream(persister=(0.5,), ghost=True)),)),
    "redis_stream_group_dead_consumers": Fires((rds(redis_stream(
        "prefect:stream", redis_group("docket-workers", "1000-9", (0.5, 7200.0)),
        last_generated_id="1000-9"), target="docket"),)),
    "redis_memory_near_max": Fires((rds(used_memory=85, maxmemory=100),)),
}


def test_every_check_has_a_snapshot_that_fires_it() -> None:
    assert sorted(FIRES) == sorted(BY_ID)


@pytest.mark.parametrize("check", sorted(FIRES))
def test_check_fires(check: str) -> None:
    """The check reports its situation (and nothing else does, but what the situation
    causes), at one of the severities it declares; a check that is also an incident is
    observed on the same snapshots."""
    case = FIRES[check]
    diagnosed = diagnose(case.snapshots, case.failures, case.overrides)
    assert {f.check for f in diagnosed} == {check, *case.also}
    found = [f for f in diagnosed if f.check == check]
    assert {f.severity for f in found} <= set(BY_ID[check].severities)
    if BY_ID[check].incident:
        context = Context(thresholds(case.overrides), case.snapshots)
        observed = {o.kind for s in case.snapshots for k in KINDS if k.owns(s)
                    for o in k.observe(s, context)}
        assert check in observed


def test_the_healthy_stack_fires_nothing() -> None:
    """The snapshots the situations start from say nothing by themselves."""
    assert diagnose([pg(), pgb(), pf(), rds()]) == []


# ---- the registry ----------------------------------------------------------------------------

def test_each_check_is_declared_once_with_known_severities_and_thresholds() -> None:
    assert len(CHECKS) == len(BY_ID)
    for check in CHECKS:
        assert check.severities and all(s in SEVERITY_RANK for s in check.severities), check.id
        assert list(check.severities) == sorted(check.severities, key=SEVERITY_RANK.__getitem__)
        assert set(check.thresholds) <= set(THRESHOLDS), check.id
        assert check.role in ("root", "symptom", ""), check.id
        assert check.meaning and "\n" not in check.meaning, check.id


def test_a_check_reports_only_the_severities_it_declares() -> None:
    with pytest.raises(ValueError, match="lock_chain: info is not one of"):
        BY_ID["lock_chain"].finding("info", "db", "title", (), "do")


def test_what_names_a_check_names_a_declared_one() -> None:
    """The landing page's 'meanwhile' list, and the alert rules' doctor counterparts (with a
    severity the check reports)."""
    named = set(roots.PREFECT_MEANWHILE) | {roots.PREFECT_BLOCKED}
    assert named - set(BY_ID) == set()
    for alert in alerting.ALERTS:  # its check's declaration, as the diagnosis gathers it
        assert alert.check is None or BY_ID[alert.check.id] is alert.check, alert.name
        assert alert.check is None or alert.severity in alert.check.severities, alert.name


def test_doctor_list_checks_prints_every_check(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["doctor", "--list-checks"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == sorted(BY_ID)
    row = next(line for line in lines if line.startswith("lock_chain "))
    assert row.split()[1] == "critical/warning"
    assert row.endswith(BY_ID["lock_chain"].meaning)


def test_every_threshold_is_read_by_a_check_or_an_alert() -> None:
    """A threshold nothing declares is one the doctor and the pager may not agree on."""
    declared = {name for check in CHECKS for name in check.thresholds}
    in_rules = {name for a in alerting.ALERTS for name in THRESHOLDS if f"{{{name}}}" in a.expr}
    assert set(THRESHOLDS) - declared - in_rules == set()


def test_a_lock_storm_says_how_many_wait_beyond_those_whose_blockers_were_asked() -> None:
    """In a lock storm pg_blocking_pids() is asked for the longest waits only (the source's
    MAX_BLOCKERS_ASKED): the chain's count is of those, and the finding says how many wait in
    all rather than understate it."""
    asked = tuple(BlockedSession(10 + i, (1,), 30.0 - i) for i in range(3))
    unasked = tuple(BlockedSession(20 + i, (), 5.0) for i in range(2))
    [calm] = [f for f in diagnose([pg(group(), blocked=asked)]) if f.check == "lock_chain"]
    assert calm.title == "pid 1 blocks 3 session(s)"
    [storm] = [f for f in diagnose([pg(group(), blocked=asked + unasked)])
               if f.check == "lock_chain"]
    assert storm.title == "pid 1 blocks 3 session(s) (of 5 waiting on locks)"
    assert any(e.startswith("2 more session(s) wait on locks") for e in storm.evidence)
