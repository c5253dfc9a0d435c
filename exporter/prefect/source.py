"""Prefect API source: is scheduling keeping up, and are work pools and workers there?

Counts, never pages: every number comes from `POST /flow_runs/count` with a filter body, or a
`/flow_runs/filter` with `limit: 1` for the oldest overdue run, so the cost of a poll does not grow
with the number of flow runs. It grows with the number of work pools, which is bounded by
label_top_n. Requests run concurrently under a cap.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import httpx

from exporter.config import PrefectAuth
from exporter.prefect.snapshot import (
    PoolCounts,
    PrefectSnapshot,
    RequestStats,
    WorkPool,
    WorkQueue,
)
from exporter.source import ErrorMap, SourceError, translated

CURRENT_STATE_TYPES = ("SCHEDULED", "PENDING", "RUNNING", "CANCELLING", "PAUSED")
IN_FLIGHT_STATE_TYPES = ("PENDING", "RUNNING")  # what a work pool's concurrency slots count
USER_AGENT = "prefect-pg-exporter"

# Settings read from GET /admin/settings, by JSON path. Durations come as ISO 8601 strings.
SETTING_PATHS = (
    "server.database.sqlalchemy.pool_size",
    "server.database.sqlalchemy.max_overflow",
    "server.database.sqlalchemy.pool_timeout",
    "server.database.sqlalchemy.pool_recycle",
    "server.database.sqlalchemy.connect_args.statement_cache_size",
    "server.database.sqlalchemy.connect_args.prepared_statement_cache_size",
    "server.services.scheduler.enabled",
    "server.services.scheduler.loop_seconds",
    "server.services.scheduler.max_runs",
    "server.services.scheduler.min_runs",
    "server.services.scheduler.max_scheduled_time",
    "server.services.scheduler.min_scheduled_time",
    "server.services.late_runs.enabled",
    "server.services.late_runs.loop_seconds",
    "server.services.late_runs.after_seconds",
)
TEXT_SETTING_PATHS = ("server.database.sqlalchemy.connect_args.application_name",)


def iso(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_time(value: Any) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


_ISO_DURATION = re.compile(
    r"^P(?:(?P<d>\d+(?:\.\d+)?)D)?(?:T(?:(?P<h>\d+(?:\.\d+)?)H)?(?:(?P<m>\d+(?:\.\d+)?)M)?"
    r"(?:(?P<s>\d+(?:\.\d+)?)S)?)?$")


def setting_number(value: Any) -> float | None:
    """A setting as a number: booleans 0/1, numbers as they are, ISO 8601 durations in seconds."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        match = _ISO_DURATION.match(value)
        if match and value != "P":
            parts = {k: float(v) for k, v in match.groupdict().items() if v}
            return timedelta(days=parts.get("d", 0), hours=parts.get("h", 0),
                             minutes=parts.get("m", 0), seconds=parts.get("s", 0)).total_seconds()
        try:
            return float(value)
        except ValueError:
            return None
    return None


def dig(data: Any, path: str) -> Any:
    for key in path.split("."):
        if not isinstance(data, Mapping):
            return None
        data = data.get(key)
    return data


def parse_settings(data: Any) -> tuple[dict[str, float], dict[str, str]]:
    numbers = {p: n for p in SETTING_PATHS if (n := setting_number(dig(data, p))) is not None}
    texts = {p: v for p in TEXT_SETTING_PATHS if isinstance(v := dig(data, p), str)}
    return numbers, texts


def parse_work_pool(data: Mapping[str, Any], workers: Sequence[Mapping[str, Any]]) -> WorkPool:
    heartbeats = [t for w in workers if (t := parse_time(w.get("last_heartbeat_time")))]
    return WorkPool(
        name=str(data.get("name", "")), type=str(data.get("type") or ""),
        status=str(data.get("status") or "UNKNOWN"), paused=bool(data.get("is_paused")),
        concurrency_limit=data.get("concurrency_limit"),
        workers=len(workers),
        online_workers=sum(1 for w in workers if w.get("status") == "ONLINE"),
        last_heartbeat=max(heartbeats, default=None),
    )


def parse_work_queue(data: Mapping[str, Any]) -> WorkQueue:
    return WorkQueue(work_pool=str(data.get("work_pool_name") or ""),
                     name=str(data.get("name", "")), paused=bool(data.get("is_paused")),
                     concurrency_limit=data.get("concurrency_limit"))


# ---- filter bodies -------------------------------------------------------------------------

