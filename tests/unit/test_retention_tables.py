"""The retention backlog per table: which retention applies on which release, and what the
doctor says about old rows (no server: hand-made snapshots)."""

from __future__ import annotations

from exporter.diagnosis import diagnose
from exporter.postgres.oldest import ages_sql
from exporter.prefect.retention import table_retention
from exporter.prefect.settings import EVENTS_RETENTION, RUNS_RETENTION
from tests.factories import healthy_pg, oldest, prefect_snapshot, table

DAY = 86400.0
SETTINGS = {EVENTS_RETENTION: 3 * DAY, RUNS_RETENTION: 30 * DAY}


def kept(version: str, vacuum: frozenset[str] | None) -> dict[str, float]:
    return {t: k.seconds for t, k in table_retention(version, SETTINGS, vacuum).items()}


def test_each_release_keeps_the_tables_its_services_delete() -> None:
    # 2.20: the event persister trims events only; event_resources grows for ever
    assert kept("2.20.27", None) == {"events": 3 * DAY}
    # 3.x before db_vacuum: events and event_resources by the events retention
    assert kept("3.4.25", None) == {"events": 3 * DAY, "event_resources": 3 * DAY}
    # 3.9 default: db_vacuum enabled for events only
    assert kept("3.9.1", frozenset({"events"})) == {"events": 3 * DAY,
                                                    "event_resources": 3 * DAY}
    # flow runs too: and what hangs off them
    assert kept("3.9.1", frozenset({"events", "flow_runs"})) == {
        "events": 3 * DAY, "event_resources": 3 * DAY, "flow_run": 30 * DAY,
        "task_run": 30 * DAY, "log": 30 * DAY, "artifact": 30 * DAY}
    assert kept("3.9.1", frozenset()) == {}  # db_vacuum enabled: null


def test_the_doctor_names_the_table_its_age_and_how_to_clean_it_for_that_release() -> None:
    pg = healthy_pg(role="prefect_exporter", tables=(
        table("artifact", 10, 0, total_bytes=3 * 1024 ** 3),), oldest_rows=(
        oldest("log", "timestamp", 40 * DAY), oldest("events", "occurred", 2 * DAY),
        oldest("flow_run", "end_time", 10 * DAY), oldest("artifact", "updated", None)))
    by_check: dict[str, list[str]] = {}
    for f in diagnose([pg, prefect_snapshot(version="3.9.1")]):
        by_check.setdefault(f.check, []).append(f"{f.title} | {' / '.join(f.evidence)} | "
                                                f"{f.action}")
    [log] = by_check["table_unretained_rows"]
    assert log.startswith("public.log holds rows 40.0 days old that nothing deletes | "
                          "min(timestamp) is 40.0 days ago / no retention of Prefect 3.9.1 "
                          "deletes log rows | Turn on db_vacuum for flow runs")
    assert "table_retention_backlog" not in by_check  # events within their 7 days
    [grant] = by_check["oldest_rows_unreadable"]
    assert "artifact (3.0 GiB) is unknown" in grant
    assert grant.endswith('GRANT SELECT ("updated") ON public.artifact TO prefect_exporter;')
    # before db_vacuum: by hand, in batches
    [old] = [f for f in diagnose([pg, prefect_snapshot(version="3.4.25", vacuum_kinds=None)])
             if f.check == "table_unretained_rows"]
    assert "db_vacuum came in 3.6.19" in old.action
    assert ('DELETE FROM log WHERE ctid IN (SELECT ctid FROM log WHERE "timestamp" < now() - '
            "interval '30 days' LIMIT 10000)") in old.action
    # no Prefect target: the retention is unknown, said so
    [alone] = [f for f in diagnose([pg]) if f.check == "table_unretained_rows"]
    assert "retention settings are unknown" in alone.evidence[1]


def test_the_ages_are_one_statement_of_min_per_readable_column() -> None:
    sql = ages_sql([oldest("log", "timestamp", None)._replace(readable=True),
                    oldest("events", "occurred", None)._replace(schema='we"ird')])
    assert sql == ("SELECT 0 AS i, date_part('epoch', now() - min(\"timestamp\")) AS age "
                   'FROM "public"."log"\nUNION ALL\n'
                   "SELECT 1 AS i, date_part('epoch', now() - min(\"occurred\")) AS age "
                   'FROM "we""ird"."events"')


def test_small_unread_tables_are_not_worth_a_word() -> None:
    pg = healthy_pg(tables=(table("artifact", 10, 0, total_bytes=50_000_000),),
                    oldest_rows=(oldest("artifact", "updated", None),))
    assert [f for f in diagnose([pg]) if f.check == "oldest_rows_unreadable"] == []
