"""The HTTP server. It only serves: the metrics from memory (/metrics or the telemetry path),
one target's metrics (/probe?target=NAME, for fleets), /healthz, /readyz and a landing page."""

from __future__ import annotations

import gzip
import html
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import quote

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from exporter import __version__
from exporter.collector import Exposition
from exporter.finding import Finding
from exporter.incidents.render import incidents_html
from exporter.poller import SourceState
from exporter.roots import roots
from exporter.webaccess import install
from exporter.webconfig import WebConfig


def make_app(exposition: Exposition, states: Sequence[SourceState],
             findings: Callable[[], Sequence[Finding]] = list,
             web_config: Callable[[], WebConfig] | None = None,
             telemetry_path: str = "/metrics",
             incidents: Callable[[], Mapping[str, Any]] | None = None,
             statements: Callable[[], Mapping[str, Any]] | None = None) -> web.Application:
    """web_config: the web config of the moment, when a web config file is used (its users,
    headers and client certificate SANs may change while the server runs). incidents: the body
    of /incidents (behind the same access checks as the metrics)."""
    async def metrics(request: web.Request) -> web.Response:
        headers = {"Content-Type": CONTENT_TYPE_LATEST}
        body = exposition.body
        if accepts_gzip(request.headers.get("Accept-Encoding", "")):
            headers["Content-Encoding"] = "gzip"
            body = exposition.gzipped()
        return web.Response(body=body, headers=headers)

    async def probe(request: web.Request) -> web.Response:
        # what was last polled, never a query on scrape: the poller reads every target on its
        # interval whether or not anything probes it
        target = request.query.get("target", "")
        problem = probe_problem(target, [s.target for s in states])
        if problem:
            return web.Response(status=400, text=problem + "\n")
        body = exposition.probe(target)
        headers = {"Content-Type": CONTENT_TYPE_LATEST}
        if accepts_gzip(request.headers.get("Accept-Encoding", "")):
            headers["Content-Encoding"] = "gzip"
            body = gzip.compress(body, compresslevel=3)
        return web.Response(body=body, headers=headers)

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        waiting = [f"{s.kind}/{s.target}" for s in states if not s.last_success]
        if waiting:
            return web.Response(status=503, text=not_ready(waiting, len(states), web_config))
        return web.Response(text="ready\n")

    async def index(_: web.Request) -> web.Response:
        recent = incidents()["incidents"] if incidents else None
        return web.Response(text=landing_page(states, findings(), telemetry_path=telemetry_path,
                                              incidents=recent),
                            content_type="text/html")

    async def incidents_json(_: web.Request) -> web.Response:
        return web.json_response(incidents() if incidents else {"incidents": []})

    app = web.Application()
    if web_config is not None:
        install(app, web_config)
    app.add_routes([web.get(telemetry_path, metrics), web.get("/probe", probe),
                    web.get("/healthz", healthz), web.get("/readyz", readyz),
                    web.get("/", index), web.get("/incidents", incidents_json)])
    app.add_routes([statements_route(statements or (lambda: {"targets": []}))])
    return app


def not_ready(waiting: Sequence[str], total: int,
              web_config: Callable[[], WebConfig] | None) -> str:
    """/readyz's 503 body. It stays open to probes, so behind basic auth or client certificates
    it says how many targets wait, not their names (those are on /, behind the same checks)."""
    config = web_config() if web_config is not None else None
    if config is not None and (config.users or config.allowed_sans):
        return f"not ready: {len(waiting)} of {total} targets never polled successfully\n"
    return "not ready, never polled successfully: " + ", ".join(waiting) + "\n"


def statements_route(report: Callable[[], Mapping[str, Any]]) -> web.RouteDef:
    """/statements: the slowest statements of each PostgreSQL target, as last read (fingerprints
    only, never raw text), behind the same access checks as the metrics."""
    async def statements_json(_: web.Request) -> web.Response:
        return web.json_response(report())

    return web.get("/statements", statements_json)


def probe_problem(target: str, configured: Sequence[str]) -> str:
    """Why /probe cannot answer for this target ('' when it can)."""
    known = ", ".join(sorted(set(configured))) or "none"
    if not target:
        return f"/probe needs ?target=NAME, one of the configured targets: {known}"
    if target not in configured:
        return (f"unknown target {target!r}: /probe serves only configured targets "
                f"(it never connects on scrape): {known}")
    return ""


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether an Accept-Encoding header admits gzip (RFC 9110, 12.5.3): named, or by `*`, with
    a weight above 0. prometheus_client's gzip_accepted() ignores the weight, so `gzip;q=0`
    (gzip refused) would be answered gzipped; and a substring test would take `x-gzip`."""
    weights: dict[str, float] = {}
    for item in accept_encoding.split(","):
        coding, *params = (part.strip() for part in item.split(";"))
        weight = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    weight = float(value)
                except ValueError:
                    weight = 0.0
        if coding:
            weights[coding.lower()] = weight
    return weights.get("gzip", weights.get("*", 0.0)) > 0


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
                 incidents: Sequence[Mapping[str, Any]] | None = None) -> str:
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
