"""The HTTP server. It only serves: /metrics from memory, /healthz, /readyz and a landing page."""

from __future__ import annotations

import html
import time
from collections.abc import Sequence

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from exporter import __version__
from exporter.collector import Exposition
from exporter.poller import SourceState


def make_app(exposition: Exposition, states: Sequence[SourceState]) -> web.Application:
    async def metrics(request: web.Request) -> web.Response:
        headers = {"Content-Type": CONTENT_TYPE_LATEST}
        body = exposition.body
        if "gzip" in request.headers.get("Accept-Encoding", ""):
            headers["Content-Encoding"] = "gzip"
            body = exposition.gzipped()
        return web.Response(body=body, headers=headers)

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        waiting = [f"{s.kind}/{s.target}" for s in states if not s.last_success]
        if waiting:
            return web.Response(status=503, text="not ready, never polled successfully: "
                                + ", ".join(waiting) + "\n")
        return web.Response(text="ready\n")

    async def index(_: web.Request) -> web.Response:
        return web.Response(text=landing_page(states), content_type="text/html")

    app = web.Application()
    app.add_routes([web.get("/metrics", metrics), web.get("/healthz", healthz),
                    web.get("/readyz", readyz), web.get("/", index)])
    return app


def landing_page(states: Sequence[SourceState], now: float | None = None) -> str:
    now = time.time() if now is None else now
    rows = []
    for s in states:
        state = "up" if s.up else "down"
        last = f"{now - s.last_success:.1f}s ago" if s.last_success else "never"
        rows.append(f"<tr><td>{html.escape(s.kind)}</td><td>{html.escape(s.target)}</td>"
                    f"<td class={state}>{state}</td><td>{last}</td>"
                    f"<td>{html.escape(s.last_error)}</td></tr>")
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>prefect-pg-exporter</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:.3em .8em;text-align:left}}
.up{{color:#1a7f37}}.down{{color:#cf222e;font-weight:bold}}</style></head>
<body><h1>prefect-pg-exporter {html.escape(__version__)}</h1>
<p><a href="/metrics">/metrics</a> · <a href="/healthz">/healthz</a> ·
<a href="/readyz">/readyz</a></p>
<h2>Sources</h2>
<table><tr><th>source</th><th>target</th><th>state</th><th>last success</th><th>last error</th></tr>
{"".join(rows)}
</table></body></html>
"""
