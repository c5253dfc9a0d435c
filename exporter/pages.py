"""The pages people read, rendered as HTML: the landing page (the sources, the root causes,
the findings and the recent incidents). Pure: states, findings and incidents in, text out;
everything shown is escaped. exporter/server.py serves it."""

from __future__ import annotations

import html
import time
from collections.abc import Sequence
from urllib.parse import quote

from exporter import __version__
from exporter.finding import Finding
from exporter.incidents.model import IncidentView
from exporter.incidents.render import incidents_html
from exporter.poller import SourceState
from exporter.roots import roots


def _roots_html(findings: Sequence[Finding]) -> str:
    """The root causes first, each once, with what each causes across the layers."""
    found = roots(findings)
    if not found:
        return ""
    items = []
    for root in found:
        causes = "".join(f"<li>{html.escape(f.title)} <small>({html.escape(f.check)}, "
                         f"{html.escape(f.target)})</small></li>"
                         for f in (*root.symptoms, *root.meanwhile))
        items.append(f"<li><b class={root.severity}>{root.severity.upper()}</b> "
                     f"{html.escape(str(root.cause))} on PostgreSQL "
                     f"{html.escape(root.cause.target)}<ul>{causes}</ul></li>")
    return f"<h2>Root causes</h2><ol>{''.join(items)}</ol>"


def _findings_html(findings: Sequence[Finding]) -> str:
    if not findings:
        return "<p>No findings: nothing wrong seen.</p>"
    items = []
    for f in findings:
        evidence = "".join(f"<li>{html.escape(e)}</li>" for e in f.evidence)
        items.append(f"<li><b class={f.severity}>{f.severity.upper()}</b> "
                     f"{html.escape(f.title)} <small>({html.escape(f.check)}, "
                     f"{html.escape(f.target)})</small><ul>{evidence}"
                     f"<li>do: {html.escape(f.action)}</li></ul></li>")
    return f"<ol>{''.join(items)}</ol>"


def landing_page(states: Sequence[SourceState], findings: Sequence[Finding] = (),
                 now: float | None = None, telemetry_path: str = "/metrics",
                 incidents: Sequence[IncidentView] | None = None) -> str:
    """incidents: None leaves the section out (no recorder)."""
    now = time.time() if now is None else now
    first_target = states[0].target if states else ""
    rows = []
    for s in states:
        state = "up" if s.up else "down"
        last = f"{now - s.last_success:.1f}s ago" if s.last_success else "never"
        rows.append(f"<tr><td>{html.escape(s.kind)}</td><td>{html.escape(s.target)}</td>"
                    f"<td class={state}>{state}</td><td>{last}</td>"
                    f"<td>{html.escape(s.shown)}</td>"
                    f"<td>{html.escape(s.last_error)}</td></tr>")
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>prefect-pg-exporter</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:.3em .8em;text-align:left}}
.up{{color:#1a7f37}}.down,.critical{{color:#cf222e;font-weight:bold}}
.warning{{color:#9a6700}}.info{{color:#0969da}}</style></head>
<body><h1>prefect-pg-exporter {html.escape(__version__)}</h1>
<p><a href="{html.escape(telemetry_path)}">{html.escape(telemetry_path)}</a> ·
<a href="/probe?target={html.escape(quote(first_target))}">/probe?target=NAME</a> ·
<a href="/healthz">/healthz</a> ·
<a href="/readyz">/readyz</a> ·
<a href="/incidents">/incidents</a> ·
<a href="/statements">/statements</a></p>
<h2>Sources</h2>
<p>Shown (on /metrics and below): what each source's last poll read. After a failed poll, only
what it read before failing (Prefect: /api/health and /api/ready); the rest is absent, not old.</p>
<table><tr><th>source</th><th>target</th><th>state</th><th>last success</th><th>shown</th>
<th>last error</th></tr>
{"".join(rows)}
</table>
{_roots_html(findings)}
<h2>Findings</h2>
{_findings_html(findings)}
{"" if incidents is None else "<h2>Recent incidents</h2>" + incidents_html(incidents)}
</body></html>
"""
