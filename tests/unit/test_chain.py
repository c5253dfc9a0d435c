"""One causal chain across the layers (#27), on hand-made snapshots: a PgBouncer pool's server
connections joined to the PostgreSQL behind it, the session at the root named on every
layer."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from exporter.collector import ExporterCollector
from exporter.diagnosis import diagnose
from exporter.finding import Context, Finding, SourceFailure, render_text
from exporter.incidents.tracker import IncidentTracker
from exporter.metricspec import MetricOptions
from exporter.pages import landing_page
from exporter.pgbouncer.incidents import pool_waiting
from exporter.pgbouncer.metrics import pgbouncer_joined
from exporter.pgbouncer.servers import postgres_of
from exporter.pgbouncer.snapshot import Database, PgBouncerSnapshot, Pool, Server
from exporter.pgbouncer.source import parse_servers
from exporter.poller import SourceState, failures
from exporter.postgres.snapshot import (
    Address,
    BlockedSession,
    Involved,
    PostgresSnapshot,
    Relation,
)
from exporter.prefect.incidents import prefect_incidents
from exporter.prefect.snapshot import PoolCounts
from exporter.roots import roots
from exporter.source import Snapshot
from exporter.thresholds import thresholds
from tests.factories import (
    NamedSource,
    group,
    pg_snapshot,
    pgbouncer_snapshot,
    prefect_probe,
    prefect_snapshot,
    session,
    table,
)

HOLDER, WRITERS = 4711, (4801, 4802, 4803, 4804)
FLOW_RUN = Relation("public", "flow_run")
APP = "server.database.sqlalchemy.connect_args.application_name"


def waiting_pgb(host: str = "db", port: str = "5432", **kw: Any) -> PgBouncerSnapshot:
    """3 clients wait in pool prefect/prefect; its 5 server connections are the holder's and
    the 4 writers'."""
    pool = Pool("prefect", "prefect", "transaction",
                {"cl_active": 5, "cl_waiting": 3, "sv_active": 5, "sv_idle": 0}, 2.0)
    servers = tuple(Server("prefect", "prefect", "active", pid, "10.0.0.5", port)
                    for pid in (HOLDER, *WRITERS))
    return pgbouncer_snapshot(
        (pool,), databases=(Database("prefect", host, port, "prefect", "", "",
                                     {"pool_size": 5}),),
        servers=servers, **kw)


def chained_pg(**kw: Any) -> PostgresSnapshot:
    """PostgreSQL behind it: the holder idle in transaction for 25 s, the writers blocked
    behind it on flow_run."""
    holder = session(HOLDER, age=25.0, app="app")
    base: dict[str, Any] = dict(
        activity=(group(app="app", state="idle in transaction", max_transaction_age=25.0),
                  group(app="writer", state="active", wait_event_type="Lock",
                        wait_event="transactionid", sessions=4, max_transaction_age=20.0),
                  group(app="other", sessions=3)),
        group_pids=((HOLDER,), WRITERS, (9001, 9002, 9003)),
        blocked=tuple(BlockedSession(pid, (HOLDER,), 20.0) for pid in WRITERS),
        blockers=(holder,),
        involved=Involved((holder,), {}, {pid: FLOW_RUN for pid in WRITERS}),
        address=Address("db", "5432", "prefect"))
    base.update(kw)
    return pg_snapshot(**base)


def waiting_finding(*snapshots: Snapshot) -> Finding:
    return next(f for f in diagnose(snapshots) if f.check == "pgbouncer_pool_waiting")


def test_the_waiting_pool_names_the_session_that_holds_its_server_connections() -> None:
    finding = waiting_finding(waiting_pgb(), chained_pg())
    assert ("3 client(s) wait; the pool's 5 server connection(s) on PostgreSQL db are 1 idle "
            "in transaction (pid 4711, app, 25s) and 4 waiting on a lock behind pid 4711: "
            "pid 4711 is the cause") in finding.evidence
    assert finding.title.endswith(": pid 4711 holds it")
    assert finding.cause is not None
    assert (finding.cause.target, finding.cause.pid, finding.cause.application_name,
            finding.cause.relation) == ("db", HOLDER, "app", "public.flow_run")
    assert finding.action.startswith("SELECT pg_terminate_backend(4711); on db")


