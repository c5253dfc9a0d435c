"""The catalogue is the one list of metrics: names follow Prometheus conventions, docs match."""

from __future__ import annotations

import re
from pathlib import Path

from exporter.catalogue import SPECS, render_markdown

ROOT = Path(__file__).resolve().parent.parent


def test_docs_metrics_md_is_generated_from_the_catalogue() -> None:
    committed = (ROOT / "docs" / "metrics.md").read_text()
    assert committed == render_markdown(), \
        "regenerate: .venv/bin/python -m exporter.catalogue > docs/metrics.md"


def test_names_follow_prometheus_conventions() -> None:
    names = [s.name for s in SPECS]
    assert len(names) == len(set(names))
    for spec in SPECS:
        assert re.fullmatch(r"[a-z][a-z0-9_]*", spec.name), spec.name
        assert (spec.kind == "counter") == spec.name.endswith("_total"), spec.name
        assert not re.search(r"_(ms|milliseconds|minutes|us)$", spec.name), spec.name
        if "age" in spec.name or "wait" in spec.name or "duration" in spec.name:
            assert spec.name.endswith("_seconds") or spec.name.endswith("_sessions") \
                or spec.name.endswith("_connections"), spec.name
        if spec.source != "exporter" and spec.name != "prefect_pg_exporter_build_info":
            assert "target" in spec.labels, spec.name
        assert spec.help.strip() and spec.labels == tuple(dict.fromkeys(spec.labels))
