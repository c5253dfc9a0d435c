"""The Prefect client without a server: CSRF tokens as Prefect's own client handles them, and
the headers it sends. A fake server in memory plays Prefect's CsrfMiddleware and
/csrf-token (the real ones are in tests/lab/test_prefect_versions_lab.py)."""

from __future__ import annotations

import asyncio
import base64
import time
from collections import Counter
from datetime import UTC, datetime

import httpx
import pytest

from exporter.prefect.client import CSRF_REFRESH_MARGIN_SECONDS, PrefectClient
from exporter.prefect.config import PrefectAuth
from exporter.source import SourceError


class FakePrefect:
    """Prefect's CSRF behaviour: POSTs need the client's current token when protection is
    on; GET /csrf-token upserts a token for the client (rotating the old one), or answers 422
    when protection is off."""

    def __init__(self, csrf: bool, lifetime: float = 3600.0) -> None:
        self.csrf = csrf
        self.lifetime = lifetime
        self.tokens: dict[str, tuple[str, float]] = {}
        self.calls: Counter[str] = Counter()
        self.seen_headers: list[httpx.Headers] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path.removeprefix("/api/")
        self.calls[f"{request.method} {path}"] += 1
        self.seen_headers.append(request.headers)
        if path == "csrf-token":
            if not self.csrf:
                return httpx.Response(422, json={"detail": "CSRF protection is disabled."})
            client = request.url.params["client"]
            token = f"token-{self.calls['GET csrf-token']}"
            expires = time.time() + self.lifetime
            self.tokens[client] = (token, expires)
            return httpx.Response(200, json={
                "token": token, "client": client,
                "expiration": datetime.fromtimestamp(expires, UTC).isoformat()})
        if self.csrf and request.method == "POST":
            token = request.headers.get("Prefect-Csrf-Token")
            client = request.headers.get("Prefect-Csrf-Client")
            if token is None:
                return httpx.Response(403, json={"detail": "Missing CSRF token."})
            if client is None:
                return httpx.Response(403, json={"detail": "Missing client identifier."})
            if self.tokens.get(client, ("", 0.0))[0] != token or \
                    self.tokens[client][1] < time.time():
                return httpx.Response(
                    403, json={"detail": "Invalid CSRF token or client identifier."})
        return httpx.Response(200, json=3)


def client_for(server: FakePrefect, auth: PrefectAuth | None = None,
               headers: dict[str, str] | None = None) -> PrefectClient:
    return PrefectClient("http://prefect:4200/api", auth=auth or PrefectAuth(), timeout=5,
                         headers=headers, transport=httpx.MockTransport(server.handle))


async def counts(client: PrefectClient, n: int = 5) -> list[int]:
    return list(await asyncio.gather(*(client.count("flow_runs", {}) for _ in range(n))))


async def test_protection_off_costs_one_request_in_the_clients_life() -> None:
    server = FakePrefect(csrf=False)
    client = client_for(server)
    for _ in range(3):  # three polls
        assert await counts(client) == [3] * 5
    assert server.calls["GET csrf-token"] == 1
    assert client.requests["/csrf-token"].count == 1
    assert not any("Prefect-Csrf-Token" in h for h in server.seen_headers)


async def test_protection_on_one_token_for_concurrent_posts_and_reused() -> None:
    server = FakePrefect(csrf=True)
    client = client_for(server)
    assert await counts(client) == [3] * 5
    assert await counts(client) == [3] * 5
    assert server.calls["GET csrf-token"] == 1
    posts = [h for h in server.seen_headers if "Prefect-Csrf-Token" in h]
    assert len(posts) == 10
    assert {h["Prefect-Csrf-Client"] for h in posts} == {client.csrf.client_id}
    assert client.requests["/flow_runs/count"].errors == 0


async def test_without_the_token_logic_the_server_refuses() -> None:
    server = FakePrefect(csrf=True)
    client = client_for(server)
    client.csrf.enabled = False  # what the exporter did before: never ask for a token
    client.csrf.refused = lambda sent: None  # type: ignore[method-assign]
    with pytest.raises(SourceError, match="403 Forbidden: the server refused the CSRF token"):
        await client.count("flow_runs", {})


