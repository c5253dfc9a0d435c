"""A Prefect API whose answer has no end: the client reads at most MAX_ANSWER_BYTES, decoded.

The server is a fake on loopback (aiohttp): a real Prefect cannot be made to send an unbounded
answer, but a proxy in front of it, or a server that ignores the page limit, can."""

from __future__ import annotations

import gzip
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from exporter.prefect import client as prefect_client
from exporter.prefect.client import PrefectClient
from exporter.prefect.config import PrefectAuth
from exporter.source import SourceError

LIMIT = 1024 * 1024  # the test's cap: 1 MiB, so that "too large" is a few MiB
CHUNK = b"[" + b"0," * 32_767 + b"0]"  # 64 KiB, a JSON list


async def declared(_: web.Request) -> web.Response:  # Content-Length says it first
    return web.Response(body=b"[" + b"0," * (2 * LIMIT) + b"0]", content_type="application/json")


async def endless(request: web.Request) -> web.StreamResponse:  # chunked, never ends
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    await response.prepare(request)
    try:
        while True:
            await response.write(CHUNK)
    except (ConnectionResetError, RuntimeError):  # the client went away
        pass
    return response


async def bomb(_: web.Request) -> web.Response:  # 8 MiB of zeros in a few kB of gzip
    return web.Response(body=gzip.compress(b"0" * (8 * LIMIT)),
                        headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})


async def fine(_: web.Request) -> web.Response:
    return web.json_response(7)


@pytest.fixture
async def server_url(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[str]:
    monkeypatch.setattr(prefect_client, "MAX_ANSWER_BYTES", LIMIT)
    app = web.Application()
    app.add_routes([web.post("/api/declared/count", declared),
                    web.post("/api/endless/count", endless),
                    web.post("/api/bomb/count", bomb),
                    web.post("/api/fine/count", fine),
                    web.get("/api/health", endless)])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}/api"
    finally:
        await runner.cleanup()


def make_client(url: str) -> PrefectClient:
    client = PrefectClient(url, auth=PrefectAuth(), timeout=10.0)
    client.csrf.enabled = False
    return client


@pytest.mark.parametrize("what", ["declared", "endless", "bomb"])
async def test_an_answer_past_the_cap_fails_the_request_not_the_exporter(
        server_url: str, what: str) -> None:
    client = make_client(server_url)
    try:
        with pytest.raises(SourceError) as failed:
            await client.count(what, {})
        assert failed.value.reason == "query"
        assert str(failed.value) == f"POST /{what}/count: answer larger than 1 MiB, not read"
        assert client.requests[f"/{what}/count"].errors == 1
        assert await client.count("fine", {}) == 7  # the same client goes on
    finally:
        await client.close()


async def test_a_probe_with_an_endless_answer_is_a_failed_probe(server_url: str) -> None:
    client = make_client(server_url)
    try:
        ok, seconds = await client.probe("health", timeout=5.0)
        assert not ok and seconds < 5.0
    finally:
        await client.close()
