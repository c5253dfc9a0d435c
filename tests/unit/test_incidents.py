"""Incidents without a server: observed exactly when the doctor's finding is, followed across
polls (begin, update when worse, end), storms coalesced, memory and the log bounded."""

from __future__ import annotations

import random
from typing import Any

from exporter.diagnosis import CHECKS, diagnose
from exporter.finding import Context
from exporter.incidents.journal import SUPPRESSED, Journal
from exporter.incidents.model import MAX_ITEMS
from exporter.incidents.tracker import Incident, IncidentEvent, IncidentTracker
from exporter.kinds import KINDS
from exporter.pgbouncer.snapshot import PgBouncerSnapshot, Pool
from exporter.postgres.snapshot import (
    ActivityGroup,
    BlockedSession,
    Involved,
    PostgresSnapshot,
    Relation,
    Session,
)
from exporter.redis.snapshot import Group, RedisSnapshot
from exporter.source import Snapshot
from exporter.thresholds import thresholds
from tests.factories import (
    group,
    pg_snapshot,
    pgbouncer_snapshot,
    redis_group,
    redis_snapshot,
    redis_stream,
    session,
)

HOLDER_SQL = "UPDATE task_run SET state_type = $1 WHERE id = $2"
WRITER_SQL = "UPDATE task_run SET end_time = $1 WHERE id = $2"


def chain(at: float, holder: int = 4711, waiters: tuple[int, ...] = (4790,), wait: float = 5.0,
          app: str = "prefect-server", relation: bool = True, statements: bool = True,
          **kw: Any) -> PostgresSnapshot:
    """A snapshot with an idle-in-transaction holder blocking `waiters` on task_run. Without
    `relation`, the poll read the locks after the writers got theirs (no table they wait on);
    without `statements`, after the sessions' statements were gone."""
    hold = session(holder, age=30.0, app=app)
    blocked = tuple(BlockedSession(pid, (holder,), wait) for pid in waiters)
    writers = tuple(session(pid, state="active", age=wait, app="writer") for pid in waiters)
    involved = Involved((hold, *writers),
                        {holder: HOLDER_SQL, **{pid: WRITER_SQL for pid in waiters}}
                        if statements else {},
                        {pid: Relation("public", "task_run") for pid in waiters}
                        if relation else {})
    return pg_snapshot(group(app=app, state="idle in transaction", max_transaction_age=30.0),
                       taken_at=at, blocked=blocked, blockers=(hold,), involved=involved, **kw)


def quiet(at: float, **kw: Any) -> PostgresSnapshot:
    return pg_snapshot(group(sessions=3), taken_at=at, **kw)


def phases(events: list[IncidentEvent]) -> list[tuple[str, str]]:
    return [(e.phase, e.incident["kind"]) for e in events]


# ---- one lock chain, from begin to end ------------------------------------------------------

def test_a_lock_chain_begins_ends_after_the_window_with_its_evidence() -> None:
    tracker = IncidentTracker(coalesce_seconds=30)
    events = tracker.update([chain(100.0)], now=100.0)
    assert phases(events) == [("begin", "lock_chain")]
    begin = events[0].incident
    assert begin["status"] == "active" and begin["severity"] == "warning"
    assert begin["title"] == "pid 4711 blocks 1 session(s) while idle in transaction on " \
                             "public.task_run"
    evidence = begin["evidence"]
    assert evidence["pid"] == 4711 and evidence["application_name"] == "prefect-server"
    assert (evidence["usename"], evidence["client_addr"]) == ("prefect", "10.0.0.7")
    assert evidence["state"] == "idle in transaction"
    assert evidence["transaction_age_seconds"] == 30.0
    assert evidence["statement"] == HOLDER_SQL
    assert evidence["blocked_pids"] == [4790] and evidence["longest_wait_seconds"] == 5.0
    assert evidence["relation"] == "public.task_run"
    assert evidence["blocked_statements"] == [WRITER_SQL]
    assert begin["cause"] == {"application_name": "prefect-server", "usename": "prefect",
                              "datname": "prefect"}

    assert tracker.update([chain(100.0)], now=101.0) == []  # the same snapshot again: nothing
    assert tracker.update([chain(115.0, wait=20.0)], now=115.0) == []  # longer, not worse
    assert tracker.update([quiet(130.0)], now=130.0) == []  # gone: the end waits the window
    listed = tracker.incidents()[0]
    assert listed["status"] == "ended" and listed["ended_at"] == "1970-01-01T00:02:10Z"
    assert tracker.update([quiet(145.0)], now=145.0) == []
    events = tracker.update([quiet(160.0)], now=160.0)
    assert phases(events) == [("end", "lock_chain")]
    end = events[0].incident
    assert end["duration_seconds"] == 30.0 and end["end_reason"] == "resolved"
    assert end["evidence"]["longest_wait_seconds"] == 20.0  # the worst moment, the latest
    assert end["occurrences"] == 1
    assert tracker.update([quiet(175.0)], now=175.0) == []
    assert [i["id"] for i in tracker.incidents()] == [1]


