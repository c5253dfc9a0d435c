"""PostgreSQL source: pg_stat_activity, locks, settings and hot-table vacuum state.

One long-lived asyncpg connection, never inside a transaction (asyncpg autocommits unless told
otherwise), read-only, with its own application_name and statement_timeout. Its own backend is
excluded from everything it reports. Everything here works for a role with only pg_monitor.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import asyncpg

from exporter.dsn import Target, redact
from exporter.incidents.fingerprint import fingerprint
from exporter.postgres.activity import (
    ACTIVITY_SQL,
    CLIENT_ADDR,
    ActivityRead,
    Ranking,
    activity,
    index_builds,
    read_blocked,
)
from exporter.postgres.growth import GrowthTracker
from exporter.postgres.involved import (
    LockRow,
    explicit_pids,
    involved_pids,
    stalls_past_thresholds,
    waited_on,
)
from exporter.postgres.oldest import COLUMNS_SQL as OLDEST_COLUMNS_SQL
from exporter.postgres.oldest import OldestRowsReader
from exporter.postgres.snapshot import (
    Address,
    BlockedSession,
    DatabaseSize,
    InvalidIndex,
    Involved,
    OldestRow,
    PostgresSnapshot,
    Session,
    TableStats,
)
from exporter.postgres.statements import EXTENSION_SQL, StatementsReader
from exporter.source import ErrorMap, SourceError, first_line, translated
from exporter.thresholds import thresholds as all_thresholds

APPLICATION_NAME = "prefect-pg-exporter"

# ----------------------------------------------------------------------------------------
# SQL, each beside the code that reads its columns.

# Without pg_monitor, backend_type (like state and query) reads NULL for other roles' sessions;
# those with a database and a role are client backends (autovacuum workers have no role).
CLIENT_BACKEND = """(backend_type = 'client backend'
       OR (backend_type IS NULL AND datname IS NOT NULL AND usename IS NOT NULL))"""

_SESSION_COLUMNS = f"""
       pid,
       coalesce(datname, '') AS datname,
       coalesce(usename, '') AS usename,
       coalesce(application_name, '') AS application_name,
       {CLIENT_ADDR} AS client_addr,
       coalesce(state, 'unknown') AS state,
       coalesce(wait_event_type, '') AS wait_event_type,
       coalesce(wait_event, '') AS wait_event,
       date_part('epoch', now() - xact_start) AS transaction_age,
       date_part('epoch', now() - state_change) AS state_age
"""


# The sessions incidents are about, by pid ($1, in the order shown: exporter/postgres/involved.py
# chooses them from the activity read), read again for their statements: query text only for
# these, and only when statements are shown (the other variant reads none).
# pg_stat_get_activity(pid) builds the row of that one backend only: a few of these cost less
# than a second read of every backend's. A session gone since is no row.
_INVOLVED = f"""
SELECT a.pid,
       coalesce(d.datname, '') AS datname,
       coalesce(r.rolname, '') AS usename,
       coalesce(a.application_name, '') AS application_name,
       {CLIENT_ADDR.replace("client_", "a.client_")} AS client_addr,
       coalesce(a.state, 'unknown') AS state,
       coalesce(a.wait_event_type, '') AS wait_event_type,
       coalesce(a.wait_event, '') AS wait_event,
       date_part('epoch', now() - a.xact_start) AS transaction_age,
       date_part('epoch', now() - a.state_change) AS state_age,
       {{statement}} AS statement
FROM unnest($1::int[]) WITH ORDINALITY AS wanted(pid, n)
CROSS JOIN LATERAL pg_stat_get_activity(wanted.pid) a
LEFT JOIN pg_database d ON d.oid = a.datid
LEFT JOIN pg_roles r ON r.oid = a.usesysid
ORDER BY wanted.n
"""
INVOLVED_SQL = _INVOLVED.format(statement="a.query")
INVOLVED_NO_TEXT_SQL = _INVOLVED.format(statement="NULL::text")


class InvolvedRow(NamedTuple):
    """A row of INVOLVED_SQL: the session, then its statement (raw: fingerprinted at once)."""

    session: Session
    statement: str | None


def _involved_rows(rows: Sequence[asyncpg.Record]) -> list[InvolvedRow]:
    width = len(Session._fields)
    return [InvolvedRow(Session._make(tuple(r)[:width]), r["statement"]) for r in rows]


# The tables the blocked sessions wait on. pg_locks takes the lock manager's partition locks,
# like pg_blocking_pids(), so it is read only when sessions are blocked, for those pids. Names
# resolve in this database (relations of other databases stay unknown) and for shared catalogs
# (database 0: ALTER ROLE waits on pg_authid).
LOCKS_SQL = """
SELECT l.pid, n.nspname AS "schema", c.relname AS "table", l.granted, l.locktype
FROM pg_locks l
JOIN pg_class c ON c.oid = l.relation AND c.relkind IN ('r', 'p', 'm')
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE l.pid = ANY($1::int[])
  AND l.database IN (0, (SELECT oid FROM pg_database WHERE datname = current_database()))
