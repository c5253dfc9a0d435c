"""The generated dashboards: committed as generated, and using only catalogued metrics (the lab
test tests/lab/test_live_alerts.py runs every panel query against a real Prometheus)."""

from __future__ import annotations

import re
from pathlib import Path

from exporter import alerting, dashboards


def test_dashboards_and_rules_use_only_exported_metrics() -> None:
    from exporter.catalogue import CATALOGUE

    known = set(CATALOGUE) | {name for name, _ in alerting.RECORDING_RULES}
    known |= set(dashboards.PREFECT_OWN_METRICS)  # Prefect's /api/metrics, scraped beside
    for board, title, expr in dashboards.panel_queries():
        unquoted = re.sub(r'"[^"]*"', '""', expr)  # label values are not metric names
        names = set(re.findall(r"\b((?:postgres|pgbouncer|prefect|redis)[a-z0-9_:]*)\b",
                               unquoted))
        unknown = names - known
        assert not unknown, f"{board}/{title} uses {unknown}"


def test_committed_dashboards_are_generated() -> None:
    root = Path(__file__).resolve().parents[2] / "dashboards"
    for name, text in dashboards.render_all().items():
        assert (root / name).read_text() == text, \
            f"regenerate: scripts/generate ({name})"


def test_dashboards_take_their_thresholds_and_runbook_link_from_the_one_place() -> None:
    from exporter.thresholds import THRESHOLDS

    board = dashboards.dashboard("overview", "t", dashboards.OVERVIEW)
    budget = next(p for p in board["panels"] if p["title"] == "Connection budget used")
    steps = [s["value"] for s in budget["fieldConfig"]["defaults"]["thresholds"]["steps"]]
    assert steps == [None, THRESHOLDS["connections_warning_ratio"].default,
                     THRESHOLDS["connections_critical_ratio"].default]
    idle = next(p for p in board["panels"] if p["title"] == "Oldest idle in transaction")
    steps = [s["value"] for s in idle["fieldConfig"]["defaults"]["thresholds"]["steps"]]
    assert steps == [None, THRESHOLDS["idle_in_transaction_warning_seconds"].default,
                     THRESHOLDS["idle_in_transaction_critical_seconds"].default]
    assert board["links"][0]["url"] == alerting.RUNBOOK_BASE_URL
