"""The HTTP server. It only serves: the metrics from memory (/metrics or the telemetry path),
one target's metrics (/probe?target=NAME, for fleets), /healthz, /readyz, /incidents,
/statements and the landing page (rendered by exporter/pages.py)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from exporter.collector import Exposition, gzipped
from exporter.finding import Finding
from exporter.incidents.model import IncidentsReport
from exporter.pages import landing_page
from exporter.poller import SourceState
from exporter.webaccess import install
from exporter.webconfig import WebConfig


def make_app(exposition: Exposition, states: Sequence[SourceState],
             findings: Callable[[], Sequence[Finding]] = list,
             web_config: Callable[[], WebConfig] | None = None,
             telemetry_path: str = "/metrics",
             incidents: Callable[[], IncidentsReport] | None = None,
             statements: Callable[[], Mapping[str, Any]] | None = None) -> web.Application:
    """web_config: the web config of the moment, when a web config file is used (its users,
    headers and client certificate SANs may change while the server runs). incidents: the body
    of /incidents (behind the same access checks as the metrics)."""
    async def metrics(request: web.Request) -> web.Response:
        return exposition_response(request, exposition.body, exposition.gzipped)

    async def probe(request: web.Request) -> web.Response:
        # what was last polled, never a query on scrape: the poller reads every target on its
        # interval whether or not anything probes it
        target = request.query.get("target", "")
        problem = probe_problem(target, [s.target for s in states])
        if problem:
            return web.Response(status=400, text=problem + "\n")
        body = exposition.probe(target)
        return exposition_response(request, body, lambda: gzipped(body))

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
        none: IncidentsReport = {"incidents": []}
        return web.json_response(incidents() if incidents else none)

    app = web.Application()
    if web_config is not None:
        install(app, web_config)
    app.add_routes([web.get(telemetry_path, metrics), web.get("/probe", probe),
                    web.get("/healthz", healthz), web.get("/readyz", readyz),
                    web.get("/", index), web.get("/incidents", incidents_json)])
    app.add_routes([statements_route(statements or (lambda: {"targets": []}))])
    return app


def exposition_response(request: web.Request, body: bytes,
                        gzipped: Callable[[], bytes]) -> web.Response:
    """Metrics in the text format, gzipped when the request accepts it: where /metrics and
    /probe negotiate, once. gzipped: the body compressed (the metrics' is kept per poll)."""
    headers = {"Content-Type": CONTENT_TYPE_LATEST}
    if accepts_gzip(request.headers.get("Accept-Encoding", "")):
        headers["Content-Encoding"] = "gzip"
        body = gzipped()
    return web.Response(body=body, headers=headers)


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