ORDER BY l.pid, l.granted, l.locktype
"""


TIMEOUT_SETTINGS = ("idle_in_transaction_session_timeout", "statement_timeout", "lock_timeout",
                    "idle_session_timeout", "tcp_keepalives_idle")

# reset_val, not setting: the exporter SETs its own timeouts, and reset_val is the value the
# server, database or role configuration gives (what a new session of this role gets).
SETTINGS_SQL = """
SELECT name, reset_val AS setting, unit
FROM pg_settings
WHERE name = ANY($1::text[])
"""
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "min": 60.0, "h": 3600.0, "d": 86400.0}

# PgBouncer refuses the read-only startup parameter: the DSN is a PgBouncer's, and through it,
# in transaction pooling, the session's SETs below would stay on a server connection that
# PgBouncer hands to Prefect next (Prefect's queries cut at the exporter's statement_timeout).
THROUGH_PGBOUNCER = (" (a PgBouncer? The exporter reads PostgreSQL directly: give it "
                     "PostgreSQL's host and port, and PgBouncer's admin console, database "
                     "pgbouncer, as PREFECT_PG_EXPORTER_PGBOUNCER_DSN)")

# pg_stat_get_activity() puts a row per backend, with its query text (up to
# track_activity_query_size), in a tuplestore that work_mem bounds; past it the rows go to a
# temporary file. At 5,000 backends with 1 kB queries that is 5 MB written every read (measured),
# and where temp_file_limit is lower the read fails: the exporter went blind on the largest
# servers. So the session's work_mem holds a row for every backend slot: twice the text (palloc
# rounds a chunk up to a power of two) and 512 bytes of the other columns. pg_stat_statements(),
# whose ranking reads every entry (pg_stat_statements.max, when it is loaded), gets 1 kB an
# entry (its rows, without text, take a 512-byte chunk). Never below the server's work_mem, at
# most 256 MB (past that it spills, as before). The memory is used only as far as backends and
# entries exist, for the length of a statement. current_setting(), not pg_settings: that view
# builds a row of every setting.
WORK_MEM_SQL = """
SELECT set_config('work_mem', greatest(
    pg_size_bytes(current_setting('work_mem')) / 1024,
    least(262144, greatest(
        (current_setting('max_connections')::int8 + current_setting('autovacuum_max_workers')::int8
         + current_setting('max_worker_processes')::int8
         + current_setting('max_wal_senders')::int8 + 16)
        * 2 * (pg_size_bytes(current_setting('track_activity_query_size')) + 512) / 1024,
        coalesce(current_setting('pg_stat_statements.max', true)::int8, 0))))::text || 'kB',
    false)
