"""The metric catalogue: every metric the exporter exposes, gathered from the modules that emit
them (exporter/health.py and each source kind's metrics module), in one place.

`docs/metrics.md` is generated from it, and the tests check the live exposition, the dashboards
and the alert rules against it.

    python -m exporter.catalogue > docs/metrics.md
"""

from __future__ import annotations

from exporter import health
from exporter.kinds import KINDS
from exporter.metricspec import MetricSpec

SPECS: tuple[MetricSpec, ...] = (*health.SPECS, *(s for kind in KINDS for s in kind.specs))
CATALOGUE: dict[str, MetricSpec] = {s.name: s for s in SPECS}


def render_markdown() -> str:
    """The catalogue as the Markdown page docs/metrics.md (a test keeps that file in sync)."""
    lines = [
        "# Metric catalogue",
        "",
        "Generated from the metric specs (`exporter/health.py`, `exporter/<kind>/metrics.py`) "
        "by `python -m exporter.catalogue`; do not edit by hand.",
        "Every per-target series carries `target`, the name of the configured target.",
        "",
    ]
    for source in ("exporter", *(kind.name for kind in KINDS)):
        specs = [s for s in SPECS if s.source == source]
        if not specs:
            continue
        lines += [f"## {source}", "", "| metric | type | labels | meaning |", "|---|---|---|---|"]
        for s in specs:
            labels = ", ".join(f"`{label}`" for label in s.labels)
            lines.append(f"| `{s.name}` | {s.type} | {labels} | {s.help} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(render_markdown(), end="")
