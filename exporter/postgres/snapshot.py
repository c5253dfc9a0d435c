"""What a PostgreSQL poll sees: plain typed data, no driver. The row types are NamedTuples whose
fields are their query's columns in order (the queries are in source.py; a lab test checks the
two agree): at thousands of backends, building them with _make(row) keeps the poll close to the
cost of the SQL itself."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import NamedTuple


class ActivityGroup(NamedTuple):
    """Client backends that share database, role, application, state and wait event."""

    datname: str
    usename: str
    application_name: str
    state: str
    wait_event_type: str
    wait_event: str
    client_read_in_transaction: bool
    listen_channel: str | None
    sessions: int
    max_transaction_age: float | None  # now - xact_start, None when none is in a transaction
    max_state_age: float | None  # now - state_change


class Session(NamedTuple):
    """One backend, for the oldest transactions and the blockers."""

    pid: int
    datname: str
    usename: str
    application_name: str
    client_addr: str
    state: str
    wait_event_type: str
    wait_event: str
    transaction_age: float | None
    state_age: float | None


@dataclass(frozen=True)
class BlockedSession:
    pid: int
    blocked_by: tuple[int, ...]
    wait_seconds: float


class TableStats(NamedTuple):
    schema: str
    table: str
    live_tuples: int
    dead_tuples: int
    last_vacuum: float | None  # unix time
    last_autovacuum: float | None
    total_bytes: int  # heap + indexes + TOAST (pg_total_relation_size)
    inserted_rows: int  # n_tup_ins since the statistics were reset: a counter
    deleted_rows: int  # n_tup_del, likewise


class Relation(NamedTuple):
    """A table a blocked session waits on (its schema and name)."""

    schema: str
    table: str

    def __str__(self) -> str:
        return f"{self.schema}.{self.table}"


@dataclass(frozen=True)
class Involved:
    """The sessions incidents are about, read only when there are some: blockers and the
    sessions they block, active statements whose client went silent past the stall threshold,
    and sessions idle in transaction past the idle threshold. Their statements are fingerprints
    with every literal masked (exporter/incidents/fingerprint.py), never raw text, and absent
    with --no-statements (then no query text is read at all)."""

    sessions: tuple[Session, ...] = ()
    statements: Mapping[int, str] = field(default_factory=dict)  # pid -> fingerprint
    waits_on: Mapping[int, Relation] = field(default_factory=dict)  # blocked pid -> table

    def session(self, pid: int) -> Session | None:
        return next((s for s in self.sessions if s.pid == pid), None)


class DatabaseSize(NamedTuple):
    datname: str
    bytes: int


class Address(NamedTuple):
    """Where a target's DSN points: a PgBouncer whose SHOW DATABASES names the same host and
    port sits in front of it."""

    host: str  # as the DSN says it ('' = libpq's default, the local socket); may list several
    port: str
    dbname: str


NOWHERE = Address("", "", "")  # not said (snapshots made by hand)


@dataclass(frozen=True)
class PostgresSnapshot:
    taken_at: float
    target: str
    server_version: str
    max_connections: int
    superuser_reserved_connections: int
    timeouts_seconds: dict[str, float]  # 0 = disabled
    can_read_all_stats: bool  # pg_monitor / pg_read_all_stats: other roles' details visible
    activity: tuple[ActivityGroup, ...]
    oldest_transactions: tuple[Session, ...]
    blocked: tuple[BlockedSession, ...]
    blockers: tuple[Session, ...]  # details of every pid that blocks another
    tables: tuple[TableStats, ...]
    databases: tuple[DatabaseSize, ...] = ()
    # bytes per second, least squares over the source's recent size samples (None until it has
    # enough): what the doctor needs to say how soon a database reaches its size limit
    growth_bytes_per_second: dict[str, float] = field(default_factory=dict)
    involved: Involved = field(default_factory=Involved)
    # each activity group's backends, in the order of `activity` (empty when not read)
    group_pids: tuple[tuple[int, ...], ...] = ()
    address: Address = NOWHERE

    def group_of(self, pid: int) -> ActivityGroup | None:
        """The activity group a backend is in: its database, role, application, state and
        wait event (the group's ages are its oldest member's)."""
        return self._groups_by_pid.get(pid)

    @cached_property
    def _groups_by_pid(self) -> dict[int, ActivityGroup]:
        return {pid: group for group, pids in zip(self.activity, self.group_pids, strict=False)
                for pid in pids}
