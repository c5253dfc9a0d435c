"""PgBouncer source: the admin console's SHOW POOLS, SERVERS, STATS_TOTALS, DATABASES, CONFIG,
LISTS and VERSION.

The admin console speaks only the simple query protocol, so this source uses psycopg 3 (asyncpg
cannot read it) with autocommit and no prepared statements. It works for a user listed in
`stats_users`; `admin_users` is not needed. Columns are read by name and unknown ones ignored,
so PgBouncer versions that add or drop columns parse alike.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo
from psycopg.rows import dict_row

from exporter.dsn import Target
from exporter.pgbouncer.snapshot import Database, PgBouncerSnapshot, Pool, Server, Stats
from exporter.source import ErrorMap, SourceError, translated

APPLICATION_NAME = "prefect-pg-exporter"
ADMIN_DATABASE = "pgbouncer"  # the admin console's pseudo-database; its pool is the exporter

Row = Mapping[str, Any]


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def parse_pools(rows: Sequence[Row]) -> tuple[Pool, ...]:
    pools = []
    for row in rows:
        if row.get("database") == ADMIN_DATABASE:
            continue  # the admin console's own pool holds just the exporter
        counts = {k: _int(v) for k, v in row.items()
                  if k.startswith(("cl_", "sv_")) and isinstance(v, int)}
        maxwait = _int(row.get("maxwait")) + _int(row.get("maxwait_us")) / 1_000_000
        pools.append(Pool(_text(row.get("database")), _text(row.get("user")),
                          _text(row.get("pool_mode")), counts, maxwait))
    return tuple(pools)


def parse_servers(rows: Sequence[Row]) -> tuple[Server, ...]:
    """SHOW SERVERS (1.18: type, user, database, state, addr, port, local_addr, local_port,
    connect_time, request_time, wait, wait_us, close_needed, ptr, link, remote_pid, tls,
    application_name): only what joins a server connection to its backend on PostgreSQL. One
    row per server connection, at most the sum of the pool sizes."""
    return tuple(
        Server(_text(row.get("database")), _text(row.get("user")), _text(row.get("state")),
               _int(row.get("remote_pid")), _text(row.get("addr")), _text(row.get("port")))
        for row in rows
        if row.get("database") != ADMIN_DATABASE
    )


DATABASE_VALUES = ("pool_size", "min_pool_size", "reserve_pool", "reserve_pool_size",
                   "max_connections", "current_connections", "paused", "disabled")


def parse_databases(rows: Sequence[Row]) -> tuple[Database, ...]:
    return tuple(
        Database(
            name=_text(row.get("name")), host=_text(row.get("host")),
            port=_text(row.get("port")), database=_text(row.get("database")),
            force_user=_text(row.get("force_user")), pool_mode=_text(row.get("pool_mode")),
            # 1.24 renamed reserve_pool to reserve_pool_size: one name here, whichever came
            values={k.removesuffix("_size") if k == "reserve_pool_size" else k: _int(row[k])
                    for k in DATABASE_VALUES if k in row},
        )
        for row in rows
        if row.get("name") != ADMIN_DATABASE
    )


def parse_stats(rows: Sequence[Row]) -> tuple[Stats, ...]:
    """SHOW STATS_TOTALS: every numeric column is a cumulative total. Versions differ (1.23 adds
    server_assignment_count, 1.24 the parse and bind counts; older ones had requests): whatever
    is present is read, nothing is required."""
    return tuple(
        Stats(_text(row.get("database")),
              {k: _int(v) for k, v in row.items() if k != "database" and v is not None})
        for row in rows
        if row.get("database") != ADMIN_DATABASE
    )


def parse_config(rows: Sequence[Row]) -> dict[str, str]:
    return {_text(row.get("key")): _text(row.get("value")) for row in rows if row.get("key")}


def parse_lists(rows: Sequence[Row]) -> dict[str, int]:
    return {_text(row.get("list")): _int(row.get("items")) for row in rows if row.get("list")}


def parse_version(rows: Sequence[Row]) -> str:
    """'PgBouncer 1.18.0' -> '1.18.0' (1.12+ answer SHOW VERSION with a row)."""
    text = _text(rows[0].get("version")) if rows else ""
    return text.removeprefix("PgBouncer").strip()


QUERY_ERRORS: ErrorMap = (((psycopg.Error, OSError), "query"),)
CONNECT_ERRORS: ErrorMap = (((TimeoutError, psycopg.Error, OSError), "connect"),)


class PgBouncerSource:
    kind = "pgbouncer"

    def __init__(self, target: Target, *, connect_timeout: float) -> None:
        self.target = target.name
        self._target = target
        self._connect_timeout = connect_timeout
        self._conn: psycopg.AsyncConnection[dict[str, Any]] | None = None

    def partial(self) -> None:
        """A failed poll publishes nothing: SHOW POOLS without SHOW DATABASES cannot be judged."""
        return None

    async def poll(self) -> PgBouncerSnapshot:
        try:
            with translated(QUERY_ERRORS, self._target.secrets()):
                conn = await self._connection()
                return PgBouncerSnapshot(
                    taken_at=time.time(),
                    target=self.target,
                    version=parse_version(await self._show(conn, "VERSION")),
                    pools=parse_pools(await self._show(conn, "POOLS")),
                    databases=parse_databases(await self._show(conn, "DATABASES")),
                    stats=parse_stats(await self._show(conn, "STATS_TOTALS")),
                    config=parse_config(await self._show(conn, "CONFIG")),
                    lists=parse_lists(await self._show(conn, "LISTS")),
                    servers=parse_servers(await self._show(conn, "SERVERS")),
                )
        except SourceError:
            await self.close()
            raise

    @staticmethod
    async def _show(conn: psycopg.AsyncConnection[dict[str, Any]], what: str) -> list[Row]:
        cur = await conn.execute(f"SHOW {what}")
        return list(await cur.fetchall())

    async def _connection(self) -> psycopg.AsyncConnection[dict[str, Any]]:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        await self.close()
        params = {**self._target.params, "application_name": APPLICATION_NAME}
        params.setdefault("dbname", ADMIN_DATABASE)
        with translated(CONNECT_ERRORS, self._target.secrets(),
                        f"cannot connect to {self._target.redacted()}: "):
            self._conn = await psycopg.AsyncConnection.connect(
                conninfo=make_conninfo(**params), autocommit=True, prepare_threshold=None,
                row_factory=dict_row, connect_timeout=max(1, round(self._connect_timeout)))
        return self._conn

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.closed:
            await conn.close()