async def test_token_fetched_again_before_it_expires() -> None:
    server = FakePrefect(csrf=True, lifetime=CSRF_REFRESH_MARGIN_SECONDS + 30)
    client = client_for(server)
    await counts(client, 1)
    await counts(client, 1)
    assert server.calls["GET csrf-token"] == 1  # 30 s of life left beyond the margin
    assert client.csrf.expires is not None
    client.csrf.expires -= 31  # now within the margin: a new one before the POST
    await counts(client, 1)
    assert server.calls["GET csrf-token"] == 2
    assert client.requests["/flow_runs/count"].errors == 0  # never refused


async def test_a_rotated_token_is_fetched_again_and_the_post_retried_once() -> None:
    server = FakePrefect(csrf=True)
    client = client_for(server)
    await counts(client, 1)
    server.tokens.clear()  # e.g. the server's database was restored, or the token expired
    assert await counts(client) == [3] * 5
    assert server.calls["GET csrf-token"] == 2  # one more, however many POSTs were refused
    stats = client.requests["/flow_runs/count"]
    assert 1 <= stats.errors <= 5  # the refused first attempts, each retried once
    assert stats.count == 1 + stats.errors + 5


async def test_protection_turned_on_after_the_server_said_off() -> None:
    server = FakePrefect(csrf=False)
    client = client_for(server)
    await counts(client, 1)
    server.csrf = True  # restarted with PREFECT_SERVER_CSRF_PROTECTION_ENABLED=true
    assert await counts(client, 1) == [3]
    assert server.calls["GET csrf-token"] == 2


async def test_token_endpoint_errors_are_one_line() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("csrf-token"):
            return httpx.Response(401, json={"exception_message": "Unauthorized"})
        return httpx.Response(403, json={"detail": "Missing CSRF token."})

    client = PrefectClient("http://prefect:4200/api", auth=PrefectAuth(auth_string="a:pw"),
                           timeout=5, transport=httpx.MockTransport(refuse))
    with pytest.raises(SourceError, match="GET /csrf-token: HTTP 401") as info:
        await client.count("flow_runs", {})
    assert info.value.reason == "connect" and "pw" not in str(info.value)


@pytest.mark.parametrize(("auth", "headers", "expected"), [
    (PrefectAuth(api_key="pnu_k"), {}, "Bearer pnu_k"),
    (PrefectAuth(auth_string="admin:pw"), {},
     "Basic " + base64.b64encode(b"admin:pw").decode()),
    # a custom Authorization replaces the credential's, as in Prefect's client
    (PrefectAuth(api_key="pnu_k"), {"Authorization": "Bearer proxy"}, "Bearer proxy"),
])
async def test_authorization_header(auth: PrefectAuth, headers: dict[str, str],
                                    expected: str) -> None:
    server = FakePrefect(csrf=False)
    client = client_for(server, auth=auth, headers={**headers, "X-Team": "data"})
    await counts(client, 1)
    sent = server.seen_headers[-1]
    assert sent["Authorization"] == expected
    assert sent["X-Team"] == "data" and sent["User-Agent"] == "prefect-pg-exporter"


async def test_prefect_cloud_is_never_asked_for_a_token() -> None:
    server = FakePrefect(csrf=False)
    client = PrefectClient("https://api.prefect.cloud/api/accounts/a/workspaces/w",
                           auth=PrefectAuth(api_key="pnu_k"), timeout=5,
                           transport=httpx.MockTransport(server.handle))
    assert await counts(client, 2) == [3, 3]
    assert server.calls["GET csrf-token"] == 0


async def test_a_server_without_the_token_endpoint_is_not_asked_again() -> None:
    calls: Counter[str] = Counter()

    def old_server(request: httpx.Request) -> httpx.Response:  # before 2.16.5: no endpoint
        calls[request.url.path] += 1
        if request.url.path.endswith("csrf-token"):
            return httpx.Response(404, json={"detail": "Not Found"})
        return httpx.Response(200, json=3)

    client = PrefectClient("http://prefect:4200/api", auth=PrefectAuth(), timeout=5,
                           transport=httpx.MockTransport(old_server))
    for _ in range(2):
        assert await counts(client, 2) == [3, 3]
    assert calls["/api/csrf-token"] == 1