def test_a_root_outside_the_pool_is_named_as_such() -> None:
    """The holder is a direct session, not one of the pool's server connections."""
    pgb = waiting_pgb()
    pgb = PgBouncerSnapshot(**{**pgb.__dict__, "servers": pgb.servers[1:]})
    evidence = waiting_finding(pgb, chained_pg()).evidence[1]
    assert evidence.endswith("4 waiting on a lock behind pid 4711: pid 4711 (app, idle in "
                             "transaction, transaction 25s) on public.flow_run is the cause "
                             "(not through this pool)")


def test_a_pool_busy_with_active_statements_has_no_single_cause() -> None:
    pg = chained_pg(blocked=(), blockers=(), involved=Involved(),
                    activity=(group(app="app", state="active", sessions=5),),
                    group_pids=((HOLDER, *WRITERS),))
    finding = waiting_finding(waiting_pgb(), pg)
    assert finding.cause is None
    assert finding.evidence[1].endswith("are 5 active: no one session holds them")


def test_a_pool_whose_postgres_is_not_a_target_says_so() -> None:
    found = diagnose([waiting_pgb(host="elsewhere"), chained_pg()])
    waiting = next(f for f in found if f.check == "pgbouncer_pool_waiting")
    assert waiting.cause is None
    assert waiting.evidence[1] == ("its PostgreSQL (elsewhere:5432) is none of the configured "
                                   "PostgreSQL targets: what holds its server connections is "
                                   "outside what the exporter reads")
    unmatched = [f for f in found if f.check == "pgbouncer_postgres_unmatched"]
    assert [(f.severity, f.title) for f in unmatched] == [
        ("info", "PgBouncer database prefect points at elsewhere:5432, which is no configured "
                 "PostgreSQL target")]


def test_without_postgres_targets_the_pool_says_what_is_not_read() -> None:
    found = diagnose([waiting_pgb()])
    assert "pgbouncer_postgres_unmatched" not in {f.check for f in found}
    assert waiting_finding(waiting_pgb()).evidence[1].startswith(
        "what its server connections do on PostgreSQL (db:5432) is not read")


def test_loopback_and_the_local_socket_are_one_host_ports_must_agree() -> None:
    pg = chained_pg(address=Address("localhost", "5432", "prefect"))
    for host, port, matched in (("127.0.0.1", "5432", True), ("", "5432", True),
                                ("::1", "5432", True), ("127.0.0.1", "6543", False),
                                ("db", "5432", False)):
        db = Database("prefect", host, port, "prefect", "", "", {})
        assert (postgres_of(db, [pg]) is pg) is matched, (host, port)
    several = chained_pg(address=Address("a,db", "5432", "prefect"))
    assert postgres_of(Database("x", "db", "5432", "x", "", "", {}), [several]) is several


def test_the_incident_records_the_chain_as_evidence() -> None:
    ctx = Context(thresholds(), (chained_pg(),))
    (observation,) = pool_waiting(waiting_pgb(), ctx)
    evidence = dict(observation.evidence)
    assert evidence["postgres_target"] == "db"
    assert evidence["server_backends"] == "1 idle_in_transaction, 4 waiting_on_lock"
    assert (evidence["cause_pid"], evidence["cause_application_name"],
            evidence["cause_relation"]) == (HOLDER, "app", "public.flow_run")


def test_server_connections_by_their_backends_state_on_postgres() -> None:
    (family,) = pgbouncer_joined(waiting_pgb(), [chained_pg()], MetricOptions(label_top_n=20))
    assert family.name == "pgbouncer_pools_server_backend_connections"
    assert {(s.labels["pg_state"], s.value) for s in family.samples} == {
        ("idle_in_transaction", 1), ("waiting_on_lock", 4)}
    # a server connection in no statement nor transaction (or opened since) is idle
    pgb = waiting_pgb()
    pgb = PgBouncerSnapshot(**{**pgb.__dict__, "servers": (
        *pgb.servers, Server("prefect", "prefect", "idle", 5555, "10.0.0.5", "5432"))})
    (family,) = pgbouncer_joined(pgb, [chained_pg()], MetricOptions(label_top_n=20))
    assert ("idle", 1) in {(s.labels["pg_state"], s.value) for s in family.samples}
    assert list(pgbouncer_joined(waiting_pgb(), [], MetricOptions(label_top_n=20))) == []


