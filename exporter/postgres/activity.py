"""pg_stat_activity, read once per poll: the groups the metrics count, the oldest transactions,
the blocked sessions, and the pids of every group that is not idle.

pg_stat_get_activity() (what the view reads) builds a row of thirty columns for every backend:
at thousands of backends that call is most of a poll's database CPU, and no SQL around it makes
it cheaper. So it is called once per poll, and what the SQL does around it is one pass over its
rows, one hash aggregate (benchmarks/compare.py; the figures are in docs/benchmarks.md):

- The backends are grouped by database, role, state, wait event and LISTEN channel; only idle
  sessions with a LISTEN (a few) are grouped by application too. The idle sessions without a
  LISTEN list their applications in one text (idle_apps). On a busy server most sessions are
  idle, often from as many applications as there are sessions; grouping them per application
  cost the database passes of hashing and sorting (to pick the top N) and the exporter
  thousands of rows. Splitting the text and counting the names are C loops in Python
  (str.split, collections.Counter).
- The sessions that are not idle (hundreds on a busy server) are listed in arrays, a position
  per session: application, pid, ages and client address. Python groups them by application,
  and reads the oldest transactions, the lock waits and each group's pids (the PgBouncer join,
  exporter/pgbouncer/servers.py) from them, mostly with C loops (zip, map, Counter): a row per
  session cost the exporter more CPU than the whole rest of a poll at 5,000 backends
  (benchmarks/compare.py).
- Names are joined to the groups, not to each backend.

Python then keeps the top N values of each label by sessions (exporter.labels.keep_top, as the
metrics rank them; ranked again only when the sessions' names or counts changed since the last
read, see Ranking), folds the idle sessions of the other values (exporter.labels.FOLDED), and
folds every group as the metrics export them (ActivityRead.exported: the families read those).
The idle groups of one database, role and wait event share one state age (their oldest): no
check reads an idle group's state age.

Without pg_monitor, state, query and backend_type read NULL for other roles' sessions; those
with a database and a role are client backends (autovacuum workers have no role).
"""

from __future__ import annotations

import functools
import heapq
import json
import operator
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain, compress, count, repeat
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar, cast

from exporter.labels import FOLDED, OTHER, Folder, keep_top, needs_cleaning
from exporter.postgres.snapshot import (
    ActivityGroup,
    BlockedSession,
    Exported,
    IndexBuild,
    Session,
)

if TYPE_CHECKING:  # the PgBouncer join imports this module, and asyncpg only with PostgreSQL
    from typing import TypeAlias

    import asyncpg

    Row: TypeAlias = asyncpg.Record | tuple[Any, ...]  # tuples: tests build rows so

# A client's address as the doctor shows it: a Unix socket (port -1) is "local".
CLIENT_ADDR = "coalesce(host(client_addr), CASE WHEN client_port = -1 THEN 'local' ELSE '' END)"

# Joins the applications of the idle sessions in one text: one string to decode and split (in C)
# where an array of thousands of names was as many values to decode. PostgreSQL keeps
# application_name printable ASCII (anything else becomes ? or an escape), so never this.
APPLICATIONS_SEPARATOR = "\x01"

# Idle, and not listening: what may be folded, and is grouped without its application.
_FOLDABLE = "state = 'idle' AND listen_channel IS NULL"
# The sessions listed one by one (NULL state: another role's, without pg_monitor).
_LISTED = "state IS DISTINCT FROM 'idle'"

# Index builds running in this database: the share done is the current phase's blocks (the
# table scan) or tuples (sorting, loading, validating) done over its total, where it has one.
# Read inside ACTIVITY_SQL, as its last column: pg_stat_progress_create_index copies every
# backend's status as pg_stat_get_activity() does, and in one statement (one transaction) the
# two share one copy (0.95 ms of database CPU a poll less at 5,000 backends, measured).
INDEX_BUILDS_SQL = """
SELECT p.pid, coalesce(n.nspname, '') AS "schema", coalesce(t.relname, '') AS "table",
       coalesce(c.relname, '') AS name, p.command, p.phase,
       CASE WHEN p.blocks_total > 0 THEN p.blocks_done::float8 / p.blocks_total
            WHEN p.tuples_total > 0 THEN p.tuples_done::float8 / p.tuples_total
       END AS done_ratio
FROM pg_stat_progress_create_index p
LEFT JOIN pg_class t ON t.oid = p.relid
LEFT JOIN pg_namespace n ON n.oid = t.relnamespace
LEFT JOIN pg_class c ON c.oid = p.index_relid
WHERE p.datid = (SELECT oid FROM pg_database WHERE datname = current_database())
ORDER BY p.pid
"""

