"""exporter/postgres/activity.py: the rows of ACTIVITY_SQL into groups, the oldest transactions
and the blocked sessions, with the idle sessions folded in Python (#26). Rows are tuples in the
SQL's column order (the lab test test_activity_columns_* holds the order to the server's)."""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

from exporter.labels import FOLDED
from exporter.metricspec import MetricOptions
from exporter.postgres.activity import (
    APPLICATIONS_SEPARATOR,
    MAX_BLOCKERS_ASKED,
    LockWait,
    activity,
    blocked_sessions,
    blockers_to_ask,
)
from exporter.postgres.involved import explicit_pids, involved_pids
from exporter.postgres.metrics import postgres_families
from exporter.thresholds import thresholds
from tests.factories import pg_snapshot

Row = tuple[Any, ...]


def listed(pid: int, app: str, state: str = "active", *, age: float | None = 5.0,
           state_age: float = 3.0, wait: tuple[str, str] = ("", ""),
           client: bool = True, db: str = "prefect", user: str = "prefect") -> Row:
    """A session that is not idle, as a row of its own (the read lists the sessions of one set
    of labels in one row: a row of one session is one of those; several join, see rows())."""
    return (db, user, None, state, *wait, state == "active" and wait[1] == "ClientRead", None, 1,
            age, state_age, client, [app], [pid], [age], [state_age], ["10.0.0.1"], None)


def idle(apps: list[str], *, db: str = "prefect", user: str = "prefect",
         state_age: float = 60.0) -> Row:
    """Idle sessions without a LISTEN, grouped without their application (a row is at least
    one session: the read has no row for none)."""
    assert apps, "a row of no idle session"
    return (db, user, None, "idle", "Client", "ClientRead", False, None, len(apps), None,
            state_age, True, None, None, None, None, None,
            APPLICATIONS_SEPARATOR.join(apps))


def listener(app: str, channel: str) -> Row:
    return ("prefect", "prefect", app, "idle", "Client", "ClientRead", False, channel, 1, None,
            9.0, True, None, None, None, None, None, None)


def rows(*sessions: Row) -> list[Row]:
    """Rows as the read returns them: the listed sessions of one set of labels (and client or
    not) in one row, their arrays joined; other rows as they are."""
    joined: dict[tuple[Any, ...], Row] = {}
    others: list[Row] = []
    for r in sessions:
        if r[13] is None:
            others.append(r)
            continue
        key = (*r[:8], r[11])
        same = joined.get(key)
        joined[key] = r if same is None else (
            *same[:8], same[8] + 1, *r[9:12], *(a + b for a, b in zip(same[12:17], r[12:17],
                                                                     strict=True)), None)
    return [*joined.values(), *others]


def test_sessions_of_one_group_add_up_with_their_pids_and_oldest_ages() -> None:
    read = activity([listed(11, "api", age=5.0), listed(12, "api", age=50.0),
                     listed(13, "worker", "idle in transaction", age=20.0)], 5, 20)
    api = next(g for g in read.groups if g.application_name == "api")
    assert (api.sessions, api.max_transaction_age) == (2, 50.0)
    pids = dict(zip((g.application_name for g in read.groups), read.group_pids, strict=True))
    assert pids == {"api": (11, 12), "worker": (13,)}
    assert [s.pid for s in read.oldest] == [12, 13, 11]  # the oldest transaction first


def test_the_oldest_are_the_top_n_ties_broken_by_pid() -> None:
    rows = [listed(pid, f"app-{pid}", age=7.0) for pid in (40, 10, 30, 20)]
    assert [s.pid for s in activity(rows, 2, 20).oldest] == [10, 20]
    assert activity(rows, 0, 20).oldest == ()


def test_blocked_sessions_are_read_from_any_backend_and_only_while_blocked() -> None:
    rows = [listed(21, "writer", wait=("Lock", "transactionid")),
            listed(22, "writer", wait=("Lock", "transactionid")),
            listed(23, "autovacuum", wait=("Lock", "relation"), client=False),
            listed(24, "api", wait=("IO", "DataFileRead"))]
    read = activity(rows, 5, 20)
    assert sorted(w.pid for w in read.lock_waits) == [21, 22, 23]
    blocked = blocked_sessions(read.lock_waits, {21: [7], 22: [], 23: [7]})  # 22's went
    assert sorted((b.pid, b.blocked_by) for b in blocked) == [(21, (7,)), (23, (7,))]
    assert all(g.application_name != "autovacuum" for g in read.groups)  # not a client


def test_blockers_are_asked_for_the_longest_waits_the_others_still_count() -> None:
    """pg_blocking_pids() for the MAX_BLOCKERS_ASKED longest waits only; every wait is a
    blocked session, and the chain still finds its root through the asked."""
    waits = [LockWait(1000 + i, float(i)) for i in range(MAX_BLOCKERS_ASKED + 50)]
    asked = blockers_to_ask(reversed(waits))
    assert asked == [w.pid for w in waits[::-1][:MAX_BLOCKERS_ASKED]]  # longest first
    blocked = blocked_sessions(waits, {pid: [7] for pid in asked})
    assert len(blocked) == len(waits)
    assert sum(1 for b in blocked if b.blocked_by == (7,)) == MAX_BLOCKERS_ASKED
    assert explicit_pids(blocked)[0] == 7


