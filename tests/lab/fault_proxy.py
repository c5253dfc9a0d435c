"""A reverse proxy in front of the real lab Prefect server that injects the faults a real server
will not produce on demand: answers slower than the exporter's timeout, HTTP 500, malformed JSON.
In "pass" mode it forwards every request unchanged, so recovery is tested against the real thing.
"""

from __future__ import annotations

import asyncio
import contextlib

import httpx
from aiohttp import web

MODES = ("pass", "slow", "error", "garbage")


class FaultProxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.mode = "pass"
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._client = httpx.AsyncClient(timeout=30)
        # set by stop(): a request held in "slow" mode is let go at once rather than have the
        # shutdown wait out its seconds (the exporter that sent it is gone by then)
        self._closing = asyncio.Event()

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    async def _handle(self, request: web.Request) -> web.Response:
        if self.mode == "slow":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), 5)
            if self._closing.is_set():
                return web.Response(status=503, text="proxy stopping")
        if self.mode == "error":
            return web.Response(status=500, text="Internal Server Error")
        if self.mode == "garbage":
            return web.Response(status=200, text="<html>not json", content_type="application/json")
        upstream = await self._client.request(
            request.method, self.upstream + request.path_qs.removeprefix("/api"),
            content=await request.read(),
            headers={k: v for k, v in request.headers.items()
                     if k.lower() not in ("host", "content-length")})
        return web.Response(status=upstream.status_code, body=upstream.content,
                            content_type=upstream.headers.get("content-type", "application/json")
                            .split(";")[0])

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        self._closing.set()
        if self._runner is not None:  # first stop serving, then close the upstream client
            await self._runner.cleanup()
        await self._client.aclose()