# A row per group of backends (client backends and others: client says which), by everything the
# metrics label or count on but the application (ActivityGroup, the first eleven columns). An
# *active* statement waiting on ClientRead is a stalled client: it stopped sending
# mid-statement (a COPY, a blocked event loop between protocol messages). Idle and idle in
# transaction sessions wait on ClientRead too, by definition: the idle-in-transaction checks,
# with their own thresholds, judge the latter.
# - The sessions that are not idle list each session in arrays, one position per session (its
#   application, pid, ages and client address):
#   Python groups them by application. A handful of rows of arrays cost the exporter a third of
#   what a row per session did (asyncpg builds a Record and its values for every row), and the
#   database no more: the arrays of a few groups are a few memory contexts.
# - Idle sessions without a LISTEN list their applications in idle_apps, one text. Idle
#   sessions with a LISTEN keep theirs as a label (application_name is NULL in the others).
# Who blocks the sessions that wait on a lock is asked after this read (BLOCKERS_SQL). A lock
# wait is measured from the waiting statement's start (state_change). The ages use date_part,
# which returns float8: EXTRACT returns numeric since PostgreSQL 14, several times dearer. The
# LISTEN regular expression runs only on text that can start with "listen" (its first
# character is a space or an l: ascii() reads one character).
# The index builds (INDEX_BUILDS_SQL) come as JSON in the first row's last column, NULL in the
# others: an uncorrelated subquery, run once.
ACTIVITY_SQL = rf"""
SELECT coalesce(d.datname, '') AS datname, coalesce(r.rolname, '') AS usename,
       g.application_name, g.state, g.wait_event_type, g.wait_event,
       (g.state = 'active' AND g.wait_event = 'ClientRead') AS client_read_in_transaction,
       g.listen_channel, g.sessions,
       date_part('epoch', now() - g.xact_start) AS max_transaction_age,
       date_part('epoch', now() - g.state_change) AS max_state_age,
       (g.client_backend OR (g.client_backend IS NULL AND d.datname IS NOT NULL
                             AND r.rolname IS NOT NULL)) AS client,
       g.applications, g.pids, g.transaction_ages, g.state_ages, g.client_addrs,
       g.idle_apps,
       CASE WHEN row_number() OVER () = 1
            THEN (SELECT coalesce(json_agg(b), '[]') FROM ({INDEX_BUILDS_SQL}) b)::text
       END AS index_builds
FROM (
    SELECT datid, usesysid, backend_type = 'client backend' AS client_backend,
           coalesce(state, 'unknown') AS state,
           coalesce(wait_event_type, '') AS wait_event_type,
           coalesce(wait_event, '') AS wait_event,
           listen_channel,
           CASE WHEN {_FOLDABLE} OR {_LISTED} THEN NULL ELSE coalesce(application_name, '') END
               AS application_name,
           count(*) AS sessions,
           min(xact_start) AS xact_start,
           min(state_change) AS state_change,
           array_agg(coalesce(application_name, '')) FILTER (WHERE {_LISTED}) AS applications,
           array_agg(pid) FILTER (WHERE {_LISTED}) AS pids,
           array_agg(date_part('epoch', now() - xact_start)) FILTER (WHERE {_LISTED})
               AS transaction_ages,
           array_agg(date_part('epoch', now() - state_change)) FILTER (WHERE {_LISTED})
               AS state_ages,
           array_agg({CLIENT_ADDR}) FILTER (WHERE {_LISTED}) AS client_addrs,
           string_agg(coalesce(application_name, ''), E'\x01') FILTER (WHERE {_FOLDABLE})
               AS idle_apps
    FROM (SELECT *,
                 CASE WHEN ascii(query) NOT IN (9, 10, 12, 13, 32, 76, 108) THEN NULL
                      WHEN ltrim(query, E' \t\n\r\f') ILIKE 'listen%'
                      THEN substring(query FROM '(?i)^\s*listen\s+"?([^";\s]+)')
                 END AS listen_channel
          FROM pg_stat_get_activity(NULL)
          WHERE pid <> pg_backend_pid()) backend
    GROUP BY 1, 2, 3, 4, 5, 6, 7, 8
) g
LEFT JOIN pg_database d ON d.oid = g.datid
LEFT JOIN pg_roles r ON r.oid = g.usesysid
"""
# pg_blocking_pids() takes every partition lock of the lock manager and walks the holders and
# waiters of the lock waited on: for N sessions waiting on one lock each call is O(N), N calls
# O(N²), each holding the lock manager's partitions (at 3,000 sessions waiting behind one ACCESS
# EXCLUSIVE, 111 of a poll's 125 ms of database CPU, measured; blocking for every session
# that takes or releases a lock meanwhile). So it is asked after the activity read, only while
# sessions wait on a lock, and only for the MAX_BLOCKERS_ASKED that waited longest: a lock
# chain's root blocks those first. The others count as blocked, their blockers not asked.
BLOCKERS_SQL = "SELECT pid, pg_blocking_pids(pid) AS blocked_by FROM unnest($1::int[]) AS pid"
MAX_BLOCKERS_ASKED = 100