def test_idle_sessions_beyond_the_top_n_fold_and_the_kept_keep_their_whole_weight() -> None:
    rows = [idle(["big"] * 5 + ["mid"] * 3 + ["a", "b", "c"]), listed(1, "mid"),
            listener("services", "prefect_automation_changes")]
    groups = {(g.application_name, g.state): g.sessions for g in activity(rows, 5, 2).groups}
    # big (5) and mid (3 idle + 1 active) are the top 2; a, b, c fold; the listener never folds
    assert groups == {("big", "idle"): 5, ("mid", "idle"): 3, ("mid", "active"): 1,
                      (FOLDED, "idle"): 3, ("services", "idle"): 1}


def test_nothing_folds_without_a_top_n() -> None:
    groups = activity([idle(["x", "y", "y"])], 5, None).groups
    assert sorted((g.application_name, g.sessions) for g in groups) == [("x", 1), ("y", 2)]


def test_folding_in_python_exports_what_grouping_every_session_exports() -> None:
    """Random servers: the families from the folded read equal those from a read that folds
    nothing, as the metrics fold them (same top N, same ties broken by value)."""
    rng = random.Random(26)
    options = MetricOptions(label_top_n=4)
    for _ in range(200):
        apps = [f"app-{rng.randrange(12)}" for _ in range(rng.randrange(1, 40))]
        rows: list[Row] = [idle(apps[: len(apps) // 2] or ["solo"], db="prefect"),
                           idle(apps[len(apps) // 2:] or ["solo"], db=f"db-{rng.randrange(6)}",
                                user=f"user-{rng.randrange(6)}")]
        rows += [listed(100 + i, rng.choice(apps), rng.choice(["active", "idle in transaction"]),
                        db=f"db-{rng.randrange(6)}") for i in range(rng.randrange(6))]

        def families(rows: list[Row], top_n: int | None) -> dict[str, list[Any]]:
            snap = pg_snapshot(*activity(rows, 5, top_n).groups)
            return {m.name: sorted((sorted(s.labels.items()), s.value) for s in m.samples)
                    for m in postgres_families(snap, options)
                    if m.name in ("postgres_connections", "postgres_wait_event_sessions")}

        assert families(rows, 4) == families(rows, None)


def test_the_involved_are_the_chain_then_the_stalled_and_idle_past_thresholds_oldest_first(
) -> None:
    """Chosen from the activity read, so only they are read again (#26): the lock chain's
    sessions first (an idle advisory-lock holder too, after those in a transaction), then
    sessions past the stall and idle-in-transaction thresholds, each part oldest first."""
    t = thresholds()
    stall, idle_after = (t["client_read_stall_critical_seconds"],
                         t["idle_in_transaction_warning_seconds"])
    rows = [listed(1, "copier", wait=("Client", "ClientRead"), age=stall + 50,
                   state_age=stall + 50),
            listed(2, "holder", "idle in transaction", age=idle_after + 10),
            listed(3, "older", "idle in transaction", age=idle_after + 900),
            listed(4, "young", "idle in transaction", age=idle_after - 10),  # not yet
            listed(5, "writer", wait=("Lock", "transactionid"), age=30.0)]
    read = activity(rows, 5, 20)
    blocked = blocked_sessions(read.lock_waits, {5: [2]})
    assert involved_pids(explicit_pids(blocked), read.in_transaction, t) == [2, 5, 3, 1]
    assert involved_pids([99, 5], read.in_transaction, t) == [5, 99, 3, 2, 1]


def test_a_session_blocked_by_several_lists_them_all() -> None:
    read = activity(rows(listed(31, "writer", wait=("Lock", "tuple")),
                         listed(32, "writer", wait=("Lock", "tuple"))), 5, 20)
    assert [w.pid for w in read.lock_waits] == [31, 32]  # one row of both, in its order
    blocked = blocked_sessions(read.lock_waits, {31: [7, 8], 32: [31]})
    assert [(b.pid, b.blocked_by) for b in blocked] == [(31, (7, 8)), (32, (31,))]


def test_rows_of_the_same_labels_join_and_stay_as_read() -> None:
    """Two rows may carry one set of labels (client backends, and other roles' sessions whose
    backend type pg_monitor's view hides): their sessions count together, and the rows read are
    not changed (asyncpg's, or a test's, may be read again)."""
    first, second = listed(41, "api"), listed(42, "api", age=80.0)
    before = [list(column) for column in first[12:17]]
    read = activity([first, second], 5, 20)
    api = next(g for g in read.groups if g.application_name == "api")
    assert (api.sessions, api.max_transaction_age) == (2, 80.0)
    assert read.group_pids[read.groups.index(api)] == (41, 42)
    assert [list(column) for column in first[12:17]] == before


def test_the_source_folds_the_sessions_as_the_metrics_fold_them() -> None:
    """Random servers: the exported groups the read folds (snapshot.exported) give the families
    the metrics build when they fold the groups themselves, and those of a read that folds
    nothing; names that need cleaning and an application named like OTHER included."""
    rng = random.Random(27)
    apps = [f"app-{i}" for i in range(10)] + ["x" * 200, "other", "é"]
    for _ in range(300):
        top_n = rng.choice([1, 2, 3, 20])
        sessions = [listed(100 + i, rng.choice(apps),
                           rng.choice(["active", "idle in transaction", "unknown"]),
                           age=rng.choice([None, 1.0, 7.0]), db=rng.choice(["prefect", "db"]),
                           wait=rng.choice([("", ""), ("Client", "ClientRead")]))
                    for i in range(rng.randrange(12))]
        sessions += [idle([rng.choice(apps) for _ in range(rng.randrange(1, 9))],
                          db=rng.choice(["prefect", "db", "x" * 200]))
                     for _ in range(rng.randrange(3))]
        sessions += [listener(rng.choice(apps), "prefect_automation_changes")
                     for _ in range(rng.randrange(2))]
        read = activity(rows(*sessions), 5, top_n)
        folded_by_metrics = pg_snapshot(*read.groups)
        assert read.exported is not None and read.exported.top_n == top_n
        unfolded = pg_snapshot(*activity(rows(*sessions), 5, None).groups)
        assert (_families(replace(folded_by_metrics, exported=read.exported), top_n)
                == _families(folded_by_metrics, top_n) == _families(unfolded, top_n))


def _families(snap: Any, top_n: int) -> list[Any]:
    return [(m.name, sorted((sorted(s.labels.items()), s.value) for s in m.samples))
            for m in postgres_families(snap, MetricOptions(label_top_n=top_n))]


def _read_as_fresh(read: Any) -> tuple[Any, ...]:
    """What a read gives the rest of the exporter, groups in a stable order."""
    assert read.exported is not None
    return (sorted(zip(read.groups, read.group_pids, strict=True), key=repr),
            sorted(read.exported.groups, key=repr), read.oldest, read.lock_waits)


def test_a_read_with_the_same_names_reuses_the_last_ranking_and_reads_the_same() -> None:
    """Same applications, databases and roles, with other ages and states of the same
    sessions: the last ranking is reused (not ranked again) and the read equals a fresh one."""
    apps = [f"app-{i % 7}" for i in range(30)]
    first = activity(rows(idle(apps), listed(1, "app-3"), listed(2, "api", age=9.0)), 5, 3)
    again_rows = rows(idle(apps, state_age=90.0), listed(1, "app-3", age=70.0),
                      listed(2, "api", age=99.0))
    again = activity(again_rows, 5, 3, first.ranking)
    assert again.ranking is first.ranking
    assert _read_as_fresh(again) == _read_as_fresh(activity(again_rows, 5, 3))


def test_a_new_name_or_count_ranks_again() -> None:
    apps = [f"app-{i % 7}" for i in range(30)]
    first = activity(rows(idle(apps), listed(1, "app-3")), 5, 3)
    changes = [rows(idle([*apps, "app-9"]), listed(1, "app-3")),  # one idle session more
               rows(idle(apps), listed(1, "app-4")),  # another application is busy
               rows(idle(apps, db="other"), listed(1, "app-3")),  # another database
               rows(idle(apps), listed(1, "app-3"), listener("app-5", "prefect_automation"))]
    for changed in changes:
        read = activity(changed, 5, 3, first.ranking)
        assert read.ranking is not first.ranking
        assert _read_as_fresh(read) == _read_as_fresh(activity(changed, 5, 3))
    assert activity(rows(idle(apps), listed(1, "app-3")), 5, 4, first.ranking).ranking \
        is not first.ranking  # another top N


def test_reads_given_the_last_ranking_equal_fresh_reads() -> None:
    """Random servers in a row, each read with the last one's ranking: what every read gives
    equals a fresh read of its rows (a server changes its names, or not, between two polls)."""
    rng = random.Random(28)
    apps = [f"app-{i}" for i in range(8)]
    last = None
    for _ in range(400):
        if last is None or rng.random() < 0.5:  # else the same sessions, read again
            sessions = [listed(100 + i, rng.choice(apps), rng.choice(["active", "unknown"]),
                               db=rng.choice(["prefect", "db"]))
                        for i in range(rng.randrange(6))]
            sessions += [idle([rng.choice(apps) for _ in range(rng.randrange(1, 9))],
                              db=rng.choice(["prefect", "db"]))
                         for _ in range(rng.randrange(3))]
            sessions += [listener(rng.choice(apps), "c") for _ in range(rng.randrange(2))]
            top_n = rng.choice([1, 2, 20])
        read = activity(rows(*sessions), 5, top_n, last)
        assert _read_as_fresh(read) == _read_as_fresh(activity(rows(*sessions), 5, top_n))
        last = read.ranking
