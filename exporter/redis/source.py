"""Redis source: INFO, then the streams and their consumer groups, with read-only commands
only (INFO, TYPE, SCAN ... TYPE stream, XINFO STREAM/GROUPS/CONSUMERS; never KEYS, never a
write), through redis-py's asyncio client on one connection.

The cost of a poll does not grow with the keyspace: streams are found by SCAN with
`TYPE stream`, at most SCAN_CALLS calls of COUNT SCAN_COUNT per poll, resuming from the cursor
the previous poll stopped at, so 100,000 unrelated keys are walked over several polls, never
in one. The streams found are remembered; Prefect's own (events, actions, Docket's
prefect:stream) are looked for by name at startup and after each full pass, so they show on
the first poll whatever the keyspace's size. Commands per poll are bounded by
1 + 3 + SCAN_CALLS + MAX_STREAMS x (2 + MAX_GROUPS): INFO, the TYPE look-ups (when a pass
ended), the scan, XINFO STREAM and GROUPS per stream, XINFO CONSUMERS per group.
"""

from __future__ import annotations

import time
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from exporter.redis.snapshot import Group, RedisSnapshot, Stream
from exporter.redis.target import RedisTarget
from exporter.source import ErrorMap, SourceError, translated

CLIENT_NAME = "prefect-pg-exporter"
# Prefect's streams (prefect-redis: events, actions) and Docket's (docket name "prefect").
PREFECT_STREAMS = ("events", "actions", "prefect:stream")
SCAN_COUNT = 1000  # keys Redis looks at per SCAN call
SCAN_CALLS = 10  # SCAN calls per poll at most: 10,000 keys looked at
MAX_STREAMS = 50  # streams read per poll, Prefect's first
MAX_GROUPS = 50  # consumer groups read per stream

# A connection lost mid-poll (Redis stopped, failed over) is a connect failure, as PostgreSQL's
QUERY_ERRORS: ErrorMap = ((RedisTimeoutError, "timeout"),
                          ((RedisConnectionError, OSError), "connect"), (RedisError, "query"))
CONNECT_ERRORS: ErrorMap = (((RedisError, OSError, TimeoutError, ValueError), "connect"),)


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def parse_groups(groups: list[dict[str, Any]],
                 consumers: dict[str, list[dict[str, Any]]]) -> tuple[Group, ...]:
    """XINFO GROUPS (and each group's XINFO CONSUMERS) into groups; consumer names dropped."""
    return tuple(
        Group(name=_text(g.get("name")), consumers=_int(g.get("consumers")) or 0,
              pending=_int(g.get("pending")) or 0,
              last_delivered_id=_text(g.get("last-delivered-id")),
              entries_read=_int(g.get("entries-read")), lag=_int(g.get("lag")),
              consumer_idle_seconds=tuple((_int(c.get("idle")) or 0) / 1000
                                          for c in consumers.get(_text(g.get("name")), [])))
        for g in groups)


def parse_stream(key: str, info: dict[str, Any], groups: tuple[Group, ...]) -> Stream:
    first = info.get("first-entry")
    return Stream(key=key, length=_int(info.get("length")) or 0,
                  last_generated_id=_text(info.get("last-generated-id")),
                  first_entry_id=_text(first[0]) if first else None, groups=groups)


def parse_keyspace(info: dict[str, Any]) -> dict[str, int]:
    """INFO's keyspace section: db0 -> keys (redis-py parses each into a dict)."""
    return {name: _int(value.get("keys")) or 0 for name, value in info.items()
            if name.startswith("db") and name[2:].isdigit() and isinstance(value, dict)}