GROUP_WIDTH = len(ActivityGroup._fields)
_SESSIONS_END = GROUP_WIDTH + 7  # then what the sessions add: client ... idle_apps
# ActivityGroup's columns by position: the labels, then what adds up
_APP, _STATE, _WAIT_TYPE, _SESSIONS, _TRANSACTION_AGE, _STATE_AGE = map(
    ActivityGroup._fields.index, ("application_name", "state", "wait_event_type", "sessions",
                                  "max_transaction_age", "max_state_age"))
_GROUP_COLUMNS = operator.itemgetter(slice(0, GROUP_WIDTH))
_LABELS = operator.itemgetter(slice(0, _SESSIONS))
_DATNAME, _USENAME, _APPLICATION, SESSIONS_OF = map(operator.itemgetter, map(
    ActivityGroup._fields.index, ("datname", "usename", "application_name", "sessions")))
_MORE_THAN_ONE = (1).__lt__
# ActivityGroup._make without its length check, a C call: _make is Python, and hundreds of groups
# are made per poll from columns of the right width
_new_group = cast(Callable[[Iterable[Any]], ActivityGroup],
                  functools.partial(tuple.__new__, ActivityGroup))


class _Listed(NamedTuple):
    """The sessions that are not idle under one set of labels but the application, one
    position per session (ACTIVITY_SQL's arrays, of every row with these labels)."""

    labels: tuple[Any, ...]  # ActivityGroup's labels, application_name None
    applications: list[str]
    pids: list[int]
    transaction_ages: list[float | None]
    state_ages: list[float | None]
    client_addrs: list[str]

    def group(self, i: int) -> ActivityGroup:
        """The i-th session as a group of its own."""
        return _new_group((*self.labels[:_APP], self.applications[i],
                           *self.labels[_APP + 1:], 1, self.transaction_ages[i],
                           self.state_ages[i]))


class InTransaction(NamedTuple):
    """A client backend in a transaction, as read. Ordered by its first two fields as ORDER
    BY xact_start, pid orders: the oldest transaction first."""

    minus_age: float  # -transaction_age
    pid: int
    group: ActivityGroup  # this session alone, so its ages are the group's
    client_addr: str

    def session(self) -> Session:
        g = self.group
        return Session(self.pid, g.datname, g.usename, g.application_name, self.client_addr,
                       g.state, g.wait_event_type, g.wait_event, g.max_transaction_age,
                       g.max_state_age)


class LockWait(NamedTuple):
    """A backend waiting on a lock (its group's wait_event_type is Lock), since its statement
    began."""

    pid: int
    wait_seconds: float


def blockers_to_ask(waits: Iterable[LockWait]) -> list[int]:
    """The pids whose blockers BLOCKERS_SQL asks for: the MAX_BLOCKERS_ASKED longest waits."""
    longest = sorted(waits, key=lambda w: (-w.wait_seconds, w.pid))[:MAX_BLOCKERS_ASKED]
    return [w.pid for w in longest]


