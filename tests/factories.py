"""Snapshot factories for the tests that need no server: one place, so every test builds its
snapshots the same way (and the recorded exposition test covers every source kind)."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from exporter.pgbouncer.snapshot import Database, PgBouncerSnapshot, Pool, Server, Stats
from exporter.postgres.snapshot import (
    ActivityGroup,
    Address,
    BlockedSession,
    DatabaseSize,
    IndexBuild,
    InvalidIndex,
    Involved,
    OldestRow,
    PostgresSnapshot,
    Relation,
    Session,
    StatementStats,
    TableStats,
    TopStatements,
)
from exporter.prefect.snapshot import (
    ConcurrencyLimit,
    Events,
    Limits,
    Outcomes,
    PoolCounts,
    PrefectProbeSnapshot,
    PrefectSnapshot,
    Probe,
    Readiness,
    RequestStats,
    Retention,
    RunHealth,
    Scheduling,
    Services,
    WorkPool,
    WorkQueue,
)
from exporter.redis.snapshot import Group, RedisSnapshot, Stream


class NamedSource:
    """A Source that is only its kind and target name: for poller states built by hand."""

    def __init__(self, kind: str, target: str) -> None:
        self.kind, self.target = kind, target

    async def poll(self) -> Any:
        raise AssertionError("not polled in these tests")

    def partial(self) -> None:
        return None

    async def close(self) -> None:
        pass


def group(app: str = "app", state: str = "idle", sessions: int = 1, **kw: Any) -> ActivityGroup:
    base: dict[str, Any] = dict(
        datname="prefect", usename="prefect", application_name=app, state=state,
        wait_event_type="Client" if state == "idle" else "", wait_event="ClientRead"
        if state == "idle" else "", client_read_in_transaction=False, listen_channel=None,
        sessions=sessions, max_transaction_age=None, max_state_age=1.0)
    base.update(kw)
    return ActivityGroup(**base)


def pg_snapshot(*groups: ActivityGroup, **kw: Any) -> PostgresSnapshot:
    base: dict[str, Any] = dict(
        taken_at=1000.0, target="db", server_version="15.18", max_connections=100,
        superuser_reserved_connections=3, timeouts_seconds={"statement_timeout": 0.0},
        can_read_all_stats=True, activity=groups, oldest_transactions=(), blocked=(),
        blockers=(), tables=(),
        # where pgbouncer_snapshot()'s database points: the two join
        address=Address("db", "5432", "prefect"))
    base.update(kw)
    return PostgresSnapshot(**base)


def table(name: str, live: int, dead: int, last_vacuum: float | None = None,
          last_autovacuum: float | None = None, *, schema: str = "public",
          total_bytes: int = 8192, inserted: int = 0, deleted: int = 0,
          modified_since_analyze: int = 0, last_analyze: float | None = None,
          autovacuum_options: tuple[str, ...] = ()) -> TableStats:
    return TableStats(schema, name, live, dead, last_vacuum, last_autovacuum, total_bytes,
                      inserted, deleted, modified_since_analyze, last_analyze,
                      autovacuum_options)


def oldest(table_name: str, column: str, age: float | None) -> OldestRow:
    """A table's oldest row, `age` seconds old; None: the column is not readable."""
    return OldestRow("public", table_name, column, age is not None, age)


def invalid_index(name: str, table_name: str = "log", unique: bool = False) -> InvalidIndex:
    kind = "UNIQUE INDEX" if unique else "INDEX"
    return InvalidIndex("public", name, table_name, unique,
                        f"CREATE {kind} {name} ON public.{table_name} USING btree (id)")


def session(pid: int, state: str = "idle in transaction", age: float = 400.0,
            app: str = "prefect-server") -> Session:
    return Session(pid, "prefect", "prefect", app, "10.0.0.7", state, "Client", "ClientRead",
                   age, age)


def healthy_pg(**kw: Any) -> PostgresSnapshot:
    base: dict[str, Any] = {"timeouts_seconds": {"idle_in_transaction_session_timeout": 300.0,
                                                 "statement_timeout": 60.0}}
    base.update(kw)
    return pg_snapshot(group(sessions=10), **base)


PREFECT_SETTINGS = {
    "server.database.sqlalchemy.pool_size": 5.0,
    "server.database.sqlalchemy.max_overflow": 10.0,
    "server.database.sqlalchemy.connect_args.statement_cache_size": 0.0,
    "server.database.sqlalchemy.connect_args.prepared_statement_cache_size": 0.0,
}


