"""PostgreSQL snapshot -> metric families. Pure: no I/O, no clock. Each metric's spec (name,
labels, meaning) is declared here, beside the builder that emits it."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from operator import attrgetter, itemgetter

from prometheus_client.core import Metric

from exporter.labels import OTHER, Folder, bounded_max, bounded_sum, clean, keep_top
from exporter.metricspec import MetricOptions, MetricSpec, Specs
from exporter.postgres.activity import MAX_BLOCKERS_ASKED, added_up, session_weights
from exporter.postgres.snapshot import (
    ActivityGroup,
    PostgresSnapshot,
    StatementStats,
    TableStats,
)

TRANSACTION_STATES = ("active", "idle in transaction", "idle in transaction (aborted)")


_pg = Specs("postgres")


UP = _pg("postgres_up", "target", "1 if the last poll of this PostgreSQL succeeded, else 0.")
SERVER_INFO = _pg("postgres_server_info", "target version",
                  "Always 1; the server version as a label.")
CONNECTIONS = _pg(
    "postgres_connections", "target datname usename application_name state",
    "Client backends by database, role, application and state (the exporter's own session "
    "excluded). Label values beyond the top N fold into 'other'.")
MAX_CONNECTIONS = _pg("postgres_max_connections", "target", "The max_connections setting.")
SUPERUSER_RESERVED = _pg(
    "postgres_superuser_reserved_connections", "target",
    "The superuser_reserved_connections setting: slots ordinary roles cannot use.")
TRANSACTION_MAX_AGE = _pg(
    "postgres_transaction_max_age_seconds", "target datname application_name state",
    "Age of the oldest open transaction (now - xact_start) per database, application and "
    "state: active, idle in transaction, idle in transaction (aborted).")
CLIENT_READ_SESSIONS = _pg(
    "postgres_client_read_in_transaction_sessions", "target",
    "Active statements waiting on Client/ClientRead: the client stopped sending "
    "mid-statement (a COPY, a blocked event loop). Idle and idle-in-transaction sessions, "
    "which always wait on ClientRead, are not counted.")
CLIENT_READ_MAX_AGE = _pg(
    "postgres_client_read_in_transaction_max_age_seconds", "target",
    "How long the longest such stall has lasted (now - state_change); 0 when none.")
WAIT_EVENT_SESSIONS = _pg(
    "postgres_wait_event_sessions", "target wait_event_type wait_event",
    "Non-idle client sessions by wait event ('' = running on CPU, not waiting).")
BLOCKED_SESSIONS = _pg("postgres_blocked_sessions", "target",
                       "Sessions waiting on a heavyweight lock held by another session.")
BLOCKED_MAX_WAIT = _pg(
    "postgres_blocked_max_wait_seconds", "target",
    "Longest wait among blocked sessions (now - state_change of the waiting statement); "
    "0 when none.")
BLOCKED_BY_RELATION = _pg(
    "postgres_blocked_sessions_by_relation", "target schema table",
    "Blocked sessions by the table they wait on (pg_locks, read only while sessions are "
    "blocked): a row lock's waiters count on the row's table. schema and table '' when the "
    "lock is on no table of this database (an advisory lock, a transaction id without a row, "
    "another database); tables beyond the top N fold into schema and table 'other'. No series "
    "while nothing is blocked.")
BLOCKING_SESSIONS = _pg(
    "postgres_blocking_sessions", "target",
    "Distinct sessions that block at least one other session (pg_blocking_pids, asked for the "
    f"{MAX_BLOCKERS_ASKED} longest lock waits).")
OLDEST_TRANSACTIONS = _pg(
    "postgres_oldest_transaction_age_seconds",
    "target rank pid datname usename application_name client_addr state wait_event",
    "The N oldest open transactions (rank 1 = oldest) with who holds them; value = age. "
    "Bounded by --top-transactions; 0 disables.")
LISTEN_SESSIONS = _pg(
    "postgres_listen_sessions", "target channel",
    "Sessions whose last statement is LISTEN, by channel. One Prefect background-services "
    "copy holds one LISTEN \"prefect_automation_changes\".")
SETTING_SECONDS = _pg(
    "postgres_setting_seconds", "target name",
    "Timeout settings in seconds (0 = disabled): idle_in_transaction_session_timeout, "
    "statement_timeout, lock_timeout, tcp_keepalives_idle.")
TABLE_LIVE = _pg("postgres_table_live_tuples", "target schema table",
                 "Estimated live rows of Prefect's hot tables.")
TABLE_DEAD = _pg("postgres_table_dead_tuples", "target schema table",
                 "Estimated dead rows of Prefect's hot tables, waiting for vacuum.")
TABLE_LAST_VACUUM = _pg("postgres_table_last_vacuum_timestamp_seconds", "target schema table",
                        "Unix time of the last manual VACUUM of a hot table (0 = never).")
TABLE_LAST_AUTOVACUUM = _pg("postgres_table_last_autovacuum_timestamp_seconds",
                            "target schema table",
                            "Unix time of the last autovacuum of a hot table (0 = never).")

TABLE_SIZE = _pg("postgres_table_size_bytes", "target schema table",
                 "Size of a hot table with its indexes and TOAST (pg_total_relation_size).")
TABLE_INSERTED = _pg("postgres_table_inserted_rows_total", "target schema table",
                     "Rows inserted into a hot table (n_tup_ins) since statistics were reset. "
                     "rate() of this minus rate() of deleted: is cleanup keeping up?",
                     "counter")
TABLE_DELETED = _pg("postgres_table_deleted_rows_total", "target schema table",
                    "Rows deleted from a hot table (n_tup_del): Prefect's retention and "
                    "db_vacuum at work.", "counter")
TABLE_MODIFIED_SINCE_ANALYZE = _pg(
    "postgres_table_modified_since_analyze_rows", "target schema table",
    "Rows of a hot table inserted, updated or deleted since its last ANALYZE "
    "(n_mod_since_analyze): how far the planner's statistics are behind.")
TABLE_LAST_ANALYZE = _pg(
    "postgres_table_last_analyze_timestamp_seconds", "target schema table",
    "Unix time of the last ANALYZE of a hot table, manual or autovacuum's, the later "
    "(0 = never).")
INVALID_INDEXES = _pg(
    "postgres_invalid_indexes", "target",
    "Invalid indexes in the watched database (pg_index.indisvalid false), builds in progress "
    "left out: left by a failed CREATE INDEX CONCURRENTLY or REINDEX CONCURRENTLY. The planner "
    "ignores them; writes still maintain them. The doctor names them.")
INDEX_BUILDS = _pg(
    "postgres_index_build_done_ratio", "target schema table index command phase",
    "CREATE INDEX / REINDEX running in the watched database (pg_stat_progress_create_index): "
    "share of the current phase done (-1 when the phase has no measure). No series when none "
    "runs.")
DEADLOCKS = _pg("postgres_deadlocks_total", "target datname",
                "Deadlocks detected in each database (pg_stat_database.deadlocks) since the "
                "statistics were reset. Databases beyond the top N by size fold into 'other' "
                "(never the watched one).", "counter")
WATCHED_DATABASE = _pg("postgres_watched_database_info", "target datname",
                       "Always 1; the database the target's DSN names, which the exporter "
                       "watches (Prefect's: its hot tables, indexes and statements are read "
                       "there). Join on datname to tell Prefect's database from the others of "
                       "the server (postgres_deadlocks_total, postgres_database_size_bytes).")
_STATEMENT = ("of one of the top N statements of the watched database by total execution time "
              "(pg_stat_statements, summed over roles; read at most once a minute; "
              "--top-statements). The statement itself is on /statements, masked, never a label.")
STATEMENT_SECONDS = _pg("postgres_statement_seconds_total", "target queryid",
                        "Total execution time " + _STATEMENT, "counter")
STATEMENT_CALLS = _pg("postgres_statement_calls_total", "target queryid", "Calls " + _STATEMENT,
                      "counter")
STATEMENT_ROWS = _pg("postgres_statement_rows_total", "target queryid",
                     "Rows returned or affected " + _STATEMENT, "counter")
OLDEST_ROW_AGE = _pg(
    "prefect_table_oldest_row_age_seconds", "target schema table column",
    "How far back a big Prefect table goes: now - min(column) over an indexed timestamp "
    "(flow_run, task_run: end_time; log: timestamp; artifact, event_resources: updated; "
    "events: occurred). Only where the exporter's role was granted SELECT on that column "
    "(pg_monitor cannot read Prefect's rows); read at most once a minute. Against "
    "prefect_table_retention_seconds: the retention backlog.")
DATABASE_SIZE = _pg("postgres_database_size_bytes", "target datname",
                    "Size of each database on disk (pg_database_size), read every "
                    "database_size_interval_seconds (a minute by default). Databases beyond the "
                    "top N by size fold into 'other' (never the watched one).")

SPECS: tuple[MetricSpec, ...] = (
    UP, SERVER_INFO, CONNECTIONS, MAX_CONNECTIONS, SUPERUSER_RESERVED, TRANSACTION_MAX_AGE,
    CLIENT_READ_SESSIONS, CLIENT_READ_MAX_AGE, WAIT_EVENT_SESSIONS, BLOCKED_SESSIONS,
    BLOCKED_MAX_WAIT, BLOCKED_BY_RELATION, BLOCKING_SESSIONS, OLDEST_TRANSACTIONS,
    LISTEN_SESSIONS, SETTING_SECONDS,
    TABLE_LIVE, TABLE_DEAD, TABLE_LAST_VACUUM, TABLE_LAST_AUTOVACUUM, TABLE_SIZE, TABLE_INSERTED,
    TABLE_DELETED, TABLE_MODIFIED_SINCE_ANALYZE, TABLE_LAST_ANALYZE, DATABASE_SIZE, DEADLOCKS,
    WATCHED_DATABASE,
    INVALID_INDEXES, INDEX_BUILDS, STATEMENT_SECONDS, STATEMENT_CALLS, STATEMENT_ROWS,
    OLDEST_ROW_AGE)


_CONNECTION_LABELS = attrgetter("datname", "usename", "application_name", "state")
_FIRST, _SECOND = itemgetter(0), itemgetter(1)


@dataclass(frozen=True)
class _Folders:
    """The bounded labels from the database, each decided once per snapshot."""

    datname: Folder
    usename: Folder
    application_name: Folder


def _folders(groups: tuple[ActivityGroup, ...], top_n: int) -> _Folders:
    return _Folders(*(_folder(groups, attrgetter(field), top_n)
                      for field in ("datname", "usename", "application_name")))


def _folder(groups: tuple[ActivityGroup, ...], value_of: Callable[[ActivityGroup], str],
            top_n: int) -> Folder:
    """The values of one field, weighted by sessions only when some must fold (the common
    case, a few application names, needs no weights; neither does every name kept)."""
    values = set(map(value_of, groups))
    if len(values) <= top_n:
        return Folder(values, top_n)
    return Folder(session_weights(value_of, groups), top_n)


def _exported(groups: tuple[ActivityGroup, ...], f: _Folders) -> list[ActivityGroup]:
    """The groups under the labels they are exported with (datname, usename and application
    beyond the top N as OTHER), added up: on a busy server hundreds of groups, one per
    application, become a few tens, which every family of the sessions then reads. The source
    folds them as it reads them (snap.exported); this is for a snapshot without them."""
    db, user, app = f.datname, f.usename, f.application_name
    return added_up((db[g[0]], user[g[1]], app[g[2]], *g[3:]) for g in groups)


def postgres_families(snap: PostgresSnapshot, options: MetricOptions) -> Iterator[Metric]:
    top_n = options.label_top_n
    target = snap.target
    exported = (snap.exported.groups if snap.exported and snap.exported.top_n == top_n
                else _exported(snap.activity, _folders(snap.activity, top_n)))
    yield _server_info(snap, target)
    yield from _connection_limits(snap, target)
    yield _connections(exported, target)
    yield _transaction_max_age(exported, target)
    yield from _client_read(exported, target)
    yield _wait_events(exported, target, top_n)
    yield from _blocking(snap, target)
    yield _blocked_by_relation(snap, target, top_n)
    yield _oldest_transactions(snap, target)
    yield _listen(exported, target, top_n)
    yield _settings(snap, target)
    yield from _tables(snap, target)
    yield from _databases(snap, target, top_n)
    yield from _watched_database(snap, target)
    yield from _indexes(snap, target)
    yield from _statements(snap, target)
    yield _oldest_rows(snap, target)


def _server_info(snap: PostgresSnapshot, target: str) -> Metric:
    return SERVER_INFO.sample([target, snap.server_version], 1)


def _connection_limits(snap: PostgresSnapshot, target: str) -> Iterator[Metric]:
    for metric_spec, value in ((MAX_CONNECTIONS, snap.max_connections),
                               (SUPERUSER_RESERVED, snap.superuser_reserved_connections)):
        yield metric_spec.sample([target], value)


def _connections(exported: Sequence[ActivityGroup], target: str) -> Metric:
    # sessions per label set, counted in C: a Counter of the groups, then the few groups of more
    # than one session add the rest (with every application kept there are thousands of groups;
    # the idle sessions folded are one group of thousands)
    counts = session_weights(_CONNECTION_LABELS, exported)
    rows = sorted(counts.items())
    metric = CONNECTIONS.family()
    metric.add_rows(map((target,).__add__, map(_FIRST, rows)), map(_SECOND, rows))
    return metric


def _transaction_max_age(exported: Sequence[ActivityGroup], target: str) -> Metric:
    ages = bounded_max(((g.datname, g.application_name, g.state), g.max_transaction_age)
                       for g in exported
                       if g.max_transaction_age is not None and g.state in TRANSACTION_STATES)
    metric = TRANSACTION_MAX_AGE.family()
    for labels, value in sorted(ages.items()):
        metric.add_metric([target, *labels], value)
    return metric


def _client_read(exported: Sequence[ActivityGroup], target: str) -> Iterator[Metric]:
    stalled = [g for g in exported if g.client_read_in_transaction]
    count = CLIENT_READ_SESSIONS.sample([target], sum(g.sessions for g in stalled))
    age = CLIENT_READ_MAX_AGE.family()
    age.add_metric([target], max((g.max_state_age or 0.0 for g in stalled), default=0.0))
    yield count
    yield age


def _wait_events(exported: Sequence[ActivityGroup], target: str, top_n: int) -> Metric:
    busy = [g for g in exported if g.state != "idle"]
    weights: Counter[str] = Counter()
    for g in busy:
        weights[g.wait_event] += g.sessions
    event = Folder(weights, top_n)
    counts = bounded_sum(((g.wait_event_type, event(g.wait_event) if g.wait_event else ""),
                          g.sessions) for g in busy)
    metric = WAIT_EVENT_SESSIONS.family()
    for labels, value in sorted(counts.items()):
        metric.add_metric([target, *labels], value)
    return metric


def _blocking(snap: PostgresSnapshot, target: str) -> Iterator[Metric]:
    blocked = BLOCKED_SESSIONS.sample([target], len(snap.blocked))
    longest = BLOCKED_MAX_WAIT.family()
    longest.add_metric([target], max((b.wait_seconds for b in snap.blocked), default=0.0))
    blocking = BLOCKING_SESSIONS.sample([target],
                                        len({pid for b in snap.blocked for pid in b.blocked_by}))
    yield blocked
    yield longest
    yield blocking


def _blocked_by_relation(snap: PostgresSnapshot, target: str, top_n: int) -> Metric:
    waits_on = snap.involved.waits_on
    counts: Counter[tuple[str, str]] = Counter(
        (waits_on[b.pid].schema, waits_on[b.pid].table) if b.pid in waits_on else ("", "")
        for b in snap.blocked)
    # '' is no table's name: always its own series, never folded (one series at most)
    kept = keep_top({k: n for k, n in counts.items() if k != ("", "")}, top_n) | {("", "")}
    folded = bounded_sum(((clean(schema), clean(table)) if (schema, table) in kept
                          else (OTHER, OTHER), n) for (schema, table), n in counts.items())
    metric = BLOCKED_BY_RELATION.family()
    for (schema, table), value in sorted(folded.items()):
        metric.add_metric([target, schema, table], value)
    return metric


def _oldest_transactions(snap: PostgresSnapshot, target: str) -> Metric:
    metric = OLDEST_TRANSACTIONS.family()
    for rank, s in enumerate(snap.oldest_transactions, start=1):
        metric.add_metric(
            [target, str(rank), str(s.pid), clean(s.datname), clean(s.usename),
             clean(s.application_name), s.client_addr, s.state, s.wait_event],
            s.transaction_age or 0.0)
    return metric


def _listen(exported: Sequence[ActivityGroup], target: str, top_n: int) -> Metric:
    channels: Counter[str] = Counter()
    for g in exported:
        if g.listen_channel:
            channels[g.listen_channel] += g.sessions
    channel_of = Folder(channels, top_n)
    metric = LISTEN_SESSIONS.family()
    for channel, value in sorted(bounded_sum((channel_of(c), n)
                                             for c, n in channels.items()).items()):
        metric.add_metric([target, channel], value)
    return metric


def _settings(snap: PostgresSnapshot, target: str) -> Metric:
    metric = SETTING_SECONDS.family()
    for name, seconds in sorted(snap.timeouts_seconds.items()):
        metric.add_metric([target, name], seconds)
    return metric


TABLE_COLUMNS: tuple[tuple[MetricSpec, Callable[[TableStats], float]], ...] = (
    (TABLE_LIVE, lambda t: t.live_tuples),
    (TABLE_DEAD, lambda t: t.dead_tuples),
    (TABLE_LAST_VACUUM, lambda t: t.last_vacuum or 0.0),
    (TABLE_LAST_AUTOVACUUM, lambda t: t.last_autovacuum or 0.0),
    (TABLE_SIZE, lambda t: t.total_bytes),
    (TABLE_INSERTED, lambda t: t.inserted_rows),
    (TABLE_DELETED, lambda t: t.deleted_rows),
    (TABLE_MODIFIED_SINCE_ANALYZE, lambda t: t.modified_since_analyze),
    (TABLE_LAST_ANALYZE, lambda t: t.last_analyze or 0.0),
)


def _tables(snap: PostgresSnapshot, target: str) -> Iterator[Metric]:
    for metric_spec, value_of in TABLE_COLUMNS:
        metric = metric_spec.family()
        for table in snap.tables:
            metric.add_metric([target, table.schema, table.table], value_of(table))
        yield metric


def _databases(snap: PostgresSnapshot, target: str, top_n: int) -> Iterator[Metric]:
    name_of = _database_names(snap, top_n)
    sizes = bounded_sum((name_of(d.datname), d.bytes) for d in snap.databases)
    deadlocks = bounded_sum((name_of(d.datname), d.deadlocks) for d in snap.databases)
    for metric_spec, values in ((DATABASE_SIZE, sizes), (DEADLOCKS, deadlocks)):
        metric = metric_spec.family()
        for datname, value in sorted(values.items()):
            metric.add_metric([target, datname], value)
        yield metric


def _database_names(snap: PostgresSnapshot, top_n: int) -> Folder:
    """The databases' names as exported: the watched one always keeps its name (its alerts
    join on it), the others the top N - 1 by size; the rest fold into other."""
    watched = snap.database
    others = {d.datname: d.bytes for d in snap.databases if d.datname != watched}
    names = Folder(others, max(top_n - 1, 0) if watched else top_n)
    if watched:
        names[watched] = clean(watched)
    return names


def _watched_database(snap: PostgresSnapshot, target: str) -> Iterator[Metric]:
    if snap.database:
        yield WATCHED_DATABASE.sample([target, clean(snap.database)], 1)


def _indexes(snap: PostgresSnapshot, target: str) -> Iterator[Metric]:
    yield INVALID_INDEXES.sample([target], snap.invalid_index_count)
    builds = INDEX_BUILDS.family()
    for b in snap.index_builds:  # a handful at most: one per backend building an index
        builds.add_metric([target, clean(b.schema), clean(b.table), clean(b.name), b.command,
                           b.phase], -1.0 if b.done_ratio is None else b.done_ratio)
    yield builds


STATEMENT_COLUMNS: tuple[tuple[MetricSpec, Callable[[StatementStats], float]], ...] = (
    (STATEMENT_SECONDS, lambda s: s.seconds),
    (STATEMENT_CALLS, lambda s: s.calls),
    (STATEMENT_ROWS, lambda s: s.rows),
)


def _statements(snap: PostgresSnapshot, target: str) -> Iterator[Metric]:
    top = snap.top_statements.statements if snap.top_statements else ()
    for metric_spec, value_of in STATEMENT_COLUMNS:
        metric = metric_spec.family()
        for statement in top:  # at most --top-statements
            metric.add_metric([target, str(statement.queryid)], value_of(statement))
        yield metric


def _oldest_rows(snap: PostgresSnapshot, target: str) -> Metric:
    metric = OLDEST_ROW_AGE.family()
    for r in snap.oldest_rows:  # six tables at most
        if r.age_seconds is not None:
            metric.add_metric([target, clean(r.schema), r.table, r.column], r.age_seconds)
    return metric