def blocked_sessions(waits: Iterable[LockWait], blockers: Mapping[int, Sequence[int]]
                     ) -> tuple[BlockedSession, ...]:
    """Every lock wait as a blocked session, with its blockers where they were asked
    (BLOCKERS_SQL's rows, pid: blockers); one asked whose blockers already went is not
    blocked."""
    return tuple(BlockedSession(w.pid, tuple(blockers.get(w.pid, ())), w.wait_seconds)
                 for w in waits if w.pid not in blockers or blockers[w.pid])


async def read_blocked(conn: asyncpg.Connection, waits: Sequence[LockWait]
                       ) -> tuple[BlockedSession, ...]:
    """The lock waits as blocked sessions, their blockers asked (BLOCKERS_SQL) for the longest
    waits: one more statement, only while sessions wait on a lock."""
    if not waits:
        return ()
    rows = await conn.fetch(BLOCKERS_SQL, blockers_to_ask(waits))
    return blocked_sessions(waits, {r["pid"]: r["blocked_by"] for r in rows})


@dataclass(frozen=True)
class ActivityRead:
    groups: tuple[ActivityGroup, ...]
    oldest: tuple[Session, ...]  # oldest transaction first
    lock_waits: tuple[LockWait, ...]  # any backend's, client or not
    group_pids: tuple[tuple[int, ...], ...]  # each group's backends, in groups' order
    # per set of labels but the application: the sessions' count and oldest ages, for a
    # judgement that holds for a group if it holds for the oldest of its kind
    summaries: tuple[ActivityGroup, ...]
    listed: tuple[_Listed, ...]  # every client backend that is not idle
    # the groups as the metrics export them (top N kept, the rest OTHER), when folded
    exported: Exported | None = None
    # the top N values of each label and what they were ranked from: give it to the next
    # read, which reuses it when its sessions' names are the same (None: nothing folds)
    ranking: Ranking | None = None

    @functools.cached_property
    def in_transaction(self) -> tuple[InTransaction, ...]:
        """Every client backend in a transaction: built when asked (the incidents' sessions
        are chosen from them), not on every poll."""
        return tuple(InTransaction(-age, pid, sessions.group(i), sessions.client_addrs[i] or "")
                     for sessions in self.listed
                     for i, (pid, age) in enumerate(zip(sessions.pids,
                                                        sessions.transaction_ages, strict=True))
                     if age is not None)


class _IdleRow(NamedTuple):
    """A group of idle sessions without their application, and their applications."""

    group: ActivityGroup  # application_name: FOLDED
    applications: str  # one per session, joined by APPLICATIONS_SEPARATOR

    def counts(self) -> Counter[str]:
        """Each application's sessions (split and counted in C)."""
        return Counter(self.applications.split(APPLICATIONS_SEPARATOR))


def activity(rows: Iterable[Row], top_transactions: int, label_top_n: int | None,
             last: Ranking | None = None) -> ActivityRead:
    """The read's rows as groups, the top_transactions oldest transactions and the lock
    waits. label_top_n: the values kept per label, the idle sessions of the others folded
    (None: none folded). last: the last read's ranking, reused if it still holds."""
    listed: dict[tuple[Any, ...], _Listed] = {}
    labelled: list[Row] = []  # idle sessions with a LISTEN, grouped with their application
    idle: list[_IdleRow] = []
    lock_waits: list[LockWait] = []
    for r in rows:
        (client, applications, pids, transaction_ages, state_ages, addrs,
         idle_apps) = r[GROUP_WIDTH:_SESSIONS_END]
        if r[_WAIT_TYPE] == "Lock" and pids is not None:  # any backend's
            lock_waits += (LockWait(pid, age or 0.0)
                           for pid, age in zip(pids, state_ages, strict=True))
        if not client:
            continue
        if idle_apps is not None:
            group = ActivityGroup._make((*r[:_APP], FOLDED, *r[_APP + 1:GROUP_WIDTH]))
            idle.append(_IdleRow(group, idle_apps))
        elif pids is None:
            labelled.append(r)
        else:  # rows of the same labels (other roles' sessions, without pg_monitor) join
            labels = r[:_SESSIONS]
            same = listed.get(labels)
            if same is None:
                listed[labels] = _Listed(labels, applications, pids, transaction_ages,
                                         state_ages, addrs)
            else:  # new lists: the rows read stay as they were
                listed[labels] = _Listed(labels, *(mine + more for mine, more in zip(
                    same[1:], (applications, pids, transaction_ages, state_ages, addrs),
                    strict=True)))
    groups: list[ActivityGroup] = []
    group_pids: list[tuple[int, ...]] = []
    for sessions in listed.values():
        _by_application(sessions, groups, group_pids)
    groups += added_up(labelled)
    # per set of labels but the application, as judged: the listed, the listeners, the idle
    summaries = [*map(_summary, listed.values()), *groups[len(group_pids):],
                 *(row.group for row in idle)]
    ranking = None if label_top_n is None else _ranking(
        listed.values(), groups, len(group_pids), idle, label_top_n, last)
    groups += _idle_groups(idle, ranking)
    exported = None if ranking is None else Exported(ranking.kept.top_n, _exported_groups(
        groups, listed.values(), len(group_pids), ranking.kept))
    return ActivityRead(tuple(groups), _oldest_sessions(listed.values(), top_transactions),
                        tuple(lock_waits),
                        (*group_pids, *[()] * (len(groups) - len(group_pids))),  # no pids
                        tuple(summaries), tuple(listed.values()), exported, ranking)


