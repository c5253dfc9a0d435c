"""The diagnosis, check by check, on hand-made snapshots: no server needed."""

from __future__ import annotations

import json

from exporter.diagnosis import diagnose
from exporter.finding import Finding, SourceFailure, exit_code, render_text
from exporter.pgbouncer.snapshot import Pool
from exporter.postgres.snapshot import BlockedSession, TableStats
from exporter.prefect.snapshot import PoolCounts, WorkPool
from exporter.source import Snapshot
from tests.factories import (
    group,
    healthy_pg,
    pg_snapshot,
    pgbouncer_snapshot,
    prefect_snapshot,
    session,
)


def diagnosed(*snapshots: Snapshot, failures: tuple[SourceFailure, ...] = ()) -> list[Finding]:
    return diagnose(snapshots, failures)


def checks(*snapshots: Snapshot) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for f in diagnose(snapshots):
        found.setdefault(f.check, []).append(f.severity)
    return found


def test_a_healthy_stack_has_nothing_to_say() -> None:
    assert diagnosed(healthy_pg(), pgbouncer_snapshot(), prefect_snapshot()) == []
    assert exit_code([]) == 0
    assert render_text([]).startswith("No findings")


def test_blocking_tree_names_the_root_blocker() -> None:
    # 1 (idle in transaction) blocks 10; 10 blocks 12; 2 (active) blocks 11
    pg = healthy_pg(
        blocked=(BlockedSession(10, (1,), 30.0), BlockedSession(12, (10,), 5.0),
                 BlockedSession(11, (2,), 3.0)),
        blockers=(session(1), session(2, state="active", age=20.0), session(10, "active")))
    found = [f for f in diagnosed(pg) if f.check == "lock_chain"]
    assert [f.title for f in found] == [
        "pid 1 blocks 2 session(s) while idle in transaction", "pid 2 blocks 1 session(s)"]
    assert found[0].severity == "critical"  # idle in transaction holder
    assert "pid 1 (prefect-server, prefect@prefect, client 10.0.0.7, idle in transaction" \
        in found[0].evidence[0]
    assert "pg_terminate_backend(1)" in found[0].action
    assert found[1].severity == "warning"  # active holder, waits under 60 s


def test_stalled_clients_and_long_transactions() -> None:
    pg = healthy_pg(
        activity=(group(state="active", wait_event_type="Client", wait_event="ClientRead",
                        client_read_in_transaction=True, max_transaction_age=90.0,
                        max_state_age=80.0),),
        oldest_transactions=(session(7, "idle in transaction", 1000.0),
                             session(8, "active", 700.0), session(9, "active", 30.0)))
    found = diagnosed(pg)
    by_check = {(f.check, f.severity) for f in found}
    assert ("client_read_stall", "critical") in by_check
    assert ("long_transaction", "critical") in by_check  # idle in transaction 1000 s > 900
    assert ("long_transaction", "warning") in by_check  # active 700 s > 600
    assert sum(1 for f in found if f.check == "long_transaction") == 2
    assert exit_code(found) == 2


def test_connection_budget_shows_the_arithmetic() -> None:
    pg = healthy_pg(activity=(group(app="prefect-server", sessions=80),
                              group(app="other", sessions=10)))
    found = [f for f  in diagnosed(pg, prefect_snapshot())
             if f.check == "connection_budget"]
    assert found[0].severity == "warning"  # 90 / 97
    text = " ".join(found[0].evidence)
    assert "max_connections 100 - superuser_reserved_connections 3 = 97" in text
    assert "pool_size 5 + max_overflow 10 = 15 connections: 6 processes fit" in text
    assert "80 sessions are Prefect's" in text and "about 6 process(es)" in text


def test_duplicated_services_safety_nets_tables_and_blind_spots() -> None:
    pg = pg_snapshot(group(app="services-1", listen_channel="prefect_automation_changes"),
                  group(app="services-2", listen_channel="prefect_automation_changes"),
                  timeouts_seconds={"idle_in_transaction_session_timeout": 0.0,
                                    "statement_timeout": 0.0},
                  can_read_all_stats=False,
                  tables=(TableStats("public", "log", 100_000, 500_000, None, 5_000.0),))
    assert checks(pg) == {
        "duplicated_services": ["warning"], "no_idle_in_transaction_timeout": ["warning"],
        "hot_table_bloat": ["warning"], "missing_pg_monitor": ["warning"],
        "no_statement_timeout": ["info"]}


def test_pool_waiters_with_demand_versus_size() -> None:
    pool = Pool("prefect", "prefect", "transaction",
                {"cl_active": 5, "cl_waiting": 3, "sv_active": 5}, 7.5)
    found = [f for f  in diagnosed(pgbouncer_snapshot((pool,)))
             if f.check == "pgbouncer_pool_waiting"]
    assert found[0].severity == "critical"
    assert "demand 8 clients (5 served, 3 waiting) vs pool_size 5" in found[0].evidence[0]


def test_statement_cache_with_transaction_pooling() -> None:
    pool = Pool("prefect", "prefect", "transaction", {"cl_active": 1}, 0.0)
    on = prefect_snapshot(settings={"server.database.sqlalchemy.pool_size": 5.0})
    assert checks(pgbouncer_snapshot((pool,)), on) == {
        "statement_cache_with_transaction_pooling": ["critical"]}
    assert checks(pgbouncer_snapshot((pool,)), prefect_snapshot()) \
        == {}
    session_pool = Pool("prefect", "prefect", "session", {"cl_active": 1}, 0.0)
    assert checks(pgbouncer_snapshot((session_pool,)), on) == {}


def test_scheduling_unserved_pool_backlog_and_horizon() -> None:
    pools = (WorkPool("paused", "process", "PAUSED", True, None, 1, 1, 9_000.0),
             WorkPool("slow", "process", "READY", False, 2, 1, 1, 9_990.0),
             WorkPool("idle", "process", "READY", False, None, 1, 1, 9_990.0))
    counts = {"paused": PoolCounts(4, 2, 0, 0, 9_000.0),
              "slow": PoolCounts(6, 0, 1, 2, 9_500.0),
              "idle": PoolCounts(0, 0, 3, 0, None)}
    pf = prefect_snapshot(pools=pools, pool_counts=counts, scheduled_future=50_000)
    found = {(f.check, f.title.split(" ")[2] if f.check != "scheduler_horizon" else "")
             : f for f  in diagnosed(pf)}
    assert found[("work_pool_unserved", "paused")].severity == "critical"  # Late runs
    assert "prefect work-pool resume paused" in found[("work_pool_unserved", "paused")].action
    assert "the oldest is 8min overdue" in found[("scheduled_backlog", "slow:")].evidence[0]
    assert ("scheduler_horizon", "") in found
    assert len(found) == 3


def test_source_failures_rank_first_and_json_round_trips() -> None:
    result = diagnosed(healthy_pg(timeouts_seconds={}),
                   failures=(SourceFailure("pgbouncer", "pgb", "connection refused"),))
    assert result[0].check == "source_down" and result[0].severity == "critical"
    assert json.loads(json.dumps([f.as_dict() for f in result]))[0]["target"] == "pgb"
    assert "1. [CRITICAL] cannot read pgbouncer pgb" in render_text(result)