def test_a_later_equal_poll_that_read_less_keeps_what_was_known() -> None:
    """The last poll before the end caught the writer between the activity read and the lock
    read: blocked, on no table, and no statements left. The record keeps the table and the
    statements of that same occurrence, with the later poll's ages."""
    tracker = IncidentTracker(coalesce_seconds=30)
    tracker.update([chain(100.0)], now=100.0)
    tracker.update([chain(115.0, wait=20.0, relation=False, statements=False)], now=115.0)
    tracker.update([quiet(130.0)], now=130.0)
    (end,) = [e.incident for e in tracker.update([quiet(160.0)], now=160.0)]
    assert end["evidence"]["relation"] == "public.task_run"
    assert end["evidence"]["relations"] == ["public.task_run"]
    assert end["evidence"]["statement"] == HOLDER_SQL
    assert end["evidence"]["blocked_statements"] == [WRITER_SQL]
    assert end["evidence"]["longest_wait_seconds"] == 20.0  # the latest of equals still
    assert end["evidence"]["pid"] == 4711


def test_what_was_known_survives_a_restart() -> None:
    """The occurrence a record shows is kept with it: after a restart, a poll that read less
    of the same occurrence does not erase its table either."""
    before = IncidentTracker(coalesce_seconds=30)
    before.update([chain(100.0)], now=100.0)
    open_, ended = before.records()
    restored = [Incident.from_record(i.record()) for i in open_]
    after = IncidentTracker(coalesce_seconds=30)
    after.restore(before.next_id, restored, [Incident.from_record(i.record()) for i in ended],
                  now=110.0)
    after.update([chain(115.0, relation=False)], now=115.0)
    assert after.incidents()[0]["evidence"]["relation"] == "public.task_run"
    # a record of an earlier version, without the occurrence: read, the newer then replaces it
    old = {k: v for k, v in open_[0].record().items() if k != "observed"}
    assert Incident.from_record(old).observation.instances == ()


def test_another_occurrence_of_equal_rank_replaces_the_evidence() -> None:
    """Another root blocker of the same application: its own evidence, nothing carried over
    from the earlier session (its table or statement would be another session's)."""
    tracker = IncidentTracker(coalesce_seconds=30)
    tracker.update([chain(100.0)], now=100.0)
    tracker.update([chain(115.0, holder=4712, relation=False, statements=False)], now=115.0)
    evidence = tracker.incidents()[0]["evidence"]
    assert evidence["pid"] == 4712
    assert "relation" not in evidence and "statement" not in evidence


def test_updates_only_when_it_worsens() -> None:
    tracker = IncidentTracker(coalesce_seconds=30)
    tracker.update([chain(1.0, waiters=(10,))], now=1.0)
    # two waiters: twice as many
    assert phases(tracker.update([chain(2.0, waiters=(10, 11))], now=2.0)) == \
        [("update", "lock_chain")]
    assert tracker.update([chain(3.0, waiters=(10, 11, 12))], now=3.0) == []  # not twice
    # past blocked_wait_critical_seconds: the doctor pages, the incident says so
    events = tracker.update([chain(4.0, waiters=(10, 11, 12), wait=61.0)], now=4.0)
    assert phases(events) == [("update", "lock_chain")]
    assert events[0].incident["severity"] == "critical"
    assert tracker.update([chain(5.0, waiters=(10,), wait=62.0)], now=5.0) == []
    # the evidence of the worst moment stays
    assert tracker.incidents()[0]["evidence"]["blocked_sessions"] == 3


def test_a_storm_of_short_blocks_is_one_incident_counted() -> None:
    """Hundreds of short lock waits by one application, each with another root blocker, some
    polls seeing none: one begin, one end, every occurrence counted."""
    rng = random.Random(3)
    tracker = IncidentTracker(coalesce_seconds=60)
    events: list[IncidentEvent] = []
    roots = set()
    for poll in range(300):
        at = 1000.0 + poll * 15
        if rng.random() < 0.7:
            root = 10_000 + poll
            roots.add(root)
            snap = chain(at, holder=root, waiters=(20_000 + poll,), wait=rng.uniform(0, 5))
        else:
            snap = quiet(at)
        events += tracker.update([snap], now=at)
    events += tracker.update([quiet(1000.0 + 300 * 15)], now=1000.0 + 302 * 15)
    events += tracker.update([quiet(1000.0 + 310 * 15)], now=1000.0 + 310 * 15)
    assert phases(events) == [("begin", "lock_chain"), ("end", "lock_chain")]
    assert events[-1].incident["occurrences"] == len(roots)


