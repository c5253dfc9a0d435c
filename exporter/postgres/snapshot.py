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


class Exported(NamedTuple):
    """The sessions as the metrics export them with top_n values kept per label (the rest
    OTHER), folded by the source as it read them: the families of the sessions read these few
    groups instead of folding hundreds (exporter/postgres/activity.py)."""

    top_n: int
    groups: tuple[ActivityGroup, ...]


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
    # rows changed since the last ANALYZE (n_mod_since_analyze): the planner's estimates for
    # this table are that far behind
    modified_since_analyze: int = 0
    last_analyze: float | None = None  # unix time, the later of manual and auto ANALYZE
    # the table's own autovacuum storage parameters (reloptions autovacuum_*=...), e.g.
    # "autovacuum_enabled=false": what keeps autovacuum from analyzing it
    autovacuum_options: tuple[str, ...] = ()


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
    deadlocks: int = 0  # pg_stat_database.deadlocks since the statistics were reset


class InvalidIndex(NamedTuple):
    """An index of the watched database that is not valid (pg_index.indisvalid false) and not
    being built: what a failed CREATE INDEX CONCURRENTLY or REINDEX CONCURRENTLY leaves. The
    planner never uses it, and writes still maintain it."""

    schema: str
    name: str  # the index's
    table: str
    unique: bool
    definition: str  # pg_get_indexdef: the CREATE statement to run again


class IndexBuild(NamedTuple):
    """A CREATE INDEX or REINDEX running in the watched database (pg_stat_progress_create_index)."""

    pid: int
    schema: str
    table: str
    name: str  # the index's; '' until a concurrent build has created its catalog entry
    command: str  # CREATE INDEX CONCURRENTLY, REINDEX, ...
    phase: str
    done_ratio: float | None  # the phase's blocks or tuples done / total, None when unknown


class OldestRow(NamedTuple):
    """How far back a Prefect table goes: min() of one indexed timestamp column
    (exporter/postgres/oldest.py). Prefect's tables are not pg_monitor's to read: only where
    the exporter's role was granted SELECT on that one column."""

    schema: str
    table: str
    column: str
    readable: bool  # the exporter's role may SELECT the column
    age_seconds: float | None = None  # now - min(column); None: not readable, or empty


class StatementStats(NamedTuple):
    """One statement of pg_stat_statements in the watched database, summed over the roles that
    ran it (its rows are per role, database, queryid and nesting level)."""

    queryid: int
    calls: int
    seconds: float  # total execution time
    rows: int
    fingerprint: str  # every literal masked (exporter/incidents/fingerprint.py); '' if unknown


@dataclass(frozen=True)
class TopStatements:
    """The statements with the most execution time, read at most once a minute
    (exporter/postgres/statements.py)."""

    checked_at: float  # unix time of the read
    status: str  # "read", or why not: "not installed", "not loaded", "unreadable (SQLSTATE)"
    statements: tuple[StatementStats, ...] = ()  # most total time first


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
    database: str = ""  # the watched database (the DSN's): invalid indexes, builds
    invalid_indexes: tuple[InvalidIndex, ...] = ()  # the first MAX_INVALID_INDEXES by name
    invalid_index_count: int = 0  # all of them
    index_builds: tuple[IndexBuild, ...] = ()
    top_statements: TopStatements | None = None  # None: not asked for (--no-statements)
    role: str = ""  # the exporter's own role (current_user): whom a GRANT names
    oldest_rows: tuple[OldestRow, ...] = ()  # the Prefect tables present, read once a minute
    # each activity group's backends, in the order of `activity` (empty when not read)
    group_pids: tuple[tuple[int, ...], ...] = ()
    exported: Exported | None = None  # `activity` as exported, when the source folded it
    address: Address = NOWHERE

    def group_of(self, pid: int) -> ActivityGroup | None:
        """The activity group a backend is in: its database, role, application, state and
        wait event (the group's ages are its oldest member's)."""
        return self._groups_by_pid.get(pid)

    @cached_property
    def _groups_by_pid(self) -> dict[int, ActivityGroup]:
        return {pid: group for group, pids in zip(self.activity, self.group_pids, strict=False)
                for pid in pids}