"""


def _settings(rows: Sequence[Mapping[str, Any]]) -> tuple[dict[str, str], dict[str, float]]:
    raw = {r["name"]: r["setting"] for r in rows}
    timeouts = {
        r["name"]: float(r["setting"]) * _UNIT_SECONDS[r["unit"]]
        for r in rows
        if r["name"] in TIMEOUT_SETTINGS and r["unit"] in _UNIT_SECONDS
    }
    return raw, timeouts


# pg_total_relation_size() reads file sizes: cheap for the few hot tables, and it needs no
# privilege on the table (pg_monitor reads it for Prefect's tables without their grants).
# It opens the table with ACCESS SHARE, though, and so waits behind an ACCESS EXCLUSIVE lock
# held or queued (a migration, a LOCK TABLE left open): the poll would time out and the
# exporter go blind exactly while Prefect hangs on that table. Such a table is sized from
# pg_class.relpages (its heap as of the last VACUUM or ANALYZE) for as long as the lock lasts.
# pg_locks is read once per poll for this (it takes the lock manager's partition locks briefly,
# like pg_blocking_pids(); a few hot tables cannot be checked more cheaply).
# n_mod_since_analyze and the last ANALYZE (manual or auto, the later; greatest() skips NULLs):
# how stale the planner's statistics are, the usual cause of /flow_runs/filter timing out at
# millions of rows. The table's autovacuum_* storage parameters say what keeps autovacuum off it.
_TABLES = """
SELECT s.schemaname AS "schema", s.relname AS "table", s.n_live_tup AS live_tuples,
       s.n_dead_tup AS dead_tuples,
       extract(epoch FROM s.last_vacuum)::float8 AS last_vacuum,
       extract(epoch FROM s.last_autovacuum)::float8 AS last_autovacuum,
       coalesce(CASE WHEN s.relid <> ALL (ARRAY(  -- uncorrelated: an InitPlan, run once
                    SELECT relation FROM pg_locks
                    WHERE locktype = 'relation' AND mode = 'AccessExclusiveLock'
                      AND relation IS NOT NULL))
                THEN pg_total_relation_size(s.relid) END,
                c.relpages::int8 * current_setting('block_size')::int8,
                0) AS total_bytes,
       s.n_tup_ins AS inserted_rows,
       s.n_tup_del AS deleted_rows,
       s.n_mod_since_analyze AS modified_since_analyze,
       date_part('epoch', greatest(s.last_analyze, s.last_autoanalyze)) AS last_analyze,
       ARRAY(SELECT o FROM unnest(c.reloptions) o WHERE o LIKE 'autovacuum%' ORDER BY o)
           AS autovacuum_options
FROM pg_stat_user_tables s
JOIN pg_class c ON c.oid = s.relid
WHERE s.relname = ANY(${hot_tables}::text[])
ORDER BY 1, 2
"""
TABLES_SQL = _TABLES.format(hot_tables=1)

# Every database the role may size (pg_monitor may size them all; a database it cannot
# connect to is left out rather than failing the poll), with its deadlocks: pg_stat_database
# counts them per database since the statistics were reset. pg_database_size() reads the size
# of every file of the database (thousands, for a Prefect database with years of partitions
# and indexes): sizes are read at most once a minute ({size_all}), and in between only for a
# database not sized yet ({sized}: those that were), NULL for the others.
_DATABASES = """
SELECT d.datname,
       CASE WHEN {size_all} OR NOT d.datname::text = ANY({sized}) THEN pg_database_size(d.oid)
       END AS bytes,
       coalesce(s.deadlocks, 0) AS deadlocks
FROM pg_database d
LEFT JOIN pg_stat_database s ON s.datid = d.oid
WHERE d.datallowconn AND NOT d.datistemplate
  AND (has_database_privilege(d.oid, 'CONNECT')
       OR pg_has_role(current_user, 'pg_read_all_stats', 'USAGE'))
ORDER BY 1
"""
DATABASES_SQL = _DATABASES.format(size_all="$1::bool", sized="$2::text[]")

# Invalid indexes of this database: what a failed CREATE INDEX CONCURRENTLY (Prefect 3.9's
# migrations build indexes so) or REINDEX CONCURRENTLY leaves behind. A concurrent build in
# progress is invalid too until it ends: the indexes being built (pg_stat_progress_create_index,
# visible to pg_monitor for every role) are left out, asked per invalid index only (every backend's
# progress is read for it). The catalogs need no privilege. Names are listed for the first
# MAX_INVALID_INDEXES, all are counted.
MAX_INVALID_INDEXES = 20
_INVALID_INDEXES = """
SELECT n.nspname AS "schema", c.relname AS name, t.relname AS "table",
       i.indisunique AS "unique", pg_get_indexdef(i.indexrelid) AS definition
FROM pg_index i
JOIN pg_class c ON c.oid = i.indexrelid
JOIN pg_class t ON t.oid = i.indrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE NOT i.indisvalid
  AND NOT EXISTS (SELECT FROM pg_stat_progress_create_index p
                  WHERE p.index_relid = i.indexrelid
                    AND p.datid = (SELECT oid FROM pg_database
                                   WHERE datname = current_database()))