def test_a_comeback_within_the_window_is_one_more_occurrence_of_the_same() -> None:
    tracker = IncidentTracker(coalesce_seconds=30)
    tracker.update([chain(0.0)], now=0.0)
    tracker.update([quiet(10.0)], now=10.0)
    assert tracker.update([chain(20.0)], now=20.0) == []  # the same holder again
    assert tracker.incidents()[0]["occurrences"] == 2
    assert tracker.incidents()[0]["status"] == "active"
    tracker.update([quiet(30.0)], now=30.0)
    events = tracker.update([quiet(70.0)], now=70.0)
    assert phases(events) == [("end", "lock_chain")]
    # later than the window: a new incident
    assert phases(tracker.update([chain(80.0)], now=80.0)) == [("begin", "lock_chain")]
    assert [i["id"] for i in tracker.incidents()] == [2, 1]


def test_an_unread_target_ends_its_incidents_where_last_seen() -> None:
    tracker = IncidentTracker(coalesce_seconds=30)
    tracker.update([chain(0.0)], now=0.0)
    tracker.update([chain(15.0)], now=15.0)
    assert tracker.update([], now=30.0) == []  # stale: no fresh snapshot of it
    events = tracker.update([], now=50.0)
    assert phases(events) == [("end", "lock_chain")]
    assert events[0].incident["end_reason"] == "target not read"
    assert events[0].incident["duration_seconds"] == 15.0


def test_kinds_and_targets_are_separate_incidents() -> None:
    tracker = IncidentTracker(coalesce_seconds=30)
    pools = (Pool("prefect", "prefect", "transaction", {"cl_waiting": 3, "cl_active": 5,
                                                        "sv_active": 5}, 7.5),)
    events = tracker.update([chain(0.0, target="a"), chain(0.0, target="b"),
                             pgbouncer_snapshot(pools, taken_at=0.0)], now=0.0)
    assert sorted((e.incident["target"], e.incident["kind"]) for e in events) == [
        ("a", "lock_chain"), ("b", "lock_chain"), ("pgb", "pgbouncer_pool_waiting")]
    pool = next(e.incident for e in events if e.incident["source"] == "pgbouncer")
    assert pool["severity"] == "critical"
    assert pool["evidence"] == {"pool": "prefect/prefect", "waiting_clients": 3,
                                "active_clients": 5, "server_connections": 5, "pool_size": 5,
                                "maxwait_seconds": 7.5, "pool_mode": "transaction"}


# ---- bounded ---------------------------------------------------------------------------------

def test_memory_is_bounded() -> None:
    tracker = IncidentTracker(coalesce_seconds=0, keep=5, max_open=20)
    apps = [group(app=f"app-{i}", state="idle in transaction", max_transaction_age=400.0)
            for i in range(30)]
    tracker.update([pg_snapshot(*apps, taken_at=1.0)], now=1.0)
    assert len(tracker.incidents()) == 20 and tracker.untracked == 10
    tracker.update([quiet(2.0)], now=2.0)
    assert len(tracker.incidents()) == 5  # the last 5 ended kept

    huge = "SELECT " + "x, " * 5000 + "y"
    many = tuple(range(100, 1100))
    snap = chain(3.0, waiters=many)
    snap.involved.statements[4711] = huge  # type: ignore[index]
    tracker.update([snap], now=3.0)
    evidence = tracker.incidents()[0]["evidence"]
    statement, pids = evidence["statement"], evidence["blocked_pids"]
    assert isinstance(statement, str) and isinstance(pids, list)
    assert len(statement) <= 256 and len(pids) == MAX_ITEMS
    assert evidence["blocked_sessions"] == 1000


def test_evidence_is_one_line_whatever_the_application_name() -> None:
    tracker = IncidentTracker()
    (event,) = tracker.update([chain(1.0, app="evil\nlevel=error event=forged")], now=1.0)
    assert event.incident["evidence"]["application_name"] == "evil?level=error event=forged"
    assert "\n" not in event.incident["title"]