SCHEDULING_FIELDS = {f.name for f in fields(Scheduling)}


def services(**kw: Any) -> Services:
    """Background services that leave no trace of trouble."""
    base: dict[str, Any] = dict(unmarked_overdue=0,
                                unmarked_overdue_by_pool={}, unmarked_after_seconds=25.0,
                                recently_scheduled_deployments=3,
                                deployments_without_future_runs=0)
    base.update(kw)
    return Services(**base)


def probe(**kw: Any) -> Probe:
    """A calm API: /api/ready 10 ms (one round trip through its pool), /api/health 2 ms."""
    base: dict[str, Any] = dict(health_seconds=0.002, health_ok=True, ready_seconds=0.01,
                                ready_ok=True)
    base.update(kw)
    return Probe(**base)


def prefect_probe(taken_at: float = 10_000.0, target: str = "prefect",
                  **kw: Any) -> PrefectProbeSnapshot:
    """What a failed Prefect poll publishes: its probe only."""
    return PrefectProbeSnapshot(taken_at=taken_at, target=target, probe=probe(**kw))


def events(taken_at: float, **kw: Any) -> Events:
    base: dict[str, Any] = dict(newest=taken_at - 5, looked_back=600.0,
                                last_run_start=taken_at - 30)
    base.update(kw)
    return Events(**base)


def runs(**kw: Any) -> RunHealth:
    base: dict[str, Any] = dict(stuck={}, sampled=3, sample_limit=200, stuck_after_seconds=3600.0,
                                heartbeats=True, without_heartbeat={},
                                heartbeat_timeout_seconds=600.0)
    base.update(kw)
    return RunHealth(**base)


def outcomes(totals: dict[str, int] | None = None,
             by_pool: dict[str, dict[str, int]] | None = None) -> Outcomes:
    return Outcomes(window_seconds=3600.0,
                    totals=totals or {"COMPLETED": 40, "FAILED": 1, "CRASHED": 0, "CANCELLED": 1},
                    by_pool=by_pool or {})


def limits(*items: ConcurrencyLimit, running_task_runs: int = 0) -> Limits:
    return Limits(limits=items, running_task_runs=running_task_runs)


def retention(taken_at: float, **kw: Any) -> Retention:
    base: dict[str, Any] = dict(checked_at=taken_at - 60, events_retention=7 * 86400.0,
                                oldest_event=taken_at - 7 * 86400 + 1800, events_overdue=False,
                                runs_retention=None, oldest_overdue_run_end=None)
    base.update(kw)
    return Retention(**base)


def prefect_snapshot(**kw: Any) -> PrefectSnapshot:
    """A healthy Prefect snapshot; keyword arguments override any field, those of its
    Scheduling part included (pools=..., pool_counts=...)."""
    scheduling: dict[str, Any] = dict(
        runs_by_state_type={}, totals=PoolCounts(0, 0, 0, 0, None), scheduled_future=10,
        pools=(), pool_counts={}, queues=())
    scheduling.update({k: kw.pop(k) for k in list(kw) if k in SCHEDULING_FIELDS})
    taken_at = kw.get("taken_at", 10_000.0)
    base: dict[str, Any] = dict(
        taken_at=taken_at, target="prefect", version="3.8.8", settings=dict(PREFECT_SETTINGS),
        text_settings={
            "server.database.sqlalchemy.connect_args.application_name": "prefect-server"},
        probe=probe(), scheduling=Scheduling(**scheduling), services=services(),
        events=events(taken_at),
        retention=retention(taken_at), runs=runs(), outcomes=outcomes(),
        limits=limits(ConcurrencyLimit("etl", 5, 1, True, None, None)),
        readiness=Readiness(deployments=4, in_a_queue=3, in_unpolled_queues=0),
        vacuum_kinds=frozenset({"events"}))  # 3.8.8's default db_vacuum
    base.update(kw)
    return PrefectSnapshot(**base)


def pgbouncer_snapshot(pools: tuple[Pool, ...] = (), **kw: Any) -> PgBouncerSnapshot:
    db = Database("prefect", "db", "5432", "prefect", "", "", {"pool_size": 5})
    base: dict[str, Any] = dict(taken_at=1.0, target="pgb", version="1.18.0", pools=pools,
                                databases=(db,), stats=(), config={"pool_mode": "transaction"},
                                lists={})
    base.update(kw)
    return PgBouncerSnapshot(**base)