def _state_types(*types: str) -> dict[str, Any]:
    return {"state": {"type": {"any_": list(types)}}}


def _in_pool(body: dict[str, Any], pool: str | None) -> dict[str, Any]:
    return {**body, "work_pools": {"name": {"any_": [pool]}}} if pool is not None else body


def backlog_filter(now: datetime, pool: str | None = None) -> dict[str, Any]:
    return _in_pool({"flow_runs": {**_state_types("SCHEDULED"),
                                   "expected_start_time": {"before_": iso(now)}}}, pool)


def late_filter(pool: str | None = None) -> dict[str, Any]:
    return _in_pool({"flow_runs": {"state": {"name": {"any_": ["Late"]}}}}, pool)


def upcoming_filter(now: datetime, horizon: float, pool: str | None = None) -> dict[str, Any]:
    window = {"after_": iso(now), "before_": iso(now + timedelta(seconds=horizon))}
    return _in_pool({"flow_runs": {**_state_types("SCHEDULED"), "expected_start_time": window}},
                    pool)


def future_filter(now: datetime) -> dict[str, Any]:
    return {"flow_runs": {**_state_types("SCHEDULED"), "expected_start_time": {"after_": iso(now)}}}


def in_flight_filter(pool: str | None = None) -> dict[str, Any]:
    return _in_pool({"flow_runs": _state_types(*IN_FLIGHT_STATE_TYPES)}, pool)


def oldest_backlog_query(now: datetime, pool: str | None = None) -> dict[str, Any]:
    """The most overdue SCHEDULED run, by next_scheduled_start_time: Prefect sets it only on
    SCHEDULED runs (equal to their expected start), and its index skips the finished history
    that sorting by expected_start_time walks through (29 -> 61 ms at 1k -> 100k runs)."""
    body = _in_pool({"flow_runs": {**_state_types("SCHEDULED"),
                                   "next_scheduled_start_time": {"before_": iso(now)}}}, pool)
    return {**body, "sort": "NEXT_SCHEDULED_START_TIME_ASC", "limit": 1}


# ---- the source ----------------------------------------------------------------------------

# A request that never got an HTTP answer; HTTP errors are turned into SourceError by _call.
TRANSPORT_ERRORS: ErrorMap = ((httpx.TimeoutException, "timeout"), (httpx.HTTPError, "connect"))


