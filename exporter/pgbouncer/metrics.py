"""PgBouncer snapshot -> metric families. Pure: no I/O, no clock. Each metric's spec is declared
here, beside the builder that emits it; the names are prometheus-community/pgbouncer_exporter's
(0.11+, SHOW STATS_TOTALS) where they overlap, so its dashboards keep working."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence

from prometheus_client.core import Metric

from exporter.labels import OTHER, clean, keep_top
from exporter.metricspec import MetricOptions, MetricSpec, Specs
from exporter.pgbouncer.servers import pool_backends
from exporter.pgbouncer.snapshot import PgBouncerSnapshot, Pool
from exporter.postgres.snapshot import PostgresSnapshot
from exporter.source import Snapshot

MICROSECONDS = 1e-6

# (column or key, metric name suffix, meaning): each row is one metric.
POOL_COLUMNS: tuple[tuple[str, ...], ...] = (
    ("cl_active", "client_active_connections",
     "clients linked to a server connection or idle with no query waiting."),
    ("cl_waiting", "client_waiting_connections",
     "clients that sent a query and wait for a server connection: the pool is exhausted."),
    ("cl_active_cancel_req", "client_active_cancel_connections",
     "clients that forwarded a cancel request to the server."),
    ("cl_waiting_cancel_req", "client_waiting_cancel_connections",
     "clients whose cancel request is not yet forwarded."),
    ("sv_active", "server_active_connections", "server connections linked to a client."),
    ("sv_active_cancel", "server_active_cancel_connections",
     "server connections forwarding a cancel request."),
    ("sv_being_canceled", "server_being_canceled_connections",
     "server connections whose query is being cancelled."),
    ("sv_idle", "server_idle_connections", "server connections idle and ready to use."),
    ("sv_used", "server_used_connections",
     "server connections idle long enough to need server_check_query."),
    ("sv_tested", "server_testing_connections",
     "server connections running server_reset_query or server_check_query."),
    ("sv_login", "server_login_connections", "server connections logging in."),
)

DATABASE_COLUMNS: tuple[tuple[str, ...], ...] = (
    ("pool_size", "server connections allowed per pool (user) of this database."),
    ("min_pool_size", "server connections kept open at least."),
    ("reserve_pool", "extra server connections allowed when clients wait "
                     "(reserve_pool, reserve_pool_size since 1.24)."),
    ("max_connections", "server connections allowed for the database in all (0 = no limit)."),
    ("current_connections", "server connections open for the database."),
    ("paused", "1 if the database is PAUSEd."),
    ("disabled", "1 if the database is DISABLEd."),
)

STATS_TOTALS_COLUMNS: tuple[tuple[str, ...], ...] = (
    ("xact_count", "sql_transactions_pooled_total", "SQL transactions pooled."),
    ("query_count", "queries_pooled_total", "SQL queries pooled."),
    ("bytes_received", "received_bytes_total", "bytes received from clients."),
    ("bytes_sent", "sent_bytes_total", "bytes sent to clients."),
    ("xact_time", "server_in_transaction_seconds_total",
     "time server connections spent in transactions."),
    ("query_time", "queries_duration_seconds_total",
     "time server connections spent running queries."),
    ("wait_time", "client_wait_seconds_total",
     "time clients spent waiting for a server connection."),
    ("server_assignment_count", "server_assignments_total",
     "server connections assigned to clients (PgBouncer 1.23+)."),
    ("client_parse_count", "client_parses_total", "Parse messages from clients (1.24+)."),
    ("server_parse_count", "server_parses_total", "Parse messages sent to servers (1.24+)."),
    ("bind_count", "binds_total", "Bind messages from clients (1.24+)."),
)

CONFIG_KEYS: tuple[tuple[str, ...], ...] = (
    ("max_client_conn", "max_client_connections",
     ": client connections PgBouncer accepts in all."),
    ("max_user_connections", "max_user_connections",
     ": server connections per user (0 = no limit)."),
    ("max_db_connections", "max_db_connections",
     ": server connections per database (0 = no limit)."),
    ("default_pool_size", "default_pool_size", ": server connections per pool."),
    ("reserve_pool_size", "reserve_pool_size", ": extra connections when clients wait."),
    ("query_wait_timeout", "query_wait_timeout_seconds",
     ", seconds: a client waiting longer for a server is disconnected (0 = never)."),
    ("idle_transaction_timeout", "idle_transaction_timeout_seconds",
     ", seconds: a server idle in transaction longer is closed (0 = never)."),
    ("query_timeout", "query_timeout_seconds",
     ", seconds: queries running longer are cancelled (0 = never)."),
    ("max_prepared_statements", "max_prepared_statements",
     ": protocol-level prepared statements tracked per connection in transaction pooling "
     "(1.21+; 0 = off: asyncpg's statement caches then break through transaction pooling)."),
)

LIST_ITEMS: tuple[tuple[str, ...], ...] = (
    ("databases", "databases", "databases configured."),
    ("users", "users", "users known."),
    ("pools", "pools", "pools."),
    ("free_clients", "free_clients", "free client slots."),
    ("used_clients", "used_clients", "client connections in use."),
    ("login_clients", "login_clients", "clients logging in."),
    ("free_servers", "free_servers", "free server slots."),
    ("used_servers", "used_servers", "server connections in use."),
    ("dns_names", "cached_dns_names", "DNS names cached."),
    ("dns_zones", "cached_dns_zones", "DNS zones cached."),
    ("dns_queries", "in_flight_dns_queries", "DNS queries in flight."),
)



_pgb = Specs("pgbouncer")


POOL_LABELS = "target database user"
DATABASE_LABELS = "target name host port database force_user pool_mode"

UP = _pgb("pgbouncer_up", "target",
          "1 if the last poll of this PgBouncer's admin console succeeded, else 0.")
VERSION_INFO = _pgb("pgbouncer_version_info", "target version",
                    "Always 1; the PgBouncer version (SHOW VERSION) as a label.")
POOL_METRICS = tuple((column, _pgb(f"pgbouncer_pools_{name}", POOL_LABELS,
                                   f"SHOW POOLS {column}: {meaning}"))
                     for column, name, meaning in POOL_COLUMNS)
POOL_MAXWAIT = _pgb("pgbouncer_pools_client_maxwait_seconds", POOL_LABELS,
                    "How long the oldest waiting client of the pool has waited (maxwait + "
                    "maxwait_us, microsecond precision); 0 when none waits.")
POOL_MODE = _pgb("pgbouncer_pools_mode_info", POOL_LABELS + " pool_mode",
                 "Always 1; the pool's pool_mode (session, transaction, statement).")
DATABASE_METRICS = tuple((column, _pgb(f"pgbouncer_databases_{column}", DATABASE_LABELS,
                                       f"SHOW DATABASES: {meaning}"))
                         for column, meaning in DATABASE_COLUMNS)
STATS_TOTALS_METRICS = tuple((column, _pgb(f"pgbouncer_stats_totals_{name}", "target database",
                                           f"SHOW STATS_TOTALS {column}: {meaning}", "counter"))
                             for column, name, meaning in STATS_TOTALS_COLUMNS)
CONFIG_METRICS = tuple((key, _pgb(f"pgbouncer_config_{name}", "target",
                                  f"SHOW CONFIG {key}{meaning}"))
                       for key, name, meaning in CONFIG_KEYS)
CONFIG_POOL_MODE = _pgb("pgbouncer_config_pool_mode_info", "target pool_mode",
                        "Always 1; the global pool_mode. Transaction pooling needs Prefect's "
                        "asyncpg statement caches off.")
LIST_METRICS = tuple((item, _pgb(f"pgbouncer_{name}", "target", f"SHOW LISTS {item}: {meaning}"))
                     for item, name, meaning in LIST_ITEMS)

SERVER_BACKENDS = _pgb(
    "pgbouncer_pools_server_backend_connections", POOL_LABELS + " pg_state",
    "SHOW SERVERS joined to pg_stat_activity by remote_pid: the pool's server connections by "
    "what their backend does on the PostgreSQL target behind it (idle_in_transaction, "
    "waiting_on_lock, active, other; idle: none of these when PostgreSQL was read). Only for "
    "pools whose server is a "
    "configured PostgreSQL target.")

SPECS: tuple[MetricSpec, ...] = (
    UP, VERSION_INFO, *(s for _, s in POOL_METRICS), POOL_MAXWAIT, POOL_MODE, SERVER_BACKENDS,
    *(s for _, s in DATABASE_METRICS), *(s for _, s in STATS_TOTALS_METRICS),
    *(s for _, s in CONFIG_METRICS), CONFIG_POOL_MODE, *(s for _, s in LIST_METRICS))


def pgbouncer_families(snap: PgBouncerSnapshot, options: MetricOptions) -> Iterator[Metric]:
    target = snap.target
    yield VERSION_INFO.sample([target, snap.version], 1)
    yield from _pools(bounded_pools(snap.pools, options.label_top_n), target)
    yield from _databases(snap, target)
    yield from _stats(snap, target)
    yield from _config(snap, target)
    yield from _lists(snap, target)


def bounded_pools(pools: tuple[Pool, ...], top_n: int) -> list[Pool]:
    """At most top_n pools keep their (database, user); the least busy fold into one 'other'
    pool whose counts are summed and whose maxwait is the largest."""
    kept = keep_top({(p.database, p.user): sum(p.counts.values()) for p in pools}, top_n)
    result = [p for p in pools if (p.database, p.user) in kept]
    folded = [p for p in pools if (p.database, p.user) not in kept]
    if folded:
        counts: dict[str, int] = {}
        for p in folded:
            for column, value in p.counts.items():
                counts[column] = counts.get(column, 0) + value
        modes = {p.pool_mode for p in folded}
        result.append(Pool(OTHER, OTHER, modes.pop() if len(modes) == 1 else OTHER, counts,
                           max(p.maxwait_seconds for p in folded)))
    return result


def _pools(pools: list[Pool], target: str) -> Iterator[Metric]:
    for column, metric_spec in POOL_METRICS:
        metric = metric_spec.family()
        for pool in pools:
            if column in pool.counts:
                metric.add_metric([target, clean(pool.database), clean(pool.user)],
                                  pool.counts[column])
        yield metric
    maxwait = POOL_MAXWAIT.family()
    mode = POOL_MODE.family()
    for pool in pools:
        labels = [target, clean(pool.database), clean(pool.user)]
        maxwait.add_metric(labels, pool.maxwait_seconds)
        mode.add_metric([*labels, pool.pool_mode], 1)
    yield maxwait
    yield mode


def _databases(snap: PgBouncerSnapshot, target: str) -> Iterator[Metric]:
    for column, metric_spec in DATABASE_METRICS:
        metric = metric_spec.family()
        for db in snap.databases:
            if column in db.values:
                metric.add_metric([target, clean(db.name), clean(db.host), db.port,
                                   clean(db.database), clean(db.force_user), db.pool_mode],
                                  db.values[column])
        yield metric


def _stats(snap: PgBouncerSnapshot, target: str) -> Iterator[Metric]:
    for column, metric_spec in STATS_TOTALS_METRICS:
        scale = MICROSECONDS if column.endswith("_time") else 1
        metric = metric_spec.family()
        for stats in snap.stats:
            if column in stats.totals:
                metric.add_metric([target, clean(stats.database)], stats.totals[column] * scale)
        yield metric


def _config(snap: PgBouncerSnapshot, target: str) -> Iterator[Metric]:
    for key, metric_spec in CONFIG_METRICS:
        value = snap.config.get(key, "")
        if value.strip().isdigit():  # absent or unparsable on some version: no sample
            yield metric_spec.sample([target], int(value))
    if snap.config.get("pool_mode"):
        yield CONFIG_POOL_MODE.sample([target, snap.config["pool_mode"]], 1)


def _lists(snap: PgBouncerSnapshot, target: str) -> Iterator[Metric]:
    for item, metric_spec in LIST_METRICS:
        if item in snap.lists:
            yield metric_spec.sample([target], snap.lists[item])


def pgbouncer_joined(snap: PgBouncerSnapshot, others: Sequence[Snapshot],
                     options: MetricOptions) -> Iterator[Metric]:
    """The pools' server connections by their backend's state on PostgreSQL; pools beyond
    label_top_n fold into 'other' as bounded_pools folds them."""
    postgres = [s for s in others if isinstance(s, PostgresSnapshot)]
    if not postgres or not snap.servers:
        return
    kept = keep_top({(p.database, p.user): sum(p.counts.values()) for p in snap.pools},
                    options.label_top_n)
    counts: Counter[tuple[str, str, str]] = Counter()
    for pool in pool_backends(snap, postgres):
        key = ((pool.database, pool.user) if (pool.database, pool.user) in kept
               else (OTHER, OTHER))
        for b in pool.backends:
            counts[(clean(key[0]), clean(key[1]), b.pg_state)] += 1
    if not counts:
        return
    metric = SERVER_BACKENDS.family()
    for (database, user, pg_state), n in sorted(counts.items()):
        metric.add_metric([snap.target, database, user, pg_state], n)
    yield metric