# ---- Prefect API -> PgBouncer -> PostgreSQL ---------------------------------------------------

def prefect_blocked_pg(**kw: Any) -> PostgresSnapshot:
    """Prefect's sessions (application_name prefect-server) wait behind a holder of another
    application on flow_run."""
    holder = session(HOLDER, age=30.0, app="incident-holder")
    base: dict[str, Any] = dict(
        activity=(group(app="incident-holder", state="idle in transaction",
                        max_transaction_age=30.0),
                  group(app="prefect-server", state="active", wait_event_type="Lock",
                        wait_event="relation", sessions=4, max_transaction_age=20.0)),
        group_pids=((HOLDER,), WRITERS),
        blocked=tuple(BlockedSession(pid, (HOLDER,), 20.0 - i) for i, pid in
                      enumerate(WRITERS)),
        blockers=(holder,),
        involved=Involved((holder,), {}, {pid: FLOW_RUN for pid in WRITERS}),
        tables=(table("flow_run", 10, 0),),
        address=Address("db", "5432", "prefect"))
    base.update(kw)
    return pg_snapshot(**base)


def test_prefect_names_the_root_its_sessions_wait_behind() -> None:
    found = [f for f in diagnose([prefect_blocked_pg(), prefect_snapshot()])
             if f.check == "prefect_database_blocked"]
    assert [(f.target, f.severity) for f in found] == [("prefect", "warning")]
    (finding,) = found
    assert finding.title == ("Prefect's database work waits behind pid 4711 (on db, table "
                             "public.flow_run): its API requests that need it hang")
    assert finding.evidence[:2] == (
        "root: pid 4711 (incident-holder, idle in transaction, transaction 30s) on "
        "public.flow_run",
        "4 of Prefect's sessions on db wait on a lock behind it (pids 4801, 4802, 4803, "
        "4804), the longest for 20s")
    assert finding.cause is not None and finding.cause.pid == HOLDER


def test_sessions_of_other_applications_are_not_prefects() -> None:
    pf = prefect_snapshot(text_settings={APP: "another-name"})
    assert "prefect_database_blocked" not in {f.check for f in diagnose(
        [prefect_blocked_pg(), pf])}


def test_without_an_application_name_prefects_sessions_are_its_databases() -> None:
    pf = prefect_snapshot(text_settings={})
    (finding,) = [f for f in diagnose([prefect_blocked_pg(), pf])
                  if f.check == "prefect_database_blocked"]
    assert finding.evidence[-1].startswith("Prefect's sessions told by their database")
    # a PostgreSQL target without Prefect's tables is not Prefect's database
    assert "prefect_database_blocked" not in {f.check for f in diagnose(
        [prefect_blocked_pg(tables=()), pf])}


def test_an_api_that_cannot_be_read_is_explained_by_the_root() -> None:
    failure = SourceFailure("prefect", "prefect", "poll took longer than 10s")
    found = diagnose([prefect_blocked_pg()], [failure])
    assert sorted(f.check for f in found if f.target == "prefect") == [
        "prefect_database_blocked", "source_down"]
    (finding,) = [f for f in found if f.check == "prefect_database_blocked"]
    assert finding.severity == "critical"
    assert "the API could not be read: poll took longer than 10s" in finding.evidence
    assert finding.cause is not None and finding.cause.pid == HOLDER
    # nothing blocked: the failure stays unexplained
    assert [f.check for f in diagnose([pg_snapshot()], [failure])
            if f.target == "prefect"] == ["source_down"]


