"""The Prefect REST API, as the exporter calls it: one httpx client per target, credentials,
a cap on requests in flight, and an account of every request by endpoint (exported as
prefect_api_requests_total and friends).

Every answer is checked here: an HTTP error becomes a SourceError that names the endpoint (and,
for 401/403, the setting to check); a body that is not JSON too, and one larger than
MAX_ANSWER_BYTES once decoded (read no further). Transport errors (timeouts, refused
connections) propagate as httpx errors; the source translates them.

CSRF: a server with PREFECT_SERVER_CSRF_PROTECTION_ENABLED=true refuses every POST (the exporter's
counts and filters are POSTs) without a token. Tokens are handled as Prefect's own client does
(prefect/client/base.py): fetched with GET /csrf-token?client=<id> before the first POST, sent
as Prefect-Csrf-Token and Prefect-Csrf-Client, fetched again before they expire and once on a
403 that names the token. A server that answers 422 "CSRF protection is disabled." (or 404) is
not asked again, so it costs one request in the process's life, not one per poll; Prefect Cloud
is never asked, as Prefect's client never asks it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import Mapping
from typing import Any, overload

import httpx

from exporter.prefect.config import PrefectAuth
from exporter.prefect.snapshot import RequestStats
from exporter.prefect.values import parse_time
from exporter.source import SourceError

USER_AGENT = "prefect-pg-exporter"
# Endpoints a server may not offer (Prefect Cloud has no /admin/settings): answered as None.
ABSENT = (403, 404, 405)
CSRF_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})  # what CsrfMiddleware checks
# Fetch a new token this long before the server's expiration: a token that expires between
# the check and the server's lookup costs a refused request and a retry.
CSRF_REFRESH_MARGIN_SECONDS = 60.0
# Prefect's client never asks Prefect Cloud for CSRF tokens (ServerType.CLOUD: the URL starts
# with PREFECT_CLOUD_API_URL, by default this one).
CLOUD_API_URL = "https://api.prefect.cloud/api"
# What /csrf-token answers where there are no tokens to get: 422 "CSRF protection is
# disabled.", 404 before 2.16.5 (Prefect's client stops asking on both), 403/405 from a proxy
# that does not pass it (the POSTs then say whether a token was needed after all).
CSRF_UNAVAILABLE = (403, 404, 405, 422)


class CsrfToken:
    """The CSRF state of one client: its id (one per PrefectClient, so per target and process:
    two exporters, or two targets on one server, never rotate each other's token), the token
    and its expiry, and whether the server wants tokens at all (None until asked)."""

    def __init__(self) -> None:
        self.client_id = str(uuid.uuid4())
        self.enabled: bool | None = None
        self.token: str | None = None
        self.expires: float | None = None  # unix time
        self.lock = asyncio.Lock()

    def headers(self) -> dict[str, str] | None:
        """The headers to send, {} when the server wants none, None when a token is needed."""
        if self.enabled is False:
            return {}
        if self.token is None or (
                self.expires is not None
                and time.time() > self.expires - CSRF_REFRESH_MARGIN_SECONDS):
            return None
        return {"Prefect-Csrf-Token": self.token, "Prefect-Csrf-Client": self.client_id}

    def refused(self, sent: str | None) -> None:
        """After a 403 about the token `sent` (None: none was sent): the server wants one (it
        may have been turned on since it said it was off), and that one is not it. A token
        fetched meanwhile by another request is kept: dropping it would rotate it again under
        the requests in flight."""
        if sent == self.token:
            self.enabled, self.token, self.expires = True, None, None


# The most an answer may hold, decoded. Prefect's pages are 200 items at most (a work pool with a
# large base job template is tens of kB): a few MB. An unbounded answer (a proxy's, a server
# that ignores the limit, a small gzip body that decodes to gigabytes) must not take the
# exporter's memory: past this the request fails, its body unread.
MAX_ANSWER_BYTES = 32 * 1024 * 1024
# What framed the body on the wire, not the body read: a response rebuilt from it has neither.
_FRAMING = frozenset({"content-encoding", "content-length", "transfer-encoding"})


class AnswerTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"answer larger than {limit // (1024 * 1024)} MiB, not read")


async def send_capped(client: httpx.AsyncClient, request: httpx.Request) -> httpx.Response:
    """Sends `request` and reads its answer, decoded, up to MAX_ANSWER_BYTES (AnswerTooLarge
    past it, before reading more): a response whose content is read, as client.send() returns."""
    limit = MAX_ANSWER_BYTES
    response = await client.send(request, stream=True)
    try:
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise AnswerTooLarge(limit)
        chunks, size = [], 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > limit:
                raise AnswerTooLarge(limit)
            chunks.append(chunk)
    finally:
        await response.aclose()
    headers = [(k, v) for k, v in response.headers.multi_items() if k.lower() not in _FRAMING]
    return httpx.Response(response.status_code, headers=headers, content=b"".join(chunks),
                          request=response.request)


def csrf_refusal(response: httpx.Response) -> bool:
    """A 403 from Prefect's CsrfMiddleware: "Missing CSRF token.", "Missing client
    identifier." or "Invalid CSRF token or client identifier."."""
    return response.status_code == 403 and any(
        text in response.text for text in ("CSRF token", "client identifier"))


class PrefectClient:
    def __init__(self, api_url: str, *, auth: PrefectAuth, timeout: float,
                 headers: Mapping[str, str] | None = None, verify: bool | str = True,
                 max_concurrency: int = 4,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.url = api_url.rstrip("/")
        self._transport = transport  # tests answer from memory
        self.auth = auth
        self._timeout = timeout
        self._headers = dict(headers or {})
        self._verify = verify
        self._limit = asyncio.Semaphore(max_concurrency)
        self._max_concurrency = max_concurrency
        self._client: httpx.AsyncClient | None = None
        self._probe_client: httpx.AsyncClient | None = None  # probe(): its own connections
        self.csrf = CsrfToken()  # kept across reconnects: the server keeps the token
        if self.url.startswith(CLOUD_API_URL):
            self.csrf.enabled = False
        self.requests: dict[str, RequestStats] = {}

    def secrets(self) -> list[str | None]:
        """What no error may show: the credentials and every header value sent."""
        return [*self.auth.secrets(), *self._headers.values()]

    def _make_client(self) -> httpx.AsyncClient:
        headers = {"User-Agent": USER_AGENT}
        # As Prefect's client (3.4.1+): the auth string if set, else the key (config.py has
        # already chosen one), then the custom headers, which may replace Authorization.
        if self.auth.auth_string:
            basic = base64.b64encode(self.auth.auth_string.encode()).decode()
            headers["Authorization"] = f"Basic {basic}"
        elif self.auth.api_key:
            headers["Authorization"] = f"Bearer {self.auth.api_key}"
        headers.update(self._headers)
        return httpx.AsyncClient(
            base_url=self.url + "/", headers=headers, verify=self._verify,
            transport=self._transport,
            timeout=self._timeout, follow_redirects=False,
            limits=httpx.Limits(max_connections=self._max_concurrency,
                                max_keepalive_connections=self._max_concurrency))

    async def call(self, method: str, path: str, endpoint: str, body: Any = None,
                   optional: bool = False, unsupported: tuple[int, ...] = ()) -> Any:
        """One request; `endpoint` is the path template it is accounted under. An optional call
        answers None when the server does not offer the endpoint; a status in `unsupported`
        (422: a filter this server version does not know) answers None too."""
        response = await self._send(method, path, endpoint, body)
        stats = self.requests[endpoint]
        if method in CSRF_METHODS and csrf_refusal(response):
            # expired, rotated, or protection turned on since: a fresh token, once more
            stats.errors += 1
            self.csrf.refused(response.request.headers.get("Prefect-Csrf-Token"))
            response = await self._send(method, path, endpoint, body)
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

    async def _send(self, method: str, path: str, endpoint: str, body: Any = None,
                    params: Mapping[str, str] | None = None) -> httpx.Response:
        headers = await self._csrf_headers() if method in CSRF_METHODS else {}
        if self._client is None:
            self._client = self._make_client()
        stats = self.requests.setdefault(endpoint, RequestStats())
        async with self._limit:
            started = time.monotonic()
            try:
                return await send_capped(self._client, self._client.build_request(
                    method, path, json=body, headers=headers, params=params))
            except httpx.HTTPError:
                stats.errors += 1
                raise
            except AnswerTooLarge as exc:
                stats.errors += 1
                raise SourceError("query", f"{method} {endpoint}: {exc}") from None
            finally:
                stats.count += 1
                stats.seconds += time.monotonic() - started

    async def _csrf_headers(self) -> dict[str, str]:
        headers = self.csrf.headers()
        if headers is not None:
            return headers
        async with self.csrf.lock:  # the first POSTs of a poll wait for one token
            headers = self.csrf.headers()
            if headers is None:
                await self._fetch_csrf_token()
                headers = self.csrf.headers() or {}
        return headers

    async def _fetch_csrf_token(self) -> None:
        endpoint = "/csrf-token"
        response = await self._send("GET", "csrf-token", endpoint,
                                    params={"client": self.csrf.client_id})
        if response.status_code in CSRF_UNAVAILABLE:
            self.csrf.enabled = False  # not asked again; a 403 about the token turns it on
            return
        if response.status_code >= 400:
            self.requests[endpoint].errors += 1
            raise SourceError("query" if response.status_code != 401 else "connect",
                              http_error("GET", endpoint, response))
        try:
            data = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            data = None
        if not isinstance(data, Mapping) or not isinstance(data.get("token"), str):
            self.requests[endpoint].errors += 1
            raise SourceError("query", f"GET {endpoint}: no token in the answer")
        self.csrf.enabled, self.csrf.token = True, str(data["token"])
        self.csrf.expires = parse_time(data.get("expiration"))

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

    async def probe(self, path: str, timeout: float) -> tuple[bool, float]:
        """GET <path> (health, ready), timed, on a client of its own: outside the cap on
        requests in flight and the poll's connections, so the time is the server's, not the
        exporter's own queueing. Never raises: a failure or a timeout is the answer, with the
        time it took."""
        if self._probe_client is None:
            self._probe_client = self._make_client()
        stats = self.requests.setdefault(f"/{path}", RequestStats())
        started = time.monotonic()
        try:
            response = await send_capped(self._probe_client, self._probe_client.build_request(
                "GET", path, timeout=timeout))
            ok = response.status_code == 200
        except (httpx.HTTPError, AnswerTooLarge):
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
        clients = (self._client, self._probe_client)
        self._client = self._probe_client = None
        for client in clients:
            if client is not None:
                await client.aclose()


def http_error(method: str, endpoint: str, response: httpx.Response) -> str:
    if response.status_code == 401:
        return (f"{method} {endpoint}: HTTP 401 Unauthorized: check PREFECT_API_KEY "
                "(Prefect Cloud) or PREFECT_API_AUTH_STRING (self-hosted basic auth)")
    if response.status_code == 403:
        if csrf_refusal(response):
            return (f"{method} {endpoint}: HTTP 403 Forbidden: the server refused the CSRF "
                    "token (PREFECT_SERVER_CSRF_PROTECTION_ENABLED)")
        return f"{method} {endpoint}: HTTP 403 Forbidden: the key lacks access to this workspace"
    return f"{method} {endpoint}: HTTP {response.status_code}"