# ---- a recorded set: every source kind, every metric family with samples -----------------

def rich_postgres(taken_at: float, target: str = "db") -> PostgresSnapshot:
    return pg_snapshot(
        group(app="prefect-server", sessions=12),
        group(app="prefect-server", state="active", wait_event_type="Lock",
              wait_event="transactionid", max_transaction_age=42.5, max_state_age=40.0),
        group(app="holder", state="idle in transaction", max_transaction_age=321.0,
              max_state_age=300.0, wait_event_type="Client", wait_event="ClientRead"),
        group(app="copier", state="active", max_transaction_age=95.0, max_state_age=90.0,
              client_read_in_transaction=True, wait_event_type="Client",
              wait_event="ClientRead"),
        group(app="services", listen_channel="prefect_automation_changes", sessions=2),
        group(app='we"ird\\app\n', sessions=3),
        *(group(app=f"app-{i:02d}", sessions=1) for i in range(25)),
        taken_at=taken_at, target=target,
        timeouts_seconds={"idle_in_transaction_session_timeout": 0.0, "statement_timeout": 60.0,
                          "lock_timeout": 0.0, "idle_session_timeout": 0.0,
                          "tcp_keepalives_idle": 7200.0},
        oldest_transactions=(session(4711, age=321.0, app="holder"),
                             session(4790, state="active", age=42.5)),
        blocked=(BlockedSession(4790, (4711,), 40.0),),
        blockers=(session(4711, age=321.0, app="holder"),),
        involved=Involved(
            (session(4711, age=321.0, app="holder"), session(4790, state="active", age=42.5)),
            {4711: "UPDATE task_run SET state_type = $1 WHERE id = $2",
             4790: "UPDATE task_run SET end_time = $1 WHERE id = $2"},
            {4790: Relation("public", "task_run")}),
        tables=(table("flow_run", 1000, 50, None, 990.0, total_bytes=1_048_576, inserted=5000,
                      deleted=4000, modified_since_analyze=120, last_analyze=980.0),
                table("log", 20_000, 9_000, 900.0, None, total_bytes=52_428_800,
                      inserted=90_000, deleted=61_000, modified_since_analyze=30_000,
                      autovacuum_options=("autovacuum_enabled=false",))),
        databases=(DatabaseSize("postgres", 7_500_000),
                   DatabaseSize("prefect", 95_000_000, deadlocks=3)),
        database="prefect",
        invalid_indexes=(invalid_index("ix_flow_run__state_type_coalesce_start_time",
                                       "flow_run"),),
        invalid_index_count=1,
        index_builds=(IndexBuild(4800, "public", "task_run", "ix_task_run__state_type_start_time",
                                 "CREATE INDEX CONCURRENTLY", "building index: scanning table",
                                 0.25),),
        top_statements=TopStatements(taken_at - 30, "read", (
            StatementStats(-4011, 120, 95.5, 120, "SELECT count(*) FROM flow_run WHERE "
                           "flow_run.state_type = ANY ($1::state_type[])"),
            StatementStats(8102, 4000, 3.25, 4000, "INSERT INTO log (id, name) VALUES ($1, $2)"),
        )),
        role="prefect_exporter",
        oldest_rows=(oldest("events", "occurred", 8 * 86400),
                     oldest("log", "timestamp", 40 * 86400), oldest("artifact", "updated", None)),
        # the first groups' backends, the idle ones unlisted (as the activity read lists them):
        # PgBouncer's server connections are among them
        group_pids=((), (4790,), (4711,)),
        address=Address("10.0.0.5", "5432", "prefect"))