ORDER BY 1, 2
"""
INVALID_INDEXES_SQL = _INVALID_INDEXES + f"LIMIT {MAX_INVALID_INDEXES}"

SETTING_NAMES = [*TIMEOUT_SETTINGS, "max_connections", "superuser_reserved_connections",
                 "server_version"]

# The server's context in one round trip ($1: SETTING_NAMES, $2: the hot tables, $3: whether to
# read the settings and every database's size, $4: the databases sized already): each statement
# is a transaction of its own, and at a poll's scale a round trip costs both sides about as
# much CPU as these small reads. Each part is one of the statements above, its rows as a JSON
# array of objects keyed by its column names. The settings and the sizes, most of this
# statement's cost, change slowly: they are read at most once a minute (by default) and
# on every new connection (a restart may have changed them); NULL settings in between.
CONTEXT_SQL = f"""
SELECT CASE WHEN $3 THEN (SELECT coalesce(json_agg(s), '[]') FROM ({SETTINGS_SQL}) s)::text
       END AS settings,
       (SELECT coalesce(json_agg(t), '[]') FROM ({_TABLES.format(hot_tables=2)}) t)::text AS tables,
       (SELECT coalesce(json_agg(d), '[]')
        FROM ({_DATABASES.format(size_all="$3::bool", sized="$4::text[]")}) d)::text AS databases,
       pg_has_role(current_user, 'pg_read_all_stats', 'USAGE') AS can_read_all_stats,
       current_database() AS database,
       (SELECT coalesce(json_agg(i), '[]') FROM ({INVALID_INDEXES_SQL}) i)::text
           AS invalid_indexes,
       (SELECT count(*) FROM ({_INVALID_INDEXES}) i) AS invalid_index_count,
       ({EXTENSION_SQL})::text AS statements_extension,
       current_user AS role,
       (SELECT coalesce(json_agg(o), '[]') FROM ({OLDEST_COLUMNS_SQL}) o)::text AS oldest_columns
"""


SIZES_EVERY_SECONDS = 60.0  # the default of database_size_interval_seconds


class Settings(NamedTuple):
    raw: dict[str, str]  # by name
    timeouts_seconds: dict[str, float]


class Context(NamedTuple):
    settings: Settings | None  # None: not read this time
    tables: tuple[TableStats, ...]
    databases: tuple[DatabaseSize, ...]  # bytes -1: not sized this time
    can_read_all_stats: bool
    database: str
    invalid_indexes: tuple[InvalidIndex, ...]
    invalid_index_count: int
    statements_extension: dict[str, str] | None  # pg_stat_statements' version and schema
    role: str
    oldest_columns: tuple[OldestRow, ...]  # without their ages


def _table(row: dict[str, Any]) -> TableStats:
    return TableStats(**{**row, "autovacuum_options": tuple(row["autovacuum_options"])})


def _database(row: dict[str, Any]) -> DatabaseSize:
    return DatabaseSize(row["datname"], -1 if row["bytes"] is None else row["bytes"],
                        row["deadlocks"])


def _context(row: asyncpg.Record) -> Context:
    settings = (None if row["settings"] is None
                else Settings(*_settings(json.loads(row["settings"]))))
    return Context(settings,
                   tuple(map(_table, json.loads(row["tables"]))),
                   tuple(map(_database, json.loads(row["databases"]))),
                   bool(row["can_read_all_stats"]),
                   row["database"],
                   tuple(InvalidIndex(**i) for i in json.loads(row["invalid_indexes"])),
                   row["invalid_index_count"],
                   json.loads(row["statements_extension"] or "null"),
                   row["role"],
                   tuple(OldestRow(**o) for o in json.loads(row["oldest_columns"])))


class _Slow(NamedTuple):
    """What the context reads at most once a minute, as last read."""

    read_at: float
    settings: Settings
    sizes: dict[str, int]  # by database: only those the last context listed


def _slow_part(last: _Slow | None, context: Context, now: float) -> _Slow:
    """The settings and sizes after this context: read now, or kept from the last read (a
    database sized this time between two full reads is a new one)."""
    known = {} if last is None else last.sizes
    sizes = {d.datname: d.bytes if d.bytes >= 0 else known[d.datname] for d in context.databases}
    if context.settings is not None:
        return _Slow(now, context.settings, sizes)
    assert last is not None  # the settings are read whenever nothing was
    return last._replace(sizes=sizes)


# ----------------------------------------------------------------------------------------


def _decode_lenient(data: bytes) -> str:
    return data.decode("utf-8", "replace")


async def _lenient_text(conn: asyncpg.Connection) -> None:
    """Decode text and names leniently. pg_stat_activity shows other databases' query text
    unconverted, so a SQL_ASCII database's session can put bytes there that are not UTF-8; a
    strict decoder would fail every poll and blind the exporter for as long as it lasts. Only
    after such bytes were seen: Python codecs cost about twice asyncpg's built-in ones."""
    for type_name in ("text", "name", "varchar"):
        await conn.set_type_codec(type_name, schema="pg_catalog", format="binary",
                                  encoder=str.encode, decoder=_decode_lenient)


