"""A reverse proxy on loopback that counts the requests it forwards: how many requests a
third-party exporter's scrape costs the Prefect API."""

from __future__ import annotations

import re
from collections import Counter

import httpx
from aiohttp import web

from lab.common import free_port

_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class CountingProxy:
    """A reverse proxy on loopback that counts the requests it forwards, by method and path."""

    def __init__(self, upstream: str, timeout: float) -> None:
        self.upstream = upstream.rstrip("/")
        self.counts: Counter[str] = Counter()
        self.port = free_port()
        self._client = httpx.AsyncClient(timeout=timeout)
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def _forward(self, request: web.Request) -> web.Response:
        self.counts[f"{request.method} {_ID.sub('{id}', request.path)}"] += 1
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() in ("content-type", "accept", "authorization")}
        upstream = await self._client.request(request.method, self.upstream + request.path_qs,
                                              content=await request.read(), headers=headers)
        return web.Response(status=upstream.status_code, body=upstream.content, headers={
            "Content-Type": upstream.headers.get("content-type", "application/json")})

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        await self._client.aclose()