def test_prefects_waiting_pgbouncer_pool_names_what_holds_it() -> None:
    """The pool's server connections are Prefect's (its application_name): the pool's cause
    is named on the Prefect target even when no Prefect session waits on a lock."""
    pg = chained_pg(activity=(group(app="prefect-server", state="idle in transaction",
                                    max_transaction_age=25.0),
                              group(app="prefect-server", state="active", sessions=4)),
                    blocked=(), involved=Involved(), blockers=(),
                    oldest_transactions=(session(HOLDER, age=25.0),))
    (finding,) = [f for f in diagnose([waiting_pgb(), pg, prefect_snapshot()])
                  if f.check == "prefect_database_blocked"]
    assert finding.cause is not None and finding.cause.pid == HOLDER
    assert ("PgBouncer pgb pool prefect/prefect: 3 client(s) wait for a server connection, "
            "held by pid 4711") in finding.evidence


# ---- Prefect blocked: its incident and its metric -------------------------------------------

def test_prefects_incident_is_observed_with_its_finding_and_names_the_root() -> None:
    pg, pf = prefect_blocked_pg(), prefect_snapshot()
    (finding,) = [f for f in diagnose([pg, pf]) if f.check == "prefect_database_blocked"]
    (o,) = prefect_incidents(pf, Context(thresholds(), (pg, pf)))
    assert (o.kind, o.target, o.severity, o.title) == (
        finding.check, finding.target, finding.severity, finding.title)
    assert o.cause == (("postgres_target", "db"), ("application_name", "incident-holder"))
    evidence = dict(o.evidence)
    assert (evidence["pid"], evidence["relation"], evidence["state"]) == (
        HOLDER, "public.flow_run", "idle in transaction")
    assert (evidence["prefect_sessions_waiting"], evidence["longest_wait_seconds"]) == (4, 20.0)
    assert evidence["prefect_sessions_told_by"] == "application_name prefect-server"
    assert o.instances == (str(HOLDER),)
    # past blocked_wait_critical_seconds, both say critical
    long_wait = prefect_blocked_pg(blocked=tuple(BlockedSession(pid, (HOLDER,), 90.0)
                                                 for pid in WRITERS))
    (o,) = prefect_incidents(pf, Context(thresholds(), (long_wait, pf)))
    assert o.severity == "critical"
    # nothing blocked, nothing observed
    assert list(prefect_incidents(pf, Context(thresholds(), (pg_snapshot(), pf)))) == []


def test_a_failed_polls_probe_snapshot_observes_what_the_doctor_says_of_the_failure() -> None:
    """The API timed out behind the lock: the doctor's finding comes from the failure, the
    incident from the probe the failed poll published; both critical, both by database."""
    pg, probe_only = prefect_blocked_pg(), prefect_probe(target="prefect")
    found = diagnose([pg, probe_only], [SourceFailure("prefect", "prefect", "timeout")])
    (finding,) = [f for f in found if f.check == "prefect_database_blocked"]
    (o,) = prefect_incidents(probe_only, Context(thresholds(), (pg, probe_only)))
    assert (o.severity, o.title) == (finding.severity, finding.title) == (
        "critical", finding.title)
    assert dict(o.evidence)["api_readable"] is False
    assert dict(o.evidence)["prefect_sessions_told_by"] == "database"


def test_a_storm_of_short_blocks_by_one_application_is_one_prefect_incident() -> None:
    tracker = IncidentTracker()
    pf = prefect_snapshot()
    for i, holder in enumerate((4711, 4712, 4713)):
        blocker = session(holder, age=30.0, app="incident-holder")
        pg = prefect_blocked_pg(
            taken_at=1000.0 + 10 * i, group_pids=((holder,), WRITERS),
            blocked=tuple(BlockedSession(pid, (holder,), 5.0) for pid in WRITERS),
            blockers=(blocker,), involved=Involved((blocker,), {},
                                                   {pid: FLOW_RUN for pid in WRITERS}))
        tracker.update([pg, replace(pf, taken_at=1000.0 + 10 * i)], 1000.0 + 10 * i)
    (incident,) = [i for i in tracker.incidents() if i["kind"] == "prefect_database_blocked"]
    assert (incident["source"], incident["target"], incident["occurrences"]) == (
        "prefect", "prefect", 3)