def rich_pgbouncer(taken_at: float, target: str = "pgb") -> PgBouncerSnapshot:
    pools = (Pool("prefect", "prefect", "transaction",
                  {"cl_active": 5, "cl_waiting": 3, "sv_active": 5, "sv_idle": 0, "sv_used": 0,
                   "sv_tested": 0, "sv_login": 0, "cl_active_cancel_req": 0,
                   "cl_waiting_cancel_req": 0, "sv_active_cancel": 0, "sv_being_canceled": 0},
                  2.25),
             Pool("postgres", "postgres", "session", {"cl_active": 1, "sv_idle": 1}, 0.0))
    return pgbouncer_snapshot(
        pools, taken_at=taken_at, target=target,
        databases=(Database("prefect", "10.0.0.5", "5432", "prefect", "", "",
                            {"pool_size": 20, "min_pool_size": 0, "reserve_pool": 2,
                             "max_connections": 0, "current_connections": 7, "paused": 0,
                             "disabled": 0}),),
        stats=(Stats("prefect", {"xact_count": 10, "query_count": 20, "bytes_received": 300,
                                 "bytes_sent": 400, "xact_time": 5_000_000,
                                 "query_time": 2_500_000, "wait_time": 1_500_000}),),
        config={"pool_mode": "transaction", "max_client_conn": "200", "default_pool_size": "20",
                "reserve_pool_size": "0", "query_wait_timeout": "120",
                "idle_transaction_timeout": "0", "max_user_connections": "0",
                "max_db_connections": "0", "query_timeout": "0"},
        lists={"databases": 2, "users": 3, "pools": 2, "free_clients": 40, "used_clients": 10,
               "login_clients": 0, "free_servers": 45, "used_servers": 5, "dns_names": 0,
               "dns_zones": 0, "dns_queries": 0},
        servers=tuple(Server("prefect", "prefect", "active", pid, "10.0.0.5", "5432")
                      for pid in (4711, 4790, 5001, 5002, 5003)))


def rich_prefect(taken_at: float, target: str = "prefect") -> PrefectSnapshot:
    return prefect_snapshot(
        taken_at=taken_at, target=target,
        runs_by_state_type={"SCHEDULED": 9, "PENDING": 1, "RUNNING": 2, "CANCELLING": 0,
                            "PAUSED": 0},
        totals=PoolCounts(6, 3, 4, 3, taken_at - 900.0),
        scheduled_future=40,
        pools=(WorkPool("pool-a", "process", "READY", False, 4, 2, 1, taken_at - 5.0),
               WorkPool("pool-b", "kubernetes", "NOT_READY", False, None, 0, 0, None)),
        pool_counts={"pool-a": PoolCounts(2, 1, 3, 2, taken_at - 600.0),
                     "pool-b": PoolCounts(1, 1, 0, 0, taken_at - 300.0)},
        queues=(WorkQueue("pool-a", "default", False, 2), WorkQueue("pool-b", "default", True,
                                                                     None)),
        requests={"/flow_runs/count": RequestStats(40, 1, 0.5),
                  "/work_pools/filter": RequestStats(2, 0, 0.01)})


# ---- Redis (Prefect in HA: messaging on db0, Docket on db1) --------------------------------

def redis_group(name: str, last_delivered_id: str = "1000-0", consumers_idle: tuple[float, ...]
                = (0.5,), pending: int = 0, lag: int | None = 0,
                entries_read: int | None = 10) -> Group:
    return Group(name, len(consumers_idle), pending, last_delivered_id, entries_read, lag,
                 consumers_idle)


def redis_stream(key: str = "events", *groups: Group, length: int = 10,
                 last_generated_id: str = "1000-0", first_entry_id: str | None = "900000-0"
                 ) -> Stream:
    return Stream(key, length, last_generated_id, first_entry_id, groups)


def redis_snapshot(*streams: Stream, **kw: Any) -> RedisSnapshot:
    base: dict[str, Any] = dict(
        taken_at=1000.0, target="messaging", version="7.0.15", mode="standalone", db=0,
        used_memory=1_000_000, maxmemory=0, maxmemory_policy="noeviction",
        connected_clients=5, db_keys={"db0": len(streams)}, streams=streams,
        consumer_idle_limit_seconds=60.0, commands=9, scan_complete=True)
    base.update(kw)
    return RedisSnapshot(**base)


def rich_redis(taken_at: float, target: str = "messaging") -> RedisSnapshot:
    """Messaging with every group healthy but one abandoned, memory at 50%."""
    last = f"{int(taken_at * 1000)}-0"
    events = redis_stream(
        "events",
        redis_group("event-persister", last, (0.2, 3.0)),
        redis_group("reactive-triggers", last, (1.5,)),
        redis_group("task-run-recorder", last, (2.0,), pending=1),
        redis_group("ephemeral-old", f"{int(taken_at * 1000) - 3_600_000}-0", (7200.0,),
                    lag=420, entries_read=3),
        length=500, last_generated_id=last, first_entry_id=f"{int(taken_at - 3600) * 1000}-0")
    actions = redis_stream("actions", length=0, last_generated_id="0-0", first_entry_id=None)
    return redis_snapshot(events, actions, taken_at=taken_at, target=target,
                          used_memory=50_000_000, maxmemory=100_000_000,
                          db_keys={"db0": 2, "db1": 3})
