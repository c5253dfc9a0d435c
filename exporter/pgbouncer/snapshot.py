"""What a PgBouncer poll sees: plain typed data, no driver."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Pool:
    database: str
    user: str
    pool_mode: str
    counts: dict[str, int]  # the numeric SHOW POOLS columns present: cl_active, cl_waiting, ...
    maxwait_seconds: float  # maxwait + maxwait_us: how long the oldest waiting client has waited


@dataclass(frozen=True)
class Database:
    name: str
    host: str
    port: str
    database: str
    force_user: str
    pool_mode: str  # '' when the database follows the global pool_mode
    values: dict[str, int]  # pool_size, min_pool_size, reserve_pool, max_connections, ...


@dataclass(frozen=True)
class Stats:
    database: str
    totals: dict[str, int]  # SHOW STATS_TOTALS columns: xact_count, query_time (us), ...


@dataclass(frozen=True)
class Server:
    """One server connection (SHOW SERVERS): which pool it serves and its backend's pid on
    PostgreSQL, the key that joins a pool to pg_stat_activity."""

    database: str  # the pool's database (PgBouncer's name for it) and user
    user: str
    state: str  # PgBouncer's: active (linked to a client), idle, used, tested, new
    remote_pid: int  # the PostgreSQL backend's pid; 0 before login
    addr: str  # the PostgreSQL server's address and port
    port: str


@dataclass(frozen=True)
class PgBouncerSnapshot:
    taken_at: float
    target: str
    version: str
    pools: tuple[Pool, ...]
    databases: tuple[Database, ...]
    stats: tuple[Stats, ...]
    config: dict[str, str]
    lists: dict[str, int]
    servers: tuple[Server, ...] = ()

    @property
    def tracks_prepared_statements(self) -> bool:
        """PgBouncer 1.21+ with max_prepared_statements > 0 keeps named prepared statements
        working through transaction pooling, asyncpg's among them."""
        value = self.config.get("max_prepared_statements", "").strip()
        return value.isdigit() and int(value) > 0
