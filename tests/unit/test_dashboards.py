"""The generated dashboards: committed as generated, and using only catalogued metrics (the lab
test tests/lab/test_live_alerts.py runs every panel query against a real Prometheus)."""

from __future__ import annotations

import re
from pathlib import Path

from exporter import alerting, dashboards


def test_dashboards_and_rules_use_only_exported_metrics() -> None:
    from exporter.catalogue import CATALOGUE

    known = set(CATALOGUE) | {name for name, _ in alerting.RECORDING_RULES}
    for board, title, expr in dashboards.panel_queries():
        unquoted = re.sub(r'"[^"]*"', '""', expr)  # label values are not metric names
        names = set(re.findall(r"\b((?:postgres|pgbouncer|prefect)[a-z0-9_:]*)\b", unquoted))
        unknown = names - known
        assert not unknown, f"{board}/{title} uses {unknown}"


def test_committed_dashboards_are_generated() -> None:
    root = Path(__file__).resolve().parents[2] / "dashboards"
    for name, text in dashboards.render_all().items():
        assert (root / name).read_text() == text, \
            f"regenerate: python -m exporter.dashboards dashboards ({name})"