def test_the_log_is_rate_limited_with_a_summary() -> None:
    journal = Journal(per_minute=30)
    event = IncidentEvent("begin", {
        "id": 1, "kind": "lock_chain", "source": "postgres", "target": "db", "status": "active",
        "severity": "warning", "title": "t", "began_at": None, "ended_at": None,
        "last_seen_at": None, "duration_seconds": 0.0, "occurrences": 1, "end_reason": None,
        "cause": {}, "evidence": {"pid": 1}})
    lines = journal.lines([event] * 100, now=0.0)
    assert len(lines) == 30 and lines[0].message == "incident begin"
    assert lines[0].fields["pid"] == 1 and lines[0].fields["incident"] == 1
    assert journal.lines([event], now=30.0) == []  # still the same minute
    lines = journal.lines([event], now=61.0)
    assert [line.message for line in lines] == [SUPPRESSED, "incident begin"]
    assert lines[0].fields["suppressed"] == 71
    assert lines[0].fields["by_event"] == {"begin:lock_chain": 71}
    assert [line.message for line in journal.lines([], now=200.0)] == []


# ---- the doctor and the incidents agree -----------------------------------------------------

INCIDENT_CHECKS = {check.id for check in CHECKS if check.incident}


def observed(snapshots: list[Snapshot]) -> set[tuple[str, str, str]]:
    context = Context(thresholds(), snapshots)
    return {(o.kind, o.target, o.severity) for s in snapshots for k in KINDS if k.owns(s)
            for o in k.observe(s, context)}


def found(snapshots: list[Snapshot]) -> set[tuple[str, str, str]]:
    return {(f.check, f.target, f.severity) for f in diagnose(snapshots)
            if f.check in INCIDENT_CHECKS}


def random_pg(rng: random.Random) -> PostgresSnapshot:
    groups: list[ActivityGroup] = []
    sessions: list[Session] = []
    for i in range(rng.randint(0, 4)):
        state = rng.choice(["idle in transaction", "idle in transaction (aborted)", "active",
                            "idle"])
        xact = rng.choice([None, 10.0, 299.0, 301.0, 899.0, 901.0])
        stall = rng.choice([False, True])
        state_age = rng.choice([1.0, 59.0, 61.0, 300.0])
        app = rng.choice(["a", "b"])
        groups.append(group(app=app, state=state, max_transaction_age=xact,
                            client_read_in_transaction=stall, max_state_age=state_age,
                            sessions=rng.randint(1, 3)))
        sessions.append(Session(100 + i, "prefect", "prefect", app, "-", state, "Client",
                                "ClientRead", xact, state_age))
    blocked = tuple(BlockedSession(200 + i, (rng.choice([100, 101, 200]),),
                                   rng.choice([1.0, 59.0, 61.0]))
                    for i in range(rng.randint(0, 3)))
    return pg_snapshot(*groups, blocked=blocked, blockers=tuple(sessions[:1]),
                       oldest_transactions=tuple(sessions),
                       involved=Involved(tuple(sessions)))


def random_pgbouncer(rng: random.Random) -> PgBouncerSnapshot:
    pools = tuple(Pool(f"db{i}", "u", "transaction",
                       {"cl_waiting": rng.choice([0, 0, 1, 4]), "cl_active": 2},
                       rng.choice([0.0, 4.9, 5.1])) for i in range(rng.randint(0, 3)))
    return pgbouncer_snapshot(pools)


def random_redis(rng: random.Random) -> RedisSnapshot:
    def group(name: str) -> Group:
        idle = tuple(rng.choice([0.5, 59.0, 61.0, 3600.0]) for _ in range(rng.randint(0, 2)))
        delivered = rng.choice(["1000-9", "1000-2"])
        return redis_group(name, delivered, idle, pending=rng.choice([0, 3]),
                           lag=rng.choice([None, 0, 7, 1500]))
    names = ["event-persister", "reactive-triggers", "ephemeral-x", "docket-workers"]
    streams = tuple(redis_stream(key, *(group(n) for n in rng.sample(names, rng.randint(0, 3))),
                                 last_generated_id="1000-9")
                    for key in rng.sample(["events", "prefect:stream", "app"], rng.randint(0, 3)))
    return redis_snapshot(*streams, used_memory=rng.choice([50, 85, 97]),
                          maxmemory=rng.choice([0, 100]))


def test_an_incident_exists_exactly_when_the_doctor_reports_its_finding() -> None:
    rng = random.Random(11)
    for _ in range(500):
        snapshots: list[Snapshot] = [random_pg(rng), random_pgbouncer(rng), random_redis(rng)]
        assert observed(snapshots) == found(snapshots), snapshots
