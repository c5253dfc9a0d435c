"""Snapshot -> metric families, with no database: folding, filtering and hostile values."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import replace

import pytest

from exporter.catalogue import CATALOGUE
from exporter.collector import ExporterCollector
from exporter.labels import FOLDED, OTHER, Folder, keep_top
from exporter.metricspec import MetricOptions
from exporter.poller import SourceState, fresh_snapshots
from exporter.postgres.metrics import postgres_families
from exporter.postgres.snapshot import (
    BlockedSession,
    DatabaseSize,
    IndexBuild,
    PostgresSnapshot,
    Session,
    StatementStats,
    TopStatements,
)
from tests.factories import NamedSource, group, oldest, table
from tests.factories import pg_snapshot as snapshot
from tests.helpers import Scrape, exposition, parse, render


def rendered(snap: PostgresSnapshot, top_n: int = 20) -> Scrape:
    return render(postgres_families(snap, MetricOptions(label_top_n=top_n)))


def test_keep_top_is_stable_on_ties() -> None:
    assert keep_top({"b": 2, "a": 2, "c": 1}, 2) == {"a", "b"}


def test_a_folder_keeps_every_value_it_may_and_folds_the_rest() -> None:
    weighted = Folder({"big": 9, "mid": 5, "small": 1, "x" * 200: 7}, 2)
    assert (weighted("big"), weighted("x" * 200)[-1], weighted("mid"), weighted("new")) == \
        ("big", "…", OTHER, OTHER)  # kept names are cleaned (capped), the rest fold
    assert "new" not in weighted  # asking for a value never grows the folder
    unweighted = Folder({"a", "b"}, 2)  # no more values than top_n: no weights needed
    assert (unweighted["a"], unweighted["c"]) == ("a", OTHER)
    with pytest.raises(ValueError, match="cannot fold"):
        Folder({"a", "b", "c"}, 2)  # folding needs weights


def test_application_names_beyond_top_n_fold_into_other_and_sum() -> None:
    groups = [group(app=f"app-{i}", sessions=10 - i) for i in range(6)]
    s = rendered(snapshot(*groups), top_n=3)
    apps = {lab["application_name"]: v for lab, v in
            zip(s.labelsets("postgres_connections"), s.values("postgres_connections"),
                strict=True)}
    assert apps == {"app-0": 10, "app-1": 9, "app-2": 8, OTHER: 7 + 6 + 5}


def test_what_the_source_folded_takes_no_place_in_the_top_n() -> None:
    """The SQL folds idle sessions of values beyond the top N into FOLDED (#26): however many
    sessions it sums, it is never kept, and the top N are the values the SQL kept."""
    groups = [group(app="app-0", sessions=10), group(app="app-1", sessions=9),
              group(app="app-5", sessions=1, state="active"),  # beyond the top 2, not idle
              group(app=FOLDED, sessions=500)]
    s = rendered(snapshot(*groups), top_n=2)
    apps = {(lab["application_name"], lab["state"]): v for lab, v in
            zip(s.labelsets("postgres_connections"), s.values("postgres_connections"),
                strict=True)}
    assert apps == {("app-0", "idle"): 10, ("app-1", "idle"): 9, (OTHER, "active"): 1,
                    (OTHER, "idle"): 500}
    assert Folder({"a", FOLDED}, 1) == {"a": "a"}  # values only: FOLDED is no value to keep


def test_transaction_ages_take_the_oldest_per_state_and_ignore_idle() -> None:
    s = rendered(snapshot(
        group(app="a", state="active", max_transaction_age=5.0),
        group(app="a", state="active", wait_event_type="Lock", wait_event="tuple",
              max_transaction_age=50.0),
        group(app="a", state="idle in transaction", max_transaction_age=7.0),
        group(app="b", state="idle")))
    assert s.value("postgres_transaction_max_age_seconds", application_name="a",
                   state="active") == 50.0
    assert s.value("postgres_transaction_max_age_seconds", state="idle in transaction") == 7.0
    assert s.values("postgres_transaction_max_age_seconds", application_name="b") == []


def test_client_read_counts_only_sessions_inside_a_transaction() -> None:
    s = rendered(snapshot(
        group(app="idle", state="idle", sessions=40, max_state_age=900.0),
        group(app="copy", state="active", wait_event_type="Client", wait_event="ClientRead",
              client_read_in_transaction=True, max_transaction_age=50.0, max_state_age=49.0)))
    assert s.value("postgres_client_read_in_transaction_sessions") == 1
    assert s.value("postgres_client_read_in_transaction_max_age_seconds") == 49.0
    # wait events leave idle sessions out
    assert s.value("postgres_wait_event_sessions", wait_event="ClientRead") == 1


def test_blocking_counts_distinct_blockers() -> None:
    snap = snapshot(blocked=(BlockedSession(10, (1,), 3.0), BlockedSession(11, (1, 2), 8.0),
                             BlockedSession(12, (10,), 1.0)))
    s = rendered(snap)
    assert s.value("postgres_blocked_sessions") == 3
    assert s.value("postgres_blocking_sessions") == 3
    assert s.value("postgres_blocked_max_wait_seconds") == 8.0


def test_listen_channels_and_tables() -> None:
    s = rendered(snapshot(
        group(app="s1", listen_channel="prefect_automation_changes"),
        group(app="s2", listen_channel="prefect_automation_changes", sessions=2),
        tables=(table("flow_run", 10, 4, None, 1234.5),)))
    assert s.value("postgres_listen_sessions", channel="prefect_automation_changes") == 3
    assert s.value("postgres_table_dead_tuples", table="flow_run") == 4
    assert s.value("postgres_table_last_vacuum_timestamp_seconds", table="flow_run") == 0
    assert s.value("postgres_table_last_autovacuum_timestamp_seconds", table="flow_run") == 1234.5


HOSTILE = ['quo"te', "back\\slash", "new\nline", "bad-\udcff-bytes", "x" * 500, "", "{}=,"]


def test_hostile_label_values_give_valid_bounded_exposition() -> None:
    groups = [group(app=name, sessions=5) for name in HOSTILE]
    groups += [group(app=f"generated-{i}") for i in range(10_000)]
    oldest = tuple(Session(i, "prefect", "u", name, "local", "idle in transaction", "Client",
                           "ClientRead", float(i), 1.0) for i, name in enumerate(HOSTILE))
    snap = snapshot(*groups, oldest_transactions=oldest)
    text = exposition(postgres_families(snap, MetricOptions(label_top_n=20)))
    s = parse(text)  # the real parser accepts it
    assert len(s.values("postgres_connections")) <= 21
    # the 7 hostile names (5 sessions each) and 13 of the generated ones keep their names
    assert s.value("postgres_connections", application_name=OTHER) == 10_000 - (20 - 7)
    assert sum(s.values("postgres_connections")) == 10_000 + 5 * len(HOSTILE)
    assert len(max((lab["application_name"] for lab in
                    s.labelsets("postgres_oldest_transaction_age_seconds")), key=len)) <= 128
    promtool = shutil.which("promtool") or "promtool"  # scripts/bootstrap installs it
    done = subprocess.run([promtool, "check", "metrics"], input=text.encode(),
                          capture_output=True)
    assert done.returncode == 0, done.stderr.decode() + done.stdout.decode()


def test_every_emitted_family_is_catalogued_with_its_labels() -> None:
    snap = snapshot(group(state="active", max_transaction_age=1.0, listen_channel="c"),
                    blocked=(BlockedSession(2, (1,), 1.0),),
                    oldest_transactions=(Session(1, "d", "u", "a", "", "active", "", "", 1.0,
                                                 1.0),),
                    tables=(table("log", 1, 1, 1.0, 1.0),),
                    databases=(DatabaseSize("prefect", 1),), database="prefect",
                    index_builds=(IndexBuild(3, "public", "log", "ix", "CREATE INDEX",
                                             "initializing", None),),
                    top_statements=TopStatements(1.0, "read", (StatementStats(1, 1, 1.0, 1, ""),)),
                    oldest_rows=(oldest("log", "timestamp", 3600.0),))
    state = SourceState(NamedSource("postgres", "t"))
    collector = ExporterCollector([state], MetricOptions(20))
    collector.update([snap], [])
    emitted = {}
    for metric in collector.collect():
        for sample in metric.samples:
            emitted[sample.name] = set(sample.labels)
    postgres_specs = {n for n, spec in CATALOGUE.items() if spec.source == "postgres"}
    assert postgres_specs <= set(emitted), postgres_specs - set(emitted)
    for name, labels in emitted.items():
        assert name in CATALOGUE, name
        assert labels == set(CATALOGUE[name].labels), name


def test_stale_snapshots_are_not_exported_but_health_is() -> None:
    state = SourceState(NamedSource("postgres", "t"))
    state.snapshot = replace(snapshot(group()), taken_at=1000.0)
    collector = ExporterCollector([state], MetricOptions(20))

    def names(now: float) -> set[str]:
        collector.update(fresh_snapshots([state], now, stale_after=45.0), [])
        return {m.name for m in collector.collect()}

    assert "postgres_connections" in names(1040.0)
    assert "postgres_connections" not in names(1046.0)
    assert "prefect_pg_exporter_source_up" in names(1046.0)


def test_two_targets_share_one_family_per_name() -> None:
    collector = ExporterCollector([], MetricOptions(20))
    collector.update([snapshot(group(), target="a"), snapshot(group(), target="b")], [])
    text = exposition(collector.collect())
    assert text.count("# TYPE postgres_connections gauge") == 1
    assert {lab["target"] for lab in parse(text).labelsets("postgres_connections")} == {"a", "b"}


def test_sizes_and_row_counters_of_hot_tables_and_databases() -> None:
    s = rendered(snapshot(
        tables=(table("events", 10, 2, total_bytes=5_000_000, inserted=900, deleted=300),),
        databases=(DatabaseSize("prefect", 90_000), DatabaseSize("postgres", 7_000),
                   DatabaseSize("tiny", 10))), top_n=2)
    assert s.value("postgres_table_size_bytes", table="events") == 5_000_000
    assert s.value("postgres_table_inserted_rows_total", table="events") == 900
    assert s.value("postgres_table_deleted_rows_total", table="events") == 300
    # databases beyond the top N by size fold into other
    assert {lab["datname"]: v for lab, v in zip(s.labelsets("postgres_database_size_bytes"),
                                                s.values("postgres_database_size_bytes"),
                                                strict=True)} == {
        "prefect": 90_000, "postgres": 7_000, OTHER: 10}


def test_blocked_sessions_by_relation_fold_beyond_top_n_and_unknown_is_empty() -> None:
    from exporter.postgres.snapshot import Involved, Relation

    blocked = tuple(BlockedSession(100 + i, (1,), 1.0) for i in range(7))
    waits_on = {100: Relation("public", "task_run"), 101: Relation("public", "task_run"),
                102: Relation("public", "task_run"), 103: Relation("public", "flow_run"),
                104: Relation("public", "flow_run"), 105: Relation("public", "log")}
    s = rendered(snapshot(blocked=blocked, involved=Involved(waits_on=waits_on)), top_n=2)
    by = {(lab["schema"], lab["table"]): v for lab, v in
          zip(s.labelsets("postgres_blocked_sessions_by_relation"),
              s.values("postgres_blocked_sessions_by_relation"), strict=True)}
    # 106 waits on no table it could name; log is beyond the top 2
    assert by == {("public", "task_run"): 3, ("public", "flow_run"): 2, ("", ""): 1,
                  (OTHER, OTHER): 1}
    assert sum(by.values()) == s.value("postgres_blocked_sessions")
    assert rendered(snapshot()).values("postgres_blocked_sessions_by_relation") == []


def test_the_table_a_blocked_session_waits_on() -> None:
    from exporter.postgres.involved import LockRow, waited_on
    from exporter.postgres.snapshot import Relation

    rows = [
        # queued behind a row lock: waits on a transaction id, holds the row's tuple lock
        LockRow(1, "public", "flow_run", True, "relation"),
        LockRow(1, "public", "task_run", True, "relation"),
        LockRow(1, "public", "task_run", True, "tuple"),
        # second in the queue: waits on the tuple lock itself
        LockRow(2, "public", "task_run", True, "relation"),
        LockRow(2, "public", "task_run", False, "tuple"),
        # a DDL's lock on the table, not granted
        LockRow(3, "public", "log", False, "relation"),
        # an INSERT waiting on a unique key: no tuple lock, one table
        LockRow(4, "public", "events", True, "relation"),
        # two tables and nothing to tell them apart
        LockRow(5, "public", "a", True, "relation"),
        LockRow(5, "public", "b", True, "relation"),
    ]
    assert waited_on(rows) == {1: Relation("public", "task_run"),
                               2: Relation("public", "task_run"),
                               3: Relation("public", "log"), 4: Relation("public", "events")}
    assert str(Relation("scratch", "task_run")) == "scratch.task_run"


def test_statistics_indexes_and_deadlocks() -> None:
    s = rendered(snapshot(
        tables=(table("log", 30_000, 0, modified_since_analyze=30_000),
                table("flow_run", 10, 0, modified_since_analyze=3, last_analyze=990.5)),
        databases=(DatabaseSize("prefect", 90_000, deadlocks=2),
                   DatabaseSize("postgres", 7_000, deadlocks=1),
                   DatabaseSize("tiny", 10, deadlocks=4)),
        invalid_index_count=3,
        index_builds=(IndexBuild(7, "public", "task_run", "ix_t", "CREATE INDEX CONCURRENTLY",
                                 "building index: scanning table", 0.25),
                      IndexBuild(8, "public", "log", "", "CREATE INDEX CONCURRENTLY",
                                 "initializing", None))), top_n=2)
    assert s.value("postgres_table_modified_since_analyze_rows", table="log") == 30_000
    assert s.value("postgres_table_last_analyze_timestamp_seconds", table="log") == 0
    assert s.value("postgres_table_last_analyze_timestamp_seconds", table="flow_run") == 990.5
    assert s.value("postgres_invalid_indexes") == 3
    # deadlocks fold with the database sizes: the same databases keep their names
    assert s.value("postgres_deadlocks_total", datname="prefect") == 2
    assert s.value("postgres_deadlocks_total", datname=OTHER) == 4
    assert s.value("postgres_index_build_done_ratio", index="ix_t",
                   phase="building index: scanning table") == 0.25
    assert s.value("postgres_index_build_done_ratio", table="log", index="") == -1
    quiet = rendered(snapshot())
    assert quiet.value("postgres_invalid_indexes") == 0
    assert quiet.labelsets("postgres_index_build_done_ratio") == []


def test_the_watched_database_keeps_its_name_and_says_it_is_the_watched_one() -> None:
    """Prefect's database (the DSN's) is what PostgresDeadlocks joins on: it is never folded
    into other, however small, and postgres_watched_database_info names it."""
    databases = (DatabaseSize("big", 90_000, deadlocks=1), DatabaseSize("mid", 7_000),
                 DatabaseSize("prefect", 10, deadlocks=5))
    s = rendered(snapshot(databases=databases, database="prefect"), top_n=2)
    assert {lab["datname"]: v for lab, v in zip(s.labelsets("postgres_deadlocks_total"),
                                                s.values("postgres_deadlocks_total"),
                                                strict=True)} == {
        "prefect": 5, "big": 1, OTHER: 0}
    assert [(lab["datname"], v) for lab, v in zip(
        s.labelsets("postgres_watched_database_info"),
        s.values("postgres_watched_database_info"), strict=True)] == [("prefect", 1)]
    # without a watched database (not read), the top N by size as before, and no info
    s = rendered(snapshot(databases=databases), top_n=2)
    assert set(s.labelsets("postgres_deadlocks_total")[i]["datname"] for i in range(3)) == {
        "big", "mid", OTHER}
    assert s.labelsets("postgres_watched_database_info") == []


def test_top_statements_by_queryid_only_never_their_text() -> None:
    top = TopStatements(990.0, "read", (
        StatementStats(-17, 3, 12.5, 30, "ALTER ROLE x PASSWORD ?"),
        StatementStats(42, 9, 0.5, 9, "SELECT $1")))
    s = rendered(snapshot(top_statements=top))
    assert s.value("postgres_statement_seconds_total", queryid="-17") == 12.5
    assert s.value("postgres_statement_calls_total", queryid="-17") == 3
    assert s.value("postgres_statement_rows_total", queryid="42") == 9
    assert {lab["queryid"] for lab in s.labelsets("postgres_statement_seconds_total")} == \
        {"-17", "42"}
    assert "ALTER ROLE" not in s.text and "SELECT $1" not in s.text
    for off in (None, TopStatements(990.0, "not installed")):
        assert rendered(snapshot(top_statements=off)).labelsets(
            "postgres_statement_calls_total") == []


def test_oldest_rows_only_where_read() -> None:
    s = rendered(snapshot(oldest_rows=(oldest("log", "timestamp", 3456000.0),
                                       oldest("artifact", "updated", None))))
    assert s.labelsets("prefect_table_oldest_row_age_seconds") == [
        {"target": "db", "schema": "public", "table": "log", "column": "timestamp"}]
    assert s.value("prefect_table_oldest_row_age_seconds", table="log") == 3456000.0