def blocked_roots(snapshots: list[Snapshot], failed: tuple[str, ...] = ()
                  ) -> dict[tuple[str, str], float]:
    """prefect_database_blocked_roots as the collector exports it, by (target, severity)."""
    states = []
    for snap in snapshots:
        kind = "postgres" if isinstance(snap, PostgresSnapshot) else "prefect"
        state = SourceState(NamedSource(kind, snap.target))
        state.snapshot, state.up, state.polls = snap, True, 1
        states.append(state)
    for target in failed:
        state = SourceState(NamedSource("prefect", target))
        state.polls, state.last_error = 1, "timeout"
        states.append(state)
    collector = ExporterCollector(states, MetricOptions(label_top_n=20))
    collector.update(snapshots, diagnose(snapshots, failures(states)))
    (family,) = [m for m in collector.collect() if m.name == "prefect_database_blocked_roots"]
    return {(s.labels["target"], s.labels["severity"]): s.value for s in family.samples}


def test_the_blocked_roots_metric_is_the_doctors_verdict_per_target() -> None:
    pf, other = prefect_snapshot(), prefect_snapshot(target="other",
                                                     text_settings={APP: "elsewhere"})
    assert blocked_roots([pg_snapshot(), pf]) == {("prefect", "critical"): 0,
                                                  ("prefect", "warning"): 0}
    assert blocked_roots([prefect_blocked_pg(), pf, other]) == {
        ("prefect", "critical"): 0, ("prefect", "warning"): 1,
        ("other", "critical"): 0, ("other", "warning"): 0}
    # an API that cannot be read at all (not even its probe) is judged all the same
    assert blocked_roots([prefect_blocked_pg()], failed=("prefect",)) == {
        ("prefect", "critical"): 1, ("prefect", "warning"): 0}


# ---- one root, many symptoms ------------------------------------------------------------------

def test_the_root_is_named_once_first_with_what_it_causes_on_every_layer() -> None:
    pg = prefect_blocked_pg()
    late = prefect_snapshot(totals=PoolCounts(3, 3, 0, 0, 9000.0),
                            pool_counts={}, pools=())
    found = diagnose([pg, waiting_pgb(), late])
    (root,) = roots(found)
    assert root.cause.key == ("db", HOLDER)
    assert {f.check for f in root.symptoms} == {
        "lock_chain", "pgbouncer_pool_waiting", "prefect_database_blocked"}
    assert "late_runs" in {f.check for f in root.meanwhile}
    text = render_text(found)
    assert text.startswith("Root causes (each once, with what it causes):\nR1. [WARNING] "
                           "pid 4711 (incident-holder, idle in transaction, transaction 30s) on "
                           "public.flow_run on PostgreSQL db\n")
    assert text.count("R1. ") == 1
    # every symptom points at its root
    assert text.count("     root: R1 (pid 4711 on db)") == len(root.symptoms)
    page = landing_page([], found, now=0.0)
    assert page.index("<h2>Root causes</h2>") < page.index("<h2>Findings</h2>")
    assert "pid 4711 (incident-holder, idle in transaction, transaction 30s)" in page


def test_no_root_no_section() -> None:
    found = diagnose([pg_snapshot(), waiting_pgb(host="elsewhere")])
    assert roots(found) == []
    assert not render_text(found).startswith("Root causes")


def test_show_servers_rows_as_pgbouncer_1_18_sends_them() -> None:
    """A row recorded from the lab's PgBouncer 1.18.0; a version without remote_pid gives 0,
    which joins nothing; the admin console's own pool is left out."""
    row = {"type": "S", "user": "postgres", "database": "prefect", "state": "active",
           "addr": "127.0.0.1", "port": 56057, "local_addr": "127.0.0.1", "local_port": 48338,
           "connect_time": "2026-12-04 22:51:50 UTC", "request_time": "2026-12-04 22:51:50 UTC",
           "wait": 0, "wait_us": 0, "close_needed": 0, "ptr": "0x56284da67270",
           "link": "0x56284da5fb90", "remote_pid": 8532, "tls": "", "application_name": ""}
    old = {k: v for k, v in row.items() if k != "remote_pid"}
    admin = {**row, "database": "pgbouncer"}
    assert parse_servers([row, old, admin]) == (
        Server("prefect", "postgres", "active", 8532, "127.0.0.1", "56057"),
        Server("prefect", "postgres", "active", 0, "127.0.0.1", "56057"))
