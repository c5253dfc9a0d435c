"""PostgreSQL snapshot -> metric families. Pure: no I/O, no clock."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client.core import Metric

from exporter.catalogue import family
from exporter.labels import Folder, bounded_max, bounded_sum, clean
from exporter.sources.postgres import ActivityGroup, PostgresSnapshot

TRANSACTION_STATES = ("active", "idle in transaction", "idle in transaction (aborted)")


@dataclass(frozen=True)
class _Folders:
    """The bounded labels from the database, each decided once per snapshot."""

    datname: Folder
    usename: Folder
    application_name: Folder


def _folders(groups: tuple[ActivityGroup, ...], top_n: int) -> _Folders:
    dbs: Counter[str] = Counter()
    users: Counter[str] = Counter()
    apps: Counter[str] = Counter()
    for g in groups:
        dbs[g.datname] += g.sessions
        users[g.usename] += g.sessions
        apps[g.application_name] += g.sessions
    return _Folders(Folder(dbs, top_n), Folder(users, top_n), Folder(apps, top_n))


def postgres_families(snap: PostgresSnapshot, target: str, top_n: int) -> Iterator[Metric]:
    folders = _folders(snap.activity, top_n)
    yield _server_info(snap, target)
    yield from _connection_limits(snap, target)
    yield from _connections(snap, target, folders)
    yield _transaction_max_age(snap, target, folders)
    yield from _client_read(snap, target)
    yield _wait_events(snap, target, top_n)
    yield from _blocking(snap, target)
    yield _oldest_transactions(snap, target)
    yield _listen(snap, target, top_n)
    yield _settings(snap, target)
    yield from _tables(snap, target)


def _server_info(snap: PostgresSnapshot, target: str) -> Metric:
    info = family("postgres_server_info")
    info.add_metric([target, snap.server_version], 1)
    return info


def _connection_limits(snap: PostgresSnapshot, target: str) -> Iterator[Metric]:
    for name, value in (("postgres_max_connections", snap.max_connections),
                        ("postgres_superuser_reserved_connections",
                         snap.superuser_reserved_connections)):
        metric = family(name)
        metric.add_metric([target], value)
        yield metric


def _connections(snap: PostgresSnapshot, target: str, f: _Folders) -> Iterator[Metric]:
    counts = bounded_sum(
        ((f.datname(g.datname), f.usename(g.usename), f.application_name(g.application_name),
          g.state), g.sessions)
        for g in snap.activity)
    metric = family("postgres_connections")
    for labels, value in sorted(counts.items()):
        metric.add_metric([target, *labels], value)
    yield metric


def _transaction_max_age(snap: PostgresSnapshot, target: str, f: _Folders) -> Metric:
    ages = bounded_max(
        ((f.datname(g.datname), f.application_name(g.application_name), g.state),
         g.max_transaction_age)
        for g in snap.activity
        if g.max_transaction_age is not None and g.state in TRANSACTION_STATES)
    metric = family("postgres_transaction_max_age_seconds")
    for labels, value in sorted(ages.items()):
        metric.add_metric([target, *labels], value)
    return metric


def _client_read(snap: PostgresSnapshot, target: str) -> Iterator[Metric]:
    stalled = [g for g in snap.activity if g.client_read_in_transaction]
    count = family("postgres_client_read_in_transaction_sessions")
    count.add_metric([target], sum(g.sessions for g in stalled))
    age = family("postgres_client_read_in_transaction_max_age_seconds")
    age.add_metric([target], max((g.max_state_age or 0.0 for g in stalled), default=0.0))
    yield count
    yield age


def _wait_events(snap: PostgresSnapshot, target: str, top_n: int) -> Metric:
    busy = [g for g in snap.activity if g.state != "idle"]
    weights: Counter[str] = Counter()
    for g in busy:
        weights[g.wait_event] += g.sessions
    event = Folder(weights, top_n)
    counts = bounded_sum(((g.wait_event_type, event(g.wait_event) if g.wait_event else ""),
                          g.sessions) for g in busy)
    metric = family("postgres_wait_event_sessions")
    for labels, value in sorted(counts.items()):
        metric.add_metric([target, *labels], value)
    return metric


def _blocking(snap: PostgresSnapshot, target: str) -> Iterator[Metric]:
    blocked = family("postgres_blocked_sessions")
    blocked.add_metric([target], len(snap.blocked))
    longest = family("postgres_blocked_max_wait_seconds")
    longest.add_metric([target], max((b.wait_seconds for b in snap.blocked), default=0.0))
    blocking = family("postgres_blocking_sessions")
    blocking.add_metric([target], len({pid for b in snap.blocked for pid in b.blocked_by}))
    yield blocked
    yield longest
    yield blocking


def _oldest_transactions(snap: PostgresSnapshot, target: str) -> Metric:
    metric = family("postgres_oldest_transaction_age_seconds")
    for rank, s in enumerate(snap.oldest_transactions, start=1):
        metric.add_metric(
            [target, str(rank), str(s.pid), clean(s.datname), clean(s.usename),
             clean(s.application_name), s.client_addr, s.state, s.wait_event],
            s.transaction_age or 0.0)
    return metric


def _listen(snap: PostgresSnapshot, target: str, top_n: int) -> Metric:
    channels: Counter[str] = Counter()
    for g in snap.activity:
        if g.listen_channel:
            channels[g.listen_channel] += g.sessions
    channel_of = Folder(channels, top_n)
    metric = family("postgres_listen_sessions")
    for channel, value in sorted(bounded_sum((channel_of(c), n)
                                             for c, n in channels.items()).items()):
        metric.add_metric([target, channel], value)
    return metric


def _settings(snap: PostgresSnapshot, target: str) -> Metric:
    metric = family("postgres_setting_seconds")
    for name, seconds in sorted(snap.timeouts_seconds.items()):
        metric.add_metric([target, name], seconds)
    return metric


def _tables(snap: PostgresSnapshot, target: str) -> Iterator[Metric]:
    columns = (("postgres_table_live_tuples", lambda t: t.live_tuples),
               ("postgres_table_dead_tuples", lambda t: t.dead_tuples),
               ("postgres_table_last_vacuum_timestamp_seconds", lambda t: t.last_vacuum or 0.0),
               ("postgres_table_last_autovacuum_timestamp_seconds",
                lambda t: t.last_autovacuum or 0.0))
    for name, value_of in columns:
        metric = family(name)
        for table in snap.tables:
            metric.add_metric([target, table.schema, table.table], value_of(table))
        yield metric
