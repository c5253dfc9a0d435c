"""PgBouncer snapshot -> metric families. Pure: no I/O, no clock."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import Metric

from exporter.catalogue import (
    CONFIG_KEYS,
    DATABASE_COLUMNS,
    LIST_ITEMS,
    POOL_COLUMNS,
    STATS_TOTALS_COLUMNS,
    family,
)
from exporter.labels import OTHER, clean, keep_top
from exporter.sources.pgbouncer import PgBouncerSnapshot, Pool

MICROSECONDS = 1e-6


def pgbouncer_families(snap: PgBouncerSnapshot, target: str, top_n: int) -> Iterator[Metric]:
    version = family("pgbouncer_version_info")
    version.add_metric([target, snap.version], 1)
    yield version
    yield from _pools(bounded_pools(snap.pools, top_n), target)
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
    for column, name, _ in POOL_COLUMNS:
        metric = family(f"pgbouncer_pools_{name}")
        for pool in pools:
            if column in pool.counts:
                metric.add_metric([target, clean(pool.database), clean(pool.user)],
                                  pool.counts[column])
        yield metric
    maxwait = family("pgbouncer_pools_client_maxwait_seconds")
    mode = family("pgbouncer_pools_mode_info")
    for pool in pools:
        labels = [target, clean(pool.database), clean(pool.user)]
        maxwait.add_metric(labels, pool.maxwait_seconds)
        mode.add_metric([*labels, pool.pool_mode], 1)
    yield maxwait
    yield mode


def _databases(snap: PgBouncerSnapshot, target: str) -> Iterator[Metric]:
    for column, _ in DATABASE_COLUMNS:
        metric = family(f"pgbouncer_databases_{column}")
        for db in snap.databases:
            if column in db.values:
                metric.add_metric([target, clean(db.name), clean(db.host), db.port,
                                   clean(db.database), clean(db.force_user), db.pool_mode],
                                  db.values[column])
        yield metric


def _stats(snap: PgBouncerSnapshot, target: str) -> Iterator[Metric]:
    for column, name, _ in STATS_TOTALS_COLUMNS:
        scale = MICROSECONDS if column.endswith("_time") else 1
        metric = family(f"pgbouncer_stats_totals_{name}")
        for stats in snap.stats:
            if column in stats.totals:
                metric.add_metric([target, clean(stats.database)], stats.totals[column] * scale)
        yield metric


def _config(snap: PgBouncerSnapshot, target: str) -> Iterator[Metric]:
    for key, name, _ in CONFIG_KEYS:
        value = snap.config.get(key, "")
        if value.strip().isdigit():  # absent or unparsable on some version: no sample
            metric = family(f"pgbouncer_config_{name}")
            metric.add_metric([target], int(value))
            yield metric
    if snap.config.get("pool_mode"):
        mode = family("pgbouncer_config_pool_mode_info")
        mode.add_metric([target, snap.config["pool_mode"]], 1)
        yield mode


def _lists(snap: PgBouncerSnapshot, target: str) -> Iterator[Metric]:
    for item, name, _ in LIST_ITEMS:
        if item in snap.lists:
            metric = family(f"pgbouncer_{name}")
            metric.add_metric([target], snap.lists[item])
            yield metric