def index_builds(rows: Sequence[Row]) -> tuple[IndexBuild, ...]:
    """The index builds ACTIVITY_SQL's first row carries (none without rows)."""
    return tuple(IndexBuild(**b) for b in json.loads(rows[0][_SESSIONS_END])) if rows else ()


def _by_application(sessions: _Listed, groups: list[ActivityGroup],
                    group_pids: list[tuple[int, ...]]) -> None:
    """The sessions of one set of labels as groups per application, with their pids (none for
    another role's sessions without pg_monitor: their state is unknown)."""
    labels = sessions.labels
    head, tail = labels[:_APP], labels[_APP + 1:]
    apps, pids = sessions.applications, sessions.pids
    known = labels[_STATE] != "unknown"
    if len(set(apps)) == len(apps):  # a session per application: each a group, built in C
        groups += map(_new_group, zip(
            *map(repeat, head), apps, *map(repeat, tail), repeat(1),
            sessions.transaction_ages, sessions.state_ages))
        group_pids += zip(pids) if known else repeat((), len(pids))
        return
    by_app: dict[str, list[Any]] = {}
    for app, pid, transaction_age, state_age in zip(apps, pids, sessions.transaction_ages,
                                                    sessions.state_ages, strict=True):
        total = by_app.get(app)
        if total is None:
            by_app[app] = [transaction_age, state_age, 1, [pid]]
        else:
            _keep_oldest(total, transaction_age, state_age)
            total[2] += 1
            total[3].append(pid)
    for app, (transaction_age, state_age, sessions_of_app, app_pids) in by_app.items():
        groups.append(_new_group((*head, app, *tail, sessions_of_app, transaction_age,
                                  state_age)))
        group_pids.append(tuple(app_pids) if known else ())


def _summary(sessions: _Listed) -> ActivityGroup:
    """The sessions of one set of labels but the application: their count and oldest ages."""
    return _new_group((*sessions.labels[:_APP], "", *sessions.labels[_APP + 1:],
                       len(sessions.pids), _largest(sessions.transaction_ages),
                       _largest(sessions.state_ages)))


def _largest(ages: list[float | None]) -> float | None:
    return max(_known(ages), default=None)


def _known(ages: list[float | None]) -> Iterable[float]:
    """The ages that are not None, filtered in C."""
    return cast(Iterable[float], compress(ages, map(operator.is_not, ages, repeat(None))))


def _oldest_sessions(listed: Iterable[_Listed], top: int) -> tuple[Session, ...]:
    """The top oldest transactions, ties broken by pid, ranked over (-age, pid, which, where)
    tuples zipped in C: only the few shown become sessions."""
    ranked = heapq.nsmallest(top, chain.from_iterable(
        zip(map(operator.neg, cast(Iterable[float], compress(s.transaction_ages, present))),
            compress(s.pids, present), repeat(which), compress(count(), present))
        for which, s in enumerate(listed)
        for present in [list(map(operator.is_not, s.transaction_ages, repeat(None)))]))
    by_index = list(listed)
    return tuple(InTransaction(minus_age, pid, by_index[which].group(i),
                               by_index[which].client_addrs[i] or "").session()
                 for minus_age, pid, which, i in ranked)


