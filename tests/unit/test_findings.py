"""The diagnosis, check by check, on hand-made snapshots: no server needed."""

from __future__ import annotations

import json
from dataclasses import replace

from exporter.diagnosis import diagnose
from exporter.finding import Finding, SourceFailure, exit_code, render_text
from exporter.pgbouncer.snapshot import Pool
from exporter.postgres.snapshot import BlockedSession, DatabaseSize, IndexBuild
from exporter.prefect.snapshot import PoolCounts, WorkPool
from exporter.source import Snapshot
from tests.factories import (
    group,
    healthy_pg,
    invalid_index,
    pg_snapshot,
    pgbouncer_snapshot,
    prefect_snapshot,
    session,
    table,
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


def test_lock_chain_names_the_root_blocker() -> None:
    # 1 (idle in transaction) blocks 10; 10 blocks 12; 2 (active) blocks 11
    pg = healthy_pg(
        blocked=(BlockedSession(10, (1,), 30.0), BlockedSession(12, (10,), 5.0),
                 BlockedSession(11, (2,), 3.0)),
        blockers=(session(1), session(2, state="active", age=20.0), session(10, "active")))
    found = [f for f in diagnosed(pg) if f.check == "lock_chain"]
    assert [f.title for f in found] == [
        "pid 1 blocks 2 session(s) while idle in transaction", "pid 2 blocks 1 session(s)"]
    # the severity follows the longest wait, as PostgresSessionsBlocked pages: 30 s < 60 s
    assert [f.severity for f in found] == ["warning", "warning"]
    assert "pid 1 (prefect-server, prefect@prefect, client 10.0.0.7, idle in transaction" \
        in found[0].evidence[0]
    assert "it is idle in transaction" in found[0].evidence[2]
    assert "pg_terminate_backend(1)" in found[0].action
    longer = replace(pg, blocked=(BlockedSession(10, (1,), 61.0),))
    assert [f.severity for f in diagnosed(longer) if f.check == "lock_chain"] == ["critical"]


def test_client_read_stall_idle_in_transaction_and_long_transaction() -> None:
    pg = healthy_pg(
        activity=(group(app="copier", state="active", wait_event_type="Client",
                        wait_event="ClientRead", client_read_in_transaction=True,
                        max_transaction_age=90.0, max_state_age=80.0),
                  group(app="holder", state="idle in transaction", max_transaction_age=1000.0),
                  group(app="etl", state="active", max_transaction_age=700.0)),
        oldest_transactions=(session(7, "idle in transaction", 1000.0, app="holder"),
                             session(8, "active", 700.0, app="etl")))
    found = diagnosed(pg)
    by_check = {(f.check, f.severity) for f in found}
    assert by_check == {("client_read_stall", "critical"),
                        ("idle_in_transaction", "critical"),  # 1000 s > 900
                        ("long_transaction", "warning")}  # active 700 s > 600
    idle = next(f for f in found if f.check == "idle_in_transaction")
    assert idle.title == "a transaction idle in transaction for 17min (holder on prefect)"
    assert idle.evidence[0].startswith("pid 7 (holder,")
    assert exit_code(found) == 2


def test_long_transaction_is_seen_beyond_the_top_n_list() -> None:
    """With --top-transactions 0 the list is empty, yet the alert fires: so does the doctor,
    saying it cannot name the pid."""
    pg = healthy_pg(activity=(group(app="etl", state="active", max_transaction_age=2000.0),),
                    oldest_transactions=())
    (finding,) = diagnosed(pg)
    assert (finding.check, finding.severity) == ("long_transaction", "critical")
    assert "not among the 0 oldest transactions" in finding.evidence[0]


def test_connection_budget_shows_the_arithmetic() -> None:
    pg = healthy_pg(activity=(group(app="prefect-server", sessions=80),
                              group(app="other", sessions=10)))
    found = [f for f in diagnosed(pg, prefect_snapshot())
             if f.check == "connection_budget"]
    assert found[0].severity == "warning"  # 90 / 97
    text = " ".join(found[0].evidence)
    assert "max_connections 100 - superuser_reserved_connections 3 = 97" in text
    assert "pool_size 5 + max_overflow 10 = 15 connections: 6 processes fit" in text
    assert "80 sessions are Prefect's" in text and "about 6 process(es)" in text


def test_duplicated_services_no_timeouts_hot_table_bloat_and_missing_pg_monitor() -> None:
    pg = pg_snapshot(group(app="services-1", listen_channel="prefect_automation_changes"),
                  group(app="services-2", listen_channel="prefect_automation_changes"),
                  timeouts_seconds={"idle_in_transaction_session_timeout": 0.0,
                                    "statement_timeout": 0.0},
                  can_read_all_stats=False,
                  tables=(table("log", 100_000, 500_000, None, 5_000.0),))
    assert checks(pg) == {
        "duplicated_services": ["warning"], "no_idle_in_transaction_timeout": ["warning"],
        "hot_table_bloat": ["warning"], "missing_pg_monitor": ["warning"],
        "no_statement_timeout": ["info"]}


def test_pgbouncer_pool_waiting_shows_demand_versus_size() -> None:
    pool = Pool("prefect", "prefect", "transaction",
                {"cl_active": 5, "cl_waiting": 3, "sv_active": 5}, 7.5)
    found = [f for f in diagnosed(pgbouncer_snapshot((pool,)))
             if f.check == "pgbouncer_pool_waiting"]
    assert found[0].severity == "critical"
    assert "demand 8 clients (5 served, 3 waiting) vs pool_size 5" in found[0].evidence[0]


def test_statement_cache_with_transaction_pooling() -> None:
    pool = Pool("prefect", "prefect", "transaction", {"cl_active": 1}, 0.0)
    on = prefect_snapshot(settings={"server.database.sqlalchemy.pool_size": 5.0})
    assert checks(pgbouncer_snapshot((pool,)), on) == {
        "statement_cache_with_transaction_pooling": ["warning"]}
    assert checks(pgbouncer_snapshot((pool,)), prefect_snapshot()) \
        == {}
    session_pool = Pool("prefect", "prefect", "session", {"cl_active": 1}, 0.0)
    assert checks(pgbouncer_snapshot((session_pool,)), on) == {}
    # PgBouncer 1.21+ tracking protocol-level prepared statements: asyncpg's work through it
    tracking = pgbouncer_snapshot((pool,), config={"pool_mode": "transaction",
                                                   "max_prepared_statements": "200"})
    assert checks(tracking, on) == {}


def test_work_pool_unserved_late_runs_scheduled_backlog_and_scheduler_horizon() -> None:
    pools = (WorkPool("paused", "process", "PAUSED", True, None, 1, 1, 9_000.0),
             WorkPool("slow", "process", "READY", False, 2, 1, 1, 9_990.0),
             WorkPool("idle", "process", "READY", False, None, 1, 1, 9_990.0))
    counts = {"paused": PoolCounts(4, 2, 0, 0, 9_000.0),
              "slow": PoolCounts(6, 1, 1, 2, 9_500.0),
              "idle": PoolCounts(0, 0, 3, 0, None)}
    pf = prefect_snapshot(pools=pools, pool_counts=counts, scheduled_future=50_000,
                          totals=PoolCounts(13, 5, 4, 2, 8_000.0))
    found = {(f.check, f.title.split(":")[0]): f for f in diagnosed(pf)}
    unserved = found[("work_pool_unserved", "work pool paused has 4 overdue run(s) and is "
                                             "paused")]
    assert unserved.severity == "warning"
    assert "prefect work-pool resume paused" in unserved.action
    # the paused pool's Late runs are its unserved finding, not a Late-runs finding too
    assert "the oldest 8min overdue" in found[("scheduled_backlog", "work pool slow")].evidence[0]
    assert found[("late_runs", "work pool slow")].title == "work pool slow: 1 Late run(s)"
    # 2 Late and the most overdue run (8000) in no listed pool: 'other'
    assert found[("late_runs", "runs in no listed work pool")].title.endswith("2 Late run(s)")
    assert ("scheduler_horizon", "50000 future SCHEDULED runs") in found
    assert len(found) == 6


def test_source_down_ranks_first_and_json_round_trips() -> None:
    result = diagnosed(healthy_pg(timeouts_seconds={}),
                   failures=(SourceFailure("pgbouncer", "pgb", "connection refused"),))
    assert result[0].check == "source_down" and result[0].severity == "warning"
    assert json.loads(json.dumps([f.as_dict() for f in result]))[0]["target"] == "pgb"
    assert "1. [WARNING] cannot read pgbouncer pgb" in render_text(result)


def test_stale_statistics_name_the_analyze_and_the_table_setting_that_prevents_it() -> None:
    off = table("log", 30_000, 0, modified_since_analyze=30_000,
                autovacuum_options=("autovacuum_enabled=false",))
    [f] = [f for f in diagnosed(healthy_pg(tables=(off,))) if f.check == "stale_statistics"]
    assert f.severity == "warning"
    assert "ANALYZE public.log;" in f.action
    assert "ALTER TABLE public.log RESET (autovacuum_enabled)" in f.action
    assert "30000 rows changed" in f.evidence[0] and "never" in f.evidence[0]
    assert "autovacuum_enabled=false" in f.evidence[1]
    on = table("flow_run", 100_000, 0, modified_since_analyze=40_000, last_analyze=400.0)
    [g] = [f for f in diagnosed(healthy_pg(tables=(on,))) if f.check == "stale_statistics"]
    assert "autovacuum_analyze_scale_factor" in g.action and "10min ago" in g.evidence[0]
    # a large table with a small share changed, or few rows: autovacuum's business
    quiet = (table("task_run", 1_000_000, 0, modified_since_analyze=60_000),
             table("events", 100, 0, modified_since_analyze=5_000))
    assert "stale_statistics" not in checks(healthy_pg(tables=quiet))


def test_invalid_index_names_each_with_its_repair() -> None:
    unique = invalid_index("uq_log_id", unique=True)
    leftover = invalid_index("ix_flow_run__state_ccnew", "flow_run")
    found = [f for f in diagnosed(healthy_pg(invalid_indexes=(unique, leftover),
                                             invalid_index_count=3, database="prefect"))
             if f.check == "invalid_index"]
    assert [f.title for f in found] == ["index public.uq_log_id on log is INVALID",
                                        "index public.ix_flow_run__state_ccnew on flow_run "
                                        "is INVALID"]
    assert "REINDEX INDEX CONCURRENTLY public.uq_log_id;" in found[0].action
    assert "CREATE UNIQUE INDEX CONCURRENTLY uq_log_id ON public.log" in found[0].action
    assert "duplicate rows" in found[0].action
    assert found[1].action.startswith("DROP INDEX CONCURRENTLY public.ix_flow_run__state_ccnew;")
    assert "1 more invalid indexes are not listed" in found[0].evidence[1]
    assert "invalid_index" not in checks(healthy_pg())


def test_index_build_and_deadlocks_are_information() -> None:
    snap = healthy_pg(database="prefect",
                      databases=(DatabaseSize("prefect", 1, deadlocks=2),
                                 DatabaseSize("other", 1, deadlocks=9)),
                      index_builds=(IndexBuild(7, "public", "task_run", "ix_t", "CREATE INDEX "
                                               "CONCURRENTLY", "building index: scanning table",
                                               0.4),))
    assert checks(snap) == {"index_build": ["info"], "deadlocks": ["info"]}
    by_check = {f.check: f for f in diagnosed(snap)}
    assert "40% of this phase done" in by_check["index_build"].evidence[0]
    assert by_check["deadlocks"].title == "2 deadlock(s) in prefect since its statistics were reset"
