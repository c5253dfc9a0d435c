"""The Prefect REST API, as the exporter calls it: one httpx client per target, credentials,
a cap on requests in flight, and an account of every request by endpoint (exported as
prefect_api_requests_total and friends).

Every answer is checked here: an HTTP error becomes a SourceError that names the endpoint (and,
for 401/403, the setting to check); a body that is not JSON too. Transport errors (timeouts,
refused connections) propagate as httpx errors; the source translates them.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from typing import Any, overload

import httpx

from exporter.config import PrefectAuth
from exporter.prefect.snapshot import RequestStats
from exporter.source import SourceError

USER_AGENT = "prefect-pg-exporter"
# Endpoints a server may not offer (Prefect Cloud has no /admin/settings): answered as None.
ABSENT = (403, 404, 405)


class PrefectClient:
    def __init__(self, api_url: str, *, auth: PrefectAuth, timeout: float,
                 headers: Mapping[str, str] | None = None, verify: bool | str = True,
                 max_concurrency: int = 4) -> None:
        self.url = api_url.rstrip("/")
        self.auth = auth
        self._timeout = timeout
        self._headers = dict(headers or {})
        self._verify = verify
        self._limit = asyncio.Semaphore(max_concurrency)
        self._max_concurrency = max_concurrency
        self._client: httpx.AsyncClient | None = None
        self.requests: dict[str, RequestStats] = {}

    def _make_client(self) -> httpx.AsyncClient:
        headers = {"User-Agent": USER_AGENT, **self._headers}
        auth: httpx.Auth | None = None
        if self.auth.api_key:
            headers["Authorization"] = f"Bearer {self.auth.api_key}"
        elif self.auth.auth_string:
            user, _, password = self.auth.auth_string.partition(":")
            auth = httpx.BasicAuth(user, password)
        return httpx.AsyncClient(
            base_url=self.url + "/", headers=headers, auth=auth, verify=self._verify,
            timeout=self._timeout, follow_redirects=False,
            limits=httpx.Limits(max_connections=self._max_concurrency,
                                max_keepalive_connections=self._max_concurrency))

    async def call(self, method: str, path: str, endpoint: str, body: Any = None,
                   optional: bool = False, unsupported: tuple[int, ...] = ()) -> Any:
        """One request; `endpoint` is the path template it is accounted under. An optional call
        answers None when the server does not offer the endpoint; a status in `unsupported`
        (422: a filter this server version does not know) answers None too."""
        if self._client is None:
            self._client = self._make_client()
        stats = self.requests.setdefault(endpoint, RequestStats())
        async with self._limit:
            started = time.monotonic()
            try:
                response = await self._client.request(method, path, json=body)
            except httpx.HTTPError:
                stats.errors += 1
                raise
            finally:
                stats.count += 1
                stats.seconds += time.monotonic() - started
        if response.status_code >= 400:
            stats.errors += 1
            if ((optional and response.status_code in ABSENT)
                    or response.status_code in unsupported):
                return None
            raise SourceError("query" if response.status_code != 401 else "connect",
                              http_error(method, endpoint, response))
        try:
            return response.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            stats.errors += 1
            raise SourceError("query", f"{method} {endpoint}: answer is not JSON "
                              f"(HTTP {response.status_code})") from None

    @overload
    async def count(self, what: str, body: Mapping[str, Any]) -> int: ...

    @overload
    async def count(self, what: str, body: Mapping[str, Any],
                    unsupported: tuple[int, ...]) -> int | None: ...

    async def count(self, what: str, body: Mapping[str, Any],
                    unsupported: tuple[int, ...] = ()) -> int | None:
        """POST /<what>/count (flow_runs, deployments, ...): a number, never a page; None for
        an `unsupported` answer."""
        value = await self.call("POST", f"{what}/count", f"/{what}/count", body,
                                unsupported=unsupported)
        if value is None and unsupported:
            return None
        if not isinstance(value, int) or isinstance(value, bool):
            raise SourceError("query", f"POST /{what}/count: expected a number, got "
                              f"{type(value).__name__}")
        return value

    async def filter(self, what: str, body: Mapping[str, Any],
                     endpoint: str | None = None) -> list[Mapping[str, Any]]:
        """POST /<what>/filter: a list of objects (callers bound it with `limit`)."""
        endpoint = endpoint or f"/{what}/filter"
        value = await self.call("POST", f"{what}/filter", endpoint, body)
        if not isinstance(value, list):
            raise SourceError("query", f"POST {endpoint}: expected a list")
        return [item for item in value if isinstance(item, Mapping)]

    async def ready(self, timeout: float) -> tuple[bool, float]:
        """GET /ready, timed: one round trip through the server's own database pool (Prefect
        checks out a connection). Never raises: a failure or a timeout is the answer, with
        the time it took."""
        if self._client is None:
            self._client = self._make_client()
        stats = self.requests.setdefault("/ready", RequestStats())
        started = time.monotonic()
        try:
            async with self._limit:
                response = await self._client.get("ready", timeout=timeout)
            ok = response.status_code == 200
        except httpx.HTTPError:
            ok = False
        seconds = time.monotonic() - started
        stats.count += 1
        stats.seconds += seconds
        stats.errors += 0 if ok else 1
        return ok, seconds

    def request_stats(self) -> dict[str, RequestStats]:
        """A copy of the cumulative account, for a snapshot."""
        return {k: RequestStats(v.count, v.errors, v.seconds) for k, v in self.requests.items()}

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()


def http_error(method: str, endpoint: str, response: httpx.Response) -> str:
    if response.status_code == 401:
        return (f"{method} {endpoint}: HTTP 401 Unauthorized: check PREFECT_API_KEY "
                "(Prefect Cloud) or PREFECT_API_AUTH_STRING (self-hosted basic auth)")
    if response.status_code == 403:
        return f"{method} {endpoint}: HTTP 403 Forbidden: the key lacks access to this workspace"
    return f"{method} {endpoint}: HTTP {response.status_code}"