class _Kept(NamedTuple):
    """The values of each label that keep their names: the top N by sessions."""

    datnames: frozenset[str]
    usenames: frozenset[str]
    applications: frozenset[str]
    top_n: int
    folds: bool  # whether any value is not kept


class Ranking(NamedTuple):
    """The top N values of each label, ranked from the sessions' names (key). Splitting,
    counting and ranking thousands of application names was about a quarter of a poll at
    5,000 backends (4.1 -> 3.0 ms); a server's sessions keep their names from poll to poll
    (its pools stay connected), so a read whose names are the last read's reuses its
    ranking."""

    key: tuple[Any, ...]  # what was ranked: compared, never hashed
    kept: _Kept
    # per idle row, the sessions of each kept application it has (its other sessions fold)
    idle_shares: tuple[tuple[tuple[str, int], ...], ...]


def _ranking(listed: Iterable[_Listed], groups: Sequence[ActivityGroup], listed_count: int,
             idle: Sequence[_IdleRow], top_n: int, last: Ranking | None) -> Ranking:
    """The ranking of these sessions: last's if they have the same names and counts. groups:
    the listed sessions' groups (the first listed_count), then the listeners'."""
    key = (top_n,
           [(s.labels[0], s.labels[1], s.applications) for s in listed],
           [(g.datname, g.usename, g.application_name, g.sessions)
            for g in groups[listed_count:]],
           [(row.group.datname, row.group.usename, row.applications) for row in idle])
    if last is not None and last.key == key:  # lists and texts compared in C
        return last
    counts = [row.counts() for row in idle]
    kept = _kept(groups, idle, counts, top_n)
    return Ranking(key, kept, tuple(tuple((app, c[app]) for app in kept.applications if app in c)
                                    for c in counts))


def _kept(listed: Sequence[ActivityGroup], idle: Sequence[_IdleRow],
          idle_counts: Sequence[Counter[str]], top_n: int) -> _Kept:
    """The top N values of each label by every session's weight, as the metrics rank them. A
    kept value is never folded, so its weight is whole, and the same values are the top N when
    the metrics rank the groups folded with them."""
    everyone = [*listed, *(row.group for row in idle)]
    apps: Counter[str] = Counter()
    for counts in idle_counts:
        apps.update(counts)  # into an empty Counter (the usual one row): in C
    count_sessions(apps, _APPLICATION, listed)
    datnames, usenames = session_weights(_DATNAME, everyone), session_weights(_USENAME, everyone)
    return _Kept(keep_top(datnames, top_n), keep_top(usenames, top_n), keep_top(apps, top_n),
                 top_n, any(len(w) > top_n for w in (datnames, usenames, apps)))


def _idle_groups(idle: Sequence[_IdleRow], ranking: Ranking | None) -> list[ActivityGroup]:
    """The idle sessions as groups per application: the kept values of each label keep their
    names, the idle sessions of the others fold into FOLDED (ranking None: none folds)."""
    if ranking is None:
        unfolded = [_new_group((*row.group[:_APP], app, *row.group[_APP + 1:_SESSIONS],
                                sessions, *row.group[_TRANSACTION_AGE:]))
                    for row in idle for app, sessions in row.counts().items()]
        # two rows of idle sessions may share their labels (one role's, read with and without
        # pg_monitor's view): added up, as folded groups are
        return unfolded if len(idle) < 2 else added_up(unfolded)
    kept = ranking.kept
    folded: list[tuple[Any, ...]] = []
    for row, shares in zip(idle, ranking.idle_shares, strict=True):
        g = row.group
        datname = g.datname if g.datname in kept.datnames else FOLDED
        usename = g.usename if g.usename in kept.usenames else FOLDED
        # the kept applications' sessions; the rest is what they leave (none when none folds)
        for app, sessions in (*shares, (FOLDED, g.sessions - sum(n for _, n in shares))):
            if sessions:
                folded.append((datname, usename, app, *g[_STATE:_SESSIONS], sessions,
                               *g[_TRANSACTION_AGE:]))
    return added_up(folded)