class PrefectSource:
    kind = "prefect"

    def __init__(self, target: str, api_url: str, *, auth: PrefectAuth, timeout: float,
                 headers: Mapping[str, str] | None = None, verify: bool | str = True,
                 horizon_seconds: float = 3600, max_pools: int = 20,
                 max_concurrency: int = 4) -> None:
        self.target = target
        self._url = api_url.rstrip("/")
        self._auth = auth
        self._timeout = timeout
        self._headers = dict(headers or {})
        self._verify = verify
        self._horizon = horizon_seconds
        self._max_pools = max_pools
        self._limit = asyncio.Semaphore(max_concurrency)
        self._max_concurrency = max_concurrency
        self._client: httpx.AsyncClient | None = None
        self.requests: dict[str, RequestStats] = {}

    def _make_client(self) -> httpx.AsyncClient:
        headers = {"User-Agent": USER_AGENT, **self._headers}
        auth: httpx.Auth | None = None
        if self._auth.api_key:
            headers["Authorization"] = f"Bearer {self._auth.api_key}"
        elif self._auth.auth_string:
            user, _, password = self._auth.auth_string.partition(":")
            auth = httpx.BasicAuth(user, password)
        return httpx.AsyncClient(
            base_url=self._url + "/", headers=headers, auth=auth, verify=self._verify,
            timeout=self._timeout, follow_redirects=False,
            limits=httpx.Limits(max_connections=self._max_concurrency,
                                max_keepalive_connections=self._max_concurrency))

    async def _call(self, method: str, path: str, endpoint: str,
                    body: Any = None, optional: bool = False) -> Any:
        """One request; `endpoint` is the path template used to account for it. An optional
        call answers None when the server does not offer the endpoint (Prefect Cloud has no
        /admin/settings)."""
        assert self._client is not None
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
            if optional and response.status_code in (403, 404, 405):
                return None
            raise SourceError("query" if response.status_code != 401 else "connect",
                              _http_error(method, endpoint, response))
        try:
            return response.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            stats.errors += 1
            raise SourceError("query", f"{method} {endpoint}: answer is not JSON "
                              f"(HTTP {response.status_code})") from None

    async def _count(self, body: dict[str, Any]) -> int:
        value = await self._call("POST", "flow_runs/count", "/flow_runs/count", body)
        if not isinstance(value, int):
            raise SourceError("query", f"POST /flow_runs/count: expected a number, got "
                              f"{type(value).__name__}")
        return value

    async def _oldest_start(self, now: datetime, pool: str | None = None) -> float | None:
        runs = await self._call("POST", "flow_runs/filter", "/flow_runs/filter",
                                oldest_backlog_query(now, pool))
        if not isinstance(runs, list):
            raise SourceError("query", "POST /flow_runs/filter: expected a list")
        if not runs:
            return None
        return parse_time(runs[0].get("next_scheduled_start_time")
                          or runs[0].get("expected_start_time"))

    async def _pool_counts(self, now: datetime, pool: str | None) -> PoolCounts:
        backlog, late, upcoming, in_flight, oldest = await asyncio.gather(
            self._count(backlog_filter(now, pool)), self._count(late_filter(pool)),
            self._count(upcoming_filter(now, self._horizon, pool)),
            self._count(in_flight_filter(pool)), self._oldest_start(now, pool))
        return PoolCounts(backlog, late, upcoming, in_flight, oldest)

    async def _work_pool(self, data: Mapping[str, Any]) -> WorkPool:
        name = str(data.get("name", ""))
        workers = await self._call("POST", f"work_pools/{quote(name, safe='')}/workers/filter",
                                   "/work_pools/{name}/workers/filter", {"limit": 200})
        return parse_work_pool(data, workers if isinstance(workers, list) else [])

    async def poll(self) -> PrefectSnapshot:
        if self._client is None:
            self._client = self._make_client()
        now = datetime.now(UTC)
        with translated(TRANSPORT_ERRORS, self._auth.secrets(), f"{self._url}: "):
            try:
                return await self._read(now)
            except httpx.HTTPError:
                await self.close()  # a fresh client (and connections) for the next poll
                raise

    async def _read(self, now: datetime) -> PrefectSnapshot:
        version = await self._call("GET", "admin/version", "/admin/version", optional=True)
        pools_data = await self._call("POST", "work_pools/filter", "/work_pools/filter",
                                      {"limit": 200})
        if not isinstance(pools_data, list):
            raise SourceError("query", "POST /work_pools/filter: expected a list")
        pools_data = sorted(pools_data, key=lambda p: str(p.get("name", "")))[: self._max_pools]
        names = [str(p.get("name", "")) for p in pools_data]
        by_state, totals, future, pools, counts, queues, settings = await asyncio.gather(
            asyncio.gather(*(self._count({"flow_runs": _state_types(t)})
                             for t in CURRENT_STATE_TYPES)),
            self._pool_counts(now, None),
            self._count(future_filter(now)),
            asyncio.gather(*(self._work_pool(p) for p in pools_data)),
            asyncio.gather(*(self._pool_counts(now, n) for n in names)),
            self._call("POST", "work_queues/filter", "/work_queues/filter", {"limit": 200}),
            self._call("GET", "admin/settings", "/admin/settings", optional=True),
        )
        numbers, texts = parse_settings(settings)
        return PrefectSnapshot(
            taken_at=time.time(),
            target=self.target,
            version=version if isinstance(version, str) else "",
            runs_by_state_type=dict(zip(CURRENT_STATE_TYPES, by_state, strict=True)),
            totals=totals, scheduled_future=future, pools=tuple(pools),
            pool_counts=dict(zip(names, counts, strict=True)),
            queues=tuple(parse_work_queue(q) for q in (queues or []) if isinstance(q, Mapping)
                         and q.get("work_pool_name") in names),
            settings=numbers, text_settings=texts,
            requests={k: RequestStats(v.count, v.errors, v.seconds)
                      for k, v in self.requests.items()},
        )

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()


def _http_error(method: str, endpoint: str, response: httpx.Response) -> str:
    if response.status_code == 401:
        return (f"{method} {endpoint}: HTTP 401 Unauthorized: check PREFECT_API_KEY "
                "(Prefect Cloud) or PREFECT_API_AUTH_STRING (self-hosted basic auth)")
    if response.status_code == 403:
        return f"{method} {endpoint}: HTTP 403 Forbidden: the key lacks access to this workspace"
    return f"{method} {endpoint}: HTTP {response.status_code}"