class RedisSource:
    kind = "redis"

    def __init__(self, target: RedisTarget, *, timeout: float,
                 consumer_idle_seconds: float) -> None:
        self.target = target.name
        self._target = target
        self._timeout = timeout
        self._idle_limit = consumer_idle_seconds
        self._client: aioredis.Redis | None = None
        self._commands = 0
        self._cursor = 0  # where the stream scan resumes
        self._known: dict[bytes, None] = {}  # streams found (ordered: Prefect's first)
        self._found_this_pass: dict[bytes, None] = {}
        self._probe_prefect = True  # look for Prefect's streams by name on the next poll

    def partial(self) -> None:
        """A failed poll publishes nothing: a stream's groups without its length (or INFO without
        the streams) cannot be judged, so none of it is shown as current."""
        return None

    async def poll(self) -> RedisSnapshot:
        try:
            client = await self._connection()
            with translated(QUERY_ERRORS, self._target.secrets):
                return await self._read(client)
        except SourceError:
            await self.close()
            raise

    async def _read(self, client: aioredis.Redis) -> RedisSnapshot:
        self._commands = 0
        info = await self._run(client.info())
        complete = await self._scan(client)
        streams = []
        for key in list(self._known)[:MAX_STREAMS]:
            stream = await self._stream(client, key)
            if stream is None:
                self._known.pop(key, None)  # gone, or no longer a stream
            else:
                streams.append(stream)
        return RedisSnapshot(
            taken_at=time.time(), target=self.target,
            version=_text(info.get("redis_version")), mode=_text(info.get("redis_mode")),
            db=self._target.db, used_memory=_int(info.get("used_memory")) or 0,
            maxmemory=_int(info.get("maxmemory")) or 0,
            maxmemory_policy=_text(info.get("maxmemory_policy")),
            connected_clients=_int(info.get("connected_clients")) or 0,
            db_keys=parse_keyspace(info), streams=tuple(streams),
            consumer_idle_limit_seconds=self._idle_limit, commands=self._commands,
            scan_complete=complete)

    async def _run(self, command: Any) -> Any:
        self._commands += 1
        return await command

    async def _scan(self, client: aioredis.Redis) -> bool:
        """Continue the stream scan for at most SCAN_CALLS calls; True when a pass ended."""
        if self._probe_prefect:
            self._probe_prefect = False
            for name in PREFECT_STREAMS:
                if _text(await self._run(client.type(name))) == "stream":
                    self._known.setdefault(name.encode(), None)
        for _ in range(SCAN_CALLS):
            self._cursor, keys = await self._run(
                client.scan(self._cursor, count=SCAN_COUNT, _type="stream"))
            for key in keys:
                self._found_this_pass[key] = None
                self._known.setdefault(key, None)
            if self._cursor == 0:
                # a full pass: what it found is what exists (deleted streams drop out)
                self._known = {k: None for k in self._known if k in self._found_this_pass}
                self._found_this_pass = {}
                self._probe_prefect = True
                return True
        return False

    async def _stream(self, client: aioredis.Redis, key: bytes) -> Stream | None:
        try:
            info = await self._run(client.xinfo_stream(key))
        except ResponseError:  # no such key, or another type now
            return None
        groups = (await self._run(client.xinfo_groups(key)))[:MAX_GROUPS]
        consumers = {}
        for group in groups:
            name = group.get("name")
            consumers[_text(name)] = await self._run(client.xinfo_consumers(key, name))
        return parse_stream(_text(key), info, parse_groups(groups, consumers))

    async def _connection(self) -> aioredis.Redis:
        if self._client is not None:
            return self._client
        with translated(CONNECT_ERRORS, self._target.secrets,
                        f"cannot connect to {self._target.redacted()}: "):
            client = self._sentinel_client() if self._target.sentinels else \
                aioredis.Redis.from_url(self._target.url, single_connection_client=True,
                                        **self._options())
            try:
                # connects (and authenticates, and asks the Sentinels for the master) now
                await (client.initialize() if not self._target.sentinels else client.ping())
            except BaseException:
                await client.aclose()
                raise
        self._client = client
        return client

    def _options(self) -> dict[str, Any]:
        return dict(decode_responses=False, socket_timeout=self._timeout,
                    socket_connect_timeout=self._timeout, client_name=CLIENT_NAME, protocol=2,
                    # the poller retries with backoff: no retries of the client's own
                    retry=Retry(NoBackoff(), 0))

    def _sentinel_client(self) -> aioredis.Redis:
        """The master of the service, through the Sentinels (followed on failover); one data
        connection at most (the commands are sent one after the other)."""
        from redis.asyncio.sentinel import Sentinel

        t = self._target
        daemons = {"socket_timeout": self._timeout, "socket_connect_timeout": self._timeout,
                   "username": t.sentinel_username, "password": t.sentinel_password,
                   "ssl": t.tls}
        sentinel = Sentinel(list(t.sentinels), sentinel_kwargs=daemons, username=t.username,
                            password=t.password, db=t.db, ssl=t.tls, max_connections=1,
                            **self._options())
        master: aioredis.Redis = sentinel.master_for(t.service)
        return master

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