def _exported_groups(groups: list[ActivityGroup], listed: Iterable[_Listed], listed_count: int,
                     kept: _Kept) -> tuple[ActivityGroup, ...]:
    """The groups as exported. When no value folds and none needs cleaning (every application
    kept, as with a large --label-top-n), they are the groups themselves, unless two share
    their labels (idle sessions of one role read with and without pg_monitor's view)."""
    values = (kept.datnames, kept.usenames, kept.applications)
    if (not kept.folds and not any(needs_cleaning(v) for v in values)
            and len(set(map(_LABELS, groups))) == len(groups)):
        return tuple(groups)
    return tuple(_exported(listed, groups[listed_count:], kept))


def _exported(listed: Iterable[_Listed], others: Iterable[ActivityGroup],
              kept: _Kept) -> list[ActivityGroup]:
    """The groups under the labels they are exported with: kept values cleaned, the rest
    OTHER (exporter.postgres.metrics folds groups the same way when it has only them). The
    listed sessions are folded from their columns: per set of labels, each session's exported
    application is a C map and its sessions a Counter; the oldest ages one loop. (Picking the
    ages of those folded into OTHER with C loops measured no faster at 5,000 backends.)"""
    db, user, app = (Folder(values, kept.top_n)
                     for values in (kept.datnames, kept.usenames, kept.applications))
    folded: list[Sequence[Any]] = []
    for sessions in listed:
        labels = sessions.labels
        head, tail = (db[labels[0]], user[labels[1]]), labels[_APP + 1:]
        apps = list(map(app.get, sessions.applications, repeat(OTHER)))  # C: no __missing__
        counts = Counter(apps)
        ages = zip(apps, sessions.transaction_ages, sessions.state_ages, strict=True)
        oldest: dict[str, list[float | None]] = {}
        for name, transaction_age, state_age in ages:
            known = oldest.get(name)
            if known is None:
                oldest[name] = [transaction_age, state_age]
            else:
                _keep_oldest(known, transaction_age, state_age)
        folded += ((*head, name, *tail, count, *oldest[name]) for name, count in counts.items())
    folded += ((db[g[0]], user[g[1]], app[g[2]], *g[3:]) for g in others)
    return added_up(folded)


def added_up(groups: Iterable[Row | Sequence[Any]]) -> list[ActivityGroup]:
    """Groups (or rows, or tuples in ActivityGroup's order) of the same labels added up into
    one, in the order their labels first come."""
    first: dict[Any, Row | Sequence[Any]] = {}  # by labels: a row's slice is a tuple too
    totals: dict[Any, list[Any]] = {}  # labels seen more than once: running sums
    for g in groups:
        labels = g[:_SESSIONS]
        if labels not in first:
            first[labels] = g
            continue
        total = totals.get(labels)
        if total is None:
            one = first[labels]
            total = totals[labels] = [one[_TRANSACTION_AGE], one[_STATE_AGE], one[_SESSIONS]]
        total[2] += g[_SESSIONS]
        _keep_oldest(total, g[_TRANSACTION_AGE], g[_STATE_AGE])
    for labels, (transaction_age, state_age, sessions) in totals.items():
        first[labels] = (*labels, sessions, transaction_age, state_age)
    return list(map(_new_group, map(_GROUP_COLUMNS, first.values())))


V = TypeVar("V")  # what sessions are counted by: a label's value, a tuple of them


def session_weights(value_of: Callable[[ActivityGroup], V],
                    groups: Sequence[ActivityGroup]) -> Counter[V]:
    """Each value's sessions."""
    return count_sessions(Counter(), value_of, groups)


def count_sessions(weights: Counter[V], value_of: Callable[[ActivityGroup], V],
                   groups: Sequence[ActivityGroup]) -> Counter[V]:
    """Adds each value's sessions to weights: every group counted once by the Counter, in C
    (update() of an iterable, not of a mapping: that is a Python loop), then the groups of more
    than one session add the rest (on a busy server most groups are one session each)."""
    weights.update(map(value_of, groups))
    for g in compress(groups, map(_MORE_THAN_ONE, map(SESSIONS_OF, groups))):
        weights[value_of(g)] += g.sessions - 1
    return weights


def _keep_oldest(ages: list[Any], transaction_age: float | None,
                 state_age: float | None) -> None:
    """ages[0] and ages[1], the oldest transaction and state ages so far, raised to these
    where they are older (None: none)."""
    if transaction_age is not None and (ages[0] is None or transaction_age > ages[0]):
        ages[0] = transaction_age
    if state_age is not None and (ages[1] is None or state_age > ages[1]):
        ages[1] = state_age

