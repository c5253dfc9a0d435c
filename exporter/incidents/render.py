"""Recent incidents as people read them: a section of the landing page, and text for
`doctor --since`. Everything shown is escaped; statements are fingerprints already. The page
shows this process's incidents (typed, from the tracker); the doctor's text, another process's
(JSON read from its /incidents, so read defensively: a field may be missing)."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

from exporter.finding import age
from exporter.incidents.model import IncidentView


def _value(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _when(incident: Mapping[str, Any]) -> str:
    ended = incident.get("ended_at") or "ongoing"
    return (f"{incident.get('began_at')} → {ended} "
            f"({age(incident.get('duration_seconds'))})")


def _occurrences(incident: Mapping[str, Any]) -> str:
    n = incident.get("occurrences", 1)
    return f", {n} occurrences" if n and n > 1 else ""


def incidents_html(incidents: Sequence[IncidentView]) -> str:
    if not incidents:
        return "<p>No incident recorded since the exporter started.</p>"
    items = []
    for i in incidents:
        evidence = "".join(f"<li>{html.escape(k)}: {html.escape(_value(v))}</li>"
                           for k, v in i.get("evidence", {}).items())
        severity = html.escape(str(i.get("severity", "")))
        items.append(
            f"<li><b class={severity}>{severity.upper()}</b> {html.escape(str(i.get('title')))} "
            f"<small>({html.escape(str(i.get('kind')))}, {html.escape(str(i.get('target')))}"
            f"{_occurrences(i)})</small><br>{html.escape(_when(i))}<ul>{evidence}</ul></li>")
    return f"<ol>{''.join(items)}</ol>"


def incidents_text(incidents: Sequence[Mapping[str, Any]]) -> str:
    lines = []
    for n, i in enumerate(incidents, start=1):
        lines.append(f"{n}. [{str(i.get('severity', '')).upper()}] {i.get('title')}  "
                     f"({i.get('kind')}, {i.get('target')}{_occurrences(i)})")
        lines.append(f"     when: {_when(i)}")
        lines += [f"     {k}: {_value(v)}" for k, v in i.get("evidence", {}).items()]
        lines.append("")
    return "\n".join(lines) + ("\n" if lines else "")