# What a failed poll means: PostgreSQL answered with an error, or the network failed it.
# InternalClientError ("cannot switch to state ..; another operation is in progress"): asyncpg
# on a connection the server terminated while it sat idle (a restart, pg_terminate_backend).
QUERY_ERRORS: ErrorMap = (((asyncpg.PostgresError, asyncpg.InterfaceError), "query"),
                          ((TimeoutError, OSError, asyncpg.InternalClientError), "connect"))
# While connecting, every failure is a connect failure (ValueError: a DSN asyncpg refuses).
CONNECT_ERRORS: ErrorMap = (((TimeoutError, OSError, asyncpg.PostgresError,
                              asyncpg.InterfaceError, ValueError), "connect"),)


def address_of(target: Target) -> Address:
    """Where the target's DSN points (libpq's defaults where it says nothing), for the join of
    a PgBouncer's server connections to this target."""
    p = target.params
    return Address(p.get("host", ""), p.get("port", "5432"), p.get("dbname", p.get("user", "")))


class PostgresSource:
    kind = "postgres"

    def __init__(self, target: Target, *, statement_timeout_ms: int, connect_timeout: float,
                 top_transactions: int, hot_tables: Sequence[str], statements: bool = True,
                 thresholds: Mapping[str, float] | None = None, top_statements: int = 0,
                 label_top_n: int | None = None,
                 sizes_every_seconds: float = SIZES_EVERY_SECONDS) -> None:
        self.target = target.name
        self._target = target
        self._statement_timeout_ms = statement_timeout_ms
        self._connect_timeout = connect_timeout
        self._top_transactions = top_transactions
        # idle sessions of values beyond the top N are folded in SQL (None: none are)
        self._label_top_n = label_top_n
        self._hot_tables = list(hot_tables)
        self._conn: asyncpg.Connection | None = None
        self._lenient = False
        self._growth = GrowthTracker()
        self._statements = statements  # False: no query text is read (--no-statements)
        # pg_stat_statements' top N, read at most once a minute (none with --no-statements)
        self._top_statements = (StatementsReader(top_statements)
                                if statements and top_statements > 0 else None)
        self._oldest = OldestRowsReader()
        self._slow: _Slow | None = None  # the settings and sizes last read
        self._ranking: Ranking | None = None  # the labels' top N as last ranked
        self._sizes_every_seconds = sizes_every_seconds
        self._thresholds = all_thresholds(thresholds)

    def partial(self) -> None:
        """A failed poll publishes nothing: its reads are one statement's rows, all or none."""
        return None

    async def poll(self) -> PostgresSnapshot:
        try:
            with translated(QUERY_ERRORS, self._target.secrets()):
                try:
                    return await self._read(await self._connection())
                except UnicodeDecodeError:
                    if self._lenient:
                        raise
                    # bytes that are not UTF-8 (another database's query text, unconverted):
                    # from now on decode leniently, at some CPU cost, on a fresh connection
                    self._lenient = True
                    await self.close()
                    return await self._read(await self._connection())
        except SourceError:
            await self.close()
            raise

    async def _connection(self) -> asyncpg.Connection:
        if self._conn is not None and not self._conn.is_closed():
            return self._conn
        await self.close()
        self._slow = None  # a new connection (a restart?) reads the settings and sizes again
        prefix = f"cannot connect to {self._target.redacted()}: "
        with translated(CONNECT_ERRORS, self._target.secrets(), prefix):
            try:
                self._conn = await asyncpg.connect(
                    self._target.asyncpg_dsn(),
                    timeout=self._connect_timeout,
                    server_settings={"application_name": APPLICATION_NAME,
                                     "default_transaction_read_only": "on"},
                )
            except asyncpg.ProtocolViolationError as exc:
                if "unsupported startup parameter" not in str(exc):
                    raise
                raise SourceError("connect", prefix + redact(first_line(exc), list(
                    self._target.secrets())) + THROUGH_PGBOUNCER) from None
            if self._lenient:
                await _lenient_text(self._conn)
            # SET, not startup parameters: pg_settings.reset_val then still shows the server's
            # own values of these timeouts, which is what the exporter reports.
            timeout = str(self._statement_timeout_ms)
            for name in ("statement_timeout", "lock_timeout",
                         "idle_in_transaction_session_timeout"):
                await self._conn.execute(f"SET {name} = {timeout}")
            await self._conn.execute(WORK_MEM_SQL)
        return self._conn

    async def _read(self, conn: asyncpg.Connection) -> PostgresSnapshot:
        now = time.time()
        slow = self._slow
        full = slow is None or now - slow.read_at >= self._sizes_every_seconds
        context = _context((await conn.fetch(
            CONTEXT_SQL, SETTING_NAMES, self._hot_tables, full,
            [] if slow is None else list(slow.sizes)))[0])
        slow = self._slow = _slow_part(slow, context, now)
        rows = await conn.fetch(ACTIVITY_SQL)
        read = activity(rows, self._top_transactions,
                        self._label_top_n, self._ranking)
        self._ranking = read.ranking
        blocked = await read_blocked(conn, read.lock_waits)
        involved = await self._involved(conn, read, blocked)
        top_statements = (await self._top_statements.read(conn, context.statements_extension,
                                                          time.time())
                          if self._top_statements else None)
        oldest_rows = await self._oldest.read(conn, context.oldest_columns, time.time())
        blocker_pids = {pid for b in blocked for pid in b.blocked_by}
        blockers = tuple(s for s in involved.sessions if s.pid in blocker_pids)
        taken_at = time.time()
        raw_settings = slow.settings.raw
        databases = tuple(d._replace(bytes=slow.sizes[d.datname]) for d in context.databases)
        return PostgresSnapshot(
            taken_at=taken_at,
            target=self.target,
            server_version=raw_settings.get("server_version", ""),
            max_connections=int(raw_settings.get("max_connections", 0)),
            superuser_reserved_connections=int(
                raw_settings.get("superuser_reserved_connections", 0)),
            timeouts_seconds=slow.settings.timeouts_seconds,
            can_read_all_stats=context.can_read_all_stats,
            activity=read.groups,
            oldest_transactions=read.oldest,
            blocked=blocked,
            blockers=blockers,
            tables=context.tables,
            databases=databases,
            # the sizes as of when they were read
            growth_bytes_per_second=self._growth.update(slow.read_at, slow.sizes),
            involved=involved,
            group_pids=read.group_pids,
            exported=read.exported,
            address=address_of(self._target),
            database=context.database,
            invalid_indexes=context.invalid_indexes,
            invalid_index_count=context.invalid_index_count,
            index_builds=index_builds(rows),
            top_statements=top_statements,
            role=context.role,
            oldest_rows=oldest_rows,
        )

    async def _involved(self, conn: asyncpg.Connection, read: ActivityRead,
                        blocked: Sequence[BlockedSession]) -> Involved:
        """The sessions of the incidents of the moment, read only when there are some."""
        pids = explicit_pids(blocked)
        if not pids and not stalls_past_thresholds(read.summaries, self._thresholds):
            return Involved()
        wanted = involved_pids(pids, read.in_transaction, self._thresholds)
        rows = _involved_rows(await conn.fetch(
            INVOLVED_SQL if self._statements else INVOLVED_NO_TEXT_SQL, wanted))
        waits_on = (waited_on(map(LockRow._make, await conn.fetch(
            LOCKS_SQL, [b.pid for b in blocked]))) if blocked else {})
        # fingerprinted here, as it is read: raw query text never reaches a snapshot
        statements = {r.session.pid: fingerprint(r.statement) for r in rows if r.statement}
        return Involved(tuple(r.session for r in rows), statements, waits_on)

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            # terminate(), not close(): close() waits on the server, which may be the thing
            # that is stuck; the exporter must never add a second session while one lingers.
            conn.terminate()
