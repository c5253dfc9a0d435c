"""pg_stat_statements' top N as /statements and the doctor show it, and when it is missing."""

from __future__ import annotations

from exporter.diagnosis import diagnose
from exporter.postgres.snapshot import StatementStats, TopStatements
from exporter.postgres.statements import statements_report, statements_text, total_column
from tests.factories import healthy_pg, prefect_snapshot

TOP = TopStatements(900.0, "read", (StatementStats(-5, 4, 2.0, 8, "SELECT * FROM log"),
                                    StatementStats(7, 0, 0.0, 0, "")))


def test_the_report_has_queryid_fingerprint_calls_total_mean_and_rows() -> None:
    report = statements_report([healthy_pg(top_statements=TOP, database="prefect"),
                                healthy_pg(target="off"), prefect_snapshot()])
    assert report == {"targets": [{
        "target": "db", "database": "prefect", "status": "read", "read_at": 900.0,
        "statements": [
            {"queryid": "-5", "fingerprint": "SELECT * FROM log", "calls": 4,
             "total_seconds": 2.0, "mean_seconds": 0.5, "rows": 8},
            {"queryid": "7", "fingerprint": "", "calls": 0, "total_seconds": 0.0,
             "mean_seconds": 0.0, "rows": 0}]}]}
    text = statements_text(report)
    assert "1. 2.000s in 4 call(s), mean 500.00 ms, 8 rows, queryid -5: SELECT * FROM log" in text
    assert "queryid 7: (text unknown)" in text
    assert statements_text({"targets": []}) == ""


def test_the_total_time_column_follows_the_extension_version() -> None:
    assert [total_column(v) for v in ("1.4", "1.7", "1.8", "1.10", "2.0", "odd")] == [
        "total_time", "total_time", "total_exec_time", "total_exec_time", "total_exec_time",
        "total_exec_time"]


def test_an_info_finding_says_how_to_enable_it() -> None:
    def found(top: TopStatements | None) -> list[tuple[str, str]]:
        return [(f.severity, f.action) for f in diagnose([healthy_pg(top_statements=top)])
                if f.check == "pg_stat_statements_unavailable"]

    [(severity, action)] = found(TopStatements(1.0, "not installed"))
    assert severity == "info" and "CREATE EXTENSION pg_stat_statements" in action
    [(_, action)] = found(TopStatements(1.0, "not loaded"))
    assert "shared_preload_libraries" in action
    assert found(TOP) == [] and found(None) == []  # read, or not asked for (--no-statements)
