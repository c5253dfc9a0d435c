"""The catalogue is the one list of metrics: names follow Prometheus conventions, docs match."""

from __future__ import annotations

import re
from pathlib import Path

from exporter.catalogue import SPECS, render_markdown

ROOT = Path(__file__).resolve().parents[2]


def test_docs_metrics_md_is_generated_from_the_catalogue() -> None:
    committed = (ROOT / "docs" / "metrics.md").read_text()
    assert committed == render_markdown(), \
        "regenerate: scripts/generate"


def test_names_follow_prometheus_conventions() -> None:
    names = [s.name for s in SPECS]
    assert len(names) == len(set(names))
    for spec in SPECS:
        assert re.fullmatch(r"[a-z][a-z0-9_]*", spec.name), spec.name
        assert (spec.type == "counter") == spec.name.endswith("_total"), spec.name
        assert not re.search(r"_(ms|milliseconds|minutes|us)$", spec.name), spec.name
        base = spec.name.removesuffix("_total")
        # words, not letters: redis_exporter's messages_pending holds no age
        if re.search(r"(^|_)(age|max_?wait|wait\w*|duration)(_|$)", base):
            assert base.endswith(("_seconds", "_sessions", "_connections")), spec.name
        if spec.source != "exporter" and spec.name != "prefect_pg_exporter_build_info":
            assert "target" in spec.labels, spec.name
        assert spec.help.strip() and spec.labels == tuple(dict.fromkeys(spec.labels))


def test_readme_documents_every_setting() -> None:
    from exporter.config import SETTINGS

    readme = (ROOT / "README.md").read_text()
    for setting in SETTINGS:
        assert f"`{setting.env}`" in readme, setting.env
        assert f"`{setting.flag}`" in readme, setting.flag
        if setting.toolkit_flag:
            assert f"`{setting.toolkit_flag}`" in readme, setting.toolkit_flag
        if setting.secret:
            assert f"`{setting.env}_FILE`" in readme, setting.env + "_FILE"
    assert "`PREFECT_PG_EXPORTER_THRESHOLDS`" in readme and "`--set NAME=VALUE`" in readme
