"""pg_stat_activity, read once per poll: the groups the metrics count, the oldest transactions,
the blocked sessions, and the pids of every group that is not idle.

pg_stat_get_activity() (what the view reads) builds a row of thirty columns for every backend:
at thousands of backends that call is most of a poll's database CPU, and no SQL around it makes
it cheaper. So it is called once per poll, and what the SQL does around it is one pass over its
rows, one hash aggregate (benchmarks/compare.py; the figures are in docs/benchmarks.md):

- The backends are grouped by database, role, state, wait event and LISTEN channel, and by
  application, except the idle sessions without a LISTEN: those are grouped without their
  application and list their applications in one array (idle_apps). On a busy server most
  sessions are idle, often from as many applications as there are sessions; grouping them per
  application cost the database passes of hashing and sorting (to pick the top N) and the
  exporter thousands of rows. Counting an array of names is a C loop in Python
  (collections.Counter).
- The sessions that are not idle (a few on a busy server) are a row each, with their pid,
  client address and, waiting on a lock, the pids blocking them: Python adds them up into
  groups, and reads the oldest transactions, the blocked sessions and each group's pids (the
  PgBouncer join, exporter/pgbouncer/servers.py) from them.
- Names are joined to the groups, not to each backend.

Python then keeps the top N values of each label by sessions (exporter.labels.keep_top, as the
metrics rank them) and folds the idle sessions of the other values (exporter.labels.FOLDED).
The idle groups of one database, role and wait event share one state age (their oldest): no
check reads an idle group's state age.

Without pg_monitor, state, query and backend_type read NULL for other roles' sessions; those
with a database and a role are client backends (autovacuum workers have no role).
"""

from __future__ import annotations

import heapq
import operator
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Sequence
from itertools import compress
from typing import TYPE_CHECKING, Any, NamedTuple

from exporter.labels import FOLDED, keep_top
from exporter.postgres.snapshot import ActivityGroup, BlockedSession, Session

if TYPE_CHECKING:  # the PgBouncer join imports this module, and asyncpg only with PostgreSQL
    from typing import TypeAlias

    import asyncpg

    Row: TypeAlias = asyncpg.Record | tuple[Any, ...]  # tuples: tests build rows so

# A client's address as the doctor shows it: a Unix socket (port -1) is "local".
CLIENT_ADDR = "coalesce(host(client_addr), CASE WHEN client_port = -1 THEN 'local' ELSE '' END)"

# Idle, and not listening: what may be folded, and is grouped without its application.
_FOLDABLE = "state = 'idle' AND listen_channel IS NULL"
# The sessions listed one by one in their group (NULL state: another role's, without pg_monitor).
_LISTED = "state IS DISTINCT FROM 'idle'"

# A row per group of backends (client backends and others: client says which), by everything the
# metrics label or count on (ActivityGroup, the first eleven columns). An *active* statement
# waiting on ClientRead is a stalled client: it stopped sending mid-statement (a COPY, a blocked
# event loop between protocol messages). Idle and idle in transaction sessions wait on
# ClientRead too, by definition: the idle-in-transaction checks, with their own thresholds,
# judge the latter.
# - A session that is not idle is a group of its own (pid, client_addr, and blocked_by: the pids
#   blocking it when it waits on a lock), and Python adds them up into groups. Listing them in
#   arrays per group measured dearer: each array is a memory context per group.
# - Idle sessions without a LISTEN are grouped without their application (NULL), and list their
#   applications in idle_apps. Other idle sessions keep theirs.
# pg_blocking_pids() takes the lock manager's partition locks: CASE calls it for the sessions
# waiting on a lock only. The wait is measured from the waiting statement's start
# (state_change). The ages use date_part, which returns float8: EXTRACT returns numeric since
# PostgreSQL 14, several times dearer. The LISTEN regular expression runs only on text that can
# start with "listen" (its first character is a space or an l: ascii() reads one character).
ACTIVITY_SQL = rf"""
SELECT coalesce(d.datname, '') AS datname, coalesce(r.rolname, '') AS usename,
       g.application_name, g.state, g.wait_event_type, g.wait_event,
       (g.state = 'active' AND g.wait_event = 'ClientRead') AS client_read_in_transaction,
       g.listen_channel, g.sessions,
       date_part('epoch', now() - g.xact_start) AS max_transaction_age,
       date_part('epoch', now() - g.state_change) AS max_state_age,
       (g.client_backend OR (g.client_backend IS NULL AND d.datname IS NOT NULL
                             AND r.rolname IS NOT NULL)) AS client,
       g.pid, g.client_addr, g.blocked_by, g.idle_apps
FROM (
    SELECT datid, usesysid, backend_type = 'client backend' AS client_backend,
           coalesce(state, 'unknown') AS state,
           coalesce(wait_event_type, '') AS wait_event_type,
           coalesce(wait_event, '') AS wait_event,
           listen_channel,
           CASE WHEN {_FOLDABLE} THEN NULL ELSE coalesce(application_name, '') END
               AS application_name,
           CASE WHEN {_LISTED} THEN pid END AS pid,
           CASE WHEN {_LISTED} THEN {CLIENT_ADDR} END AS client_addr,
           CASE WHEN {_LISTED} AND wait_event_type = 'Lock' THEN pg_blocking_pids(pid) END
               AS blocked_by,
           count(*) AS sessions,
           min(xact_start) AS xact_start,
           min(state_change) AS state_change,
           array_agg(coalesce(application_name, '')) FILTER (WHERE {_FOLDABLE}) AS idle_apps
    FROM (SELECT *,
                 CASE WHEN ascii(query) NOT IN (9, 10, 12, 13, 32, 76, 108) THEN NULL
                      WHEN ltrim(query, E' \t\n\r\f') ILIKE 'listen%'
                      THEN substring(query FROM '(?i)^\s*listen\s+"?([^";\s]+)')
                 END AS listen_channel
          FROM pg_stat_get_activity(NULL)
          WHERE pid <> pg_backend_pid()) backend
    GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11
) g
LEFT JOIN pg_database d ON d.oid = g.datid
LEFT JOIN pg_roles r ON r.oid = g.usesysid
"""
GROUP_WIDTH = len(ActivityGroup._fields)
# ActivityGroup's columns by position: the labels, then what adds up
_STATE, _SESSIONS, _TRANSACTION_AGE, _STATE_AGE = map(ActivityGroup._fields.index, (
    "state", "sessions", "max_transaction_age", "max_state_age"))
_CLIENT_ADDR = GROUP_WIDTH + 2  # after client and pid


# A group's labels (ActivityGroup's fields before sessions) -> its columns: the row of its one
# session, or what several added up to (a row is its group's until another joins it)
_Listed = dict[tuple[Any, ...], Sequence[Any]]
_GROUP_COLUMNS = operator.itemgetter(slice(0, GROUP_WIDTH))
_DATNAME, _USENAME, _APPLICATION, _SESSIONS_OF = map(operator.itemgetter, map(
    ActivityGroup._fields.index, ("datname", "usename", "application_name", "sessions")))
_MORE_THAN_ONE = (1).__lt__


class InTransaction(NamedTuple):
    """A client backend in a transaction, as read. Ordered by its first two fields as ORDER
    BY xact_start, pid orders: the oldest transaction first. Its group is built when asked:
    on a busy server there are hundreds, and only a few are shown."""

    minus_age: float  # -transaction_age
    pid: int
    row: Row  # ACTIVITY_SQL's: this session alone, so its ages are the group's

    @property
    def group(self) -> ActivityGroup:
        return ActivityGroup._make(self.row[:GROUP_WIDTH])

    def session(self) -> Session:
        g = self.group
        return Session(self.pid, g.datname, g.usename, g.application_name,
                       self.row[_CLIENT_ADDR] or "", g.state, g.wait_event_type, g.wait_event,
                       g.max_transaction_age, g.max_state_age)


class ActivityRead(NamedTuple):
    groups: tuple[ActivityGroup, ...]
    oldest: tuple[Session, ...]  # oldest transaction first
    blocked: tuple[BlockedSession, ...]  # only those another session blocks
    group_pids: tuple[tuple[int, ...], ...] = ()  # each group's backends, in groups' order
    in_transaction: tuple[InTransaction, ...] = ()  # every client backend in a transaction


class _IdleRow(NamedTuple):
    """A group of idle sessions without their application, and how many each has."""

    group: ActivityGroup  # application_name: FOLDED
    applications: Counter[str]


def activity(rows: Iterable[Row], top_transactions: int,
             label_top_n: int | None) -> ActivityRead:
    """The read's rows as groups, the top_transactions oldest transactions and the blocked
    sessions. label_top_n: the values kept per label, the idle sessions of the others folded
    (None: none folded). Rows are added up by their labels before any group is built: there
    may be a row per session."""
    listed: _Listed = {}  # never folded
    pids: dict[tuple[Any, ...], list[int]] = {}
    idle: list[_IdleRow] = []
    in_transaction: list[InTransaction] = []
    blocked: list[BlockedSession] = []
    for r in rows:  # a row per session that is not idle: this loop is most of a busy poll's CPU
        client, pid, _, blocked_by, idle_apps = r[GROUP_WIDTH:]
        if blocked_by:  # a lock wait whose blocker already went is no longer blocked
            blocked.append(BlockedSession(pid, tuple(blocked_by), r[_STATE_AGE] or 0.0))
        if not client:
            continue
        if idle_apps is not None:
            group = ActivityGroup._make((*r[:2], FOLDED, *r[3:GROUP_WIDTH]))
            idle.append(_IdleRow(group, Counter(idle_apps)))
            continue
        labels = r[:_SESSIONS]
        same = listed.get(labels)
        listed[labels] = r if same is None else _added(same, r)
        if pid is None:
            continue
        if r[_STATE] != "unknown":  # another role's, without pg_monitor: state unknown
            pids.setdefault(labels, []).append(pid)
        transaction_age = r[_TRANSACTION_AGE]
        if transaction_age is not None:
            in_transaction.append(InTransaction(-transaction_age, pid, r))
    groups = list(map(ActivityGroup._make, map(_GROUP_COLUMNS, listed.values())))
    listed_count = len(groups)
    groups += _idle_groups(groups, idle, label_top_n)
    oldest = [s.session() for s in heapq.nsmallest(top_transactions, in_transaction)]
    group_pids = [tuple(pids.get(labels, ())) for labels in listed]
    return ActivityRead(tuple(groups), tuple(oldest), tuple(blocked),
                        (*group_pids, *[()] * (len(groups) - listed_count)),  # idle: no pids
                        tuple(in_transaction))


def _idle_groups(listed: Collection[ActivityGroup], idle: Sequence[_IdleRow],
                 top_n: int | None) -> list[ActivityGroup]:
    """The idle sessions as groups per application: the top N values of each label (by every
    session's weight, as the metrics rank them) keep their names, the idle sessions of the
    others fold into FOLDED. A kept value is never folded, so its weight is whole, and the same
    values are the top N when the metrics rank these groups."""
    if top_n is None:
        return [ActivityGroup._make((*row.group[:2], app, *row.group[3:_SESSIONS], sessions,
                                     *row.group[_TRANSACTION_AGE:]))
                for row in idle for app, sessions in row.applications.items()]
    everyone = [*listed, *(row.group for row in idle)]
    apps: Counter[str] = Counter()
    for row in idle:
        apps.update(row.applications)  # into an empty Counter (the usual one row): in C
    apps.update(session_weights(_APPLICATION, listed))
    kept_apps = keep_top(apps, top_n)
    kept_datnames = keep_top(session_weights(_DATNAME, everyone), top_n)
    kept_usenames = keep_top(session_weights(_USENAME, everyone), top_n)
    folded: list[tuple[Any, ...]] = []
    for row in idle:
        g = row.group
        datname = g.datname if g.datname in kept_datnames else FOLDED
        usename = g.usename if g.usename in kept_usenames else FOLDED
        # only the kept applications are looked up: the rest is what they leave
        kept = [(app, row.applications[app]) for app in kept_apps if app in row.applications]
        shares = [*kept, (FOLDED, g.sessions - sum(sessions for _, sessions in kept))]
        for app, sessions in shares:
            if sessions:
                folded.append((datname, usename, app, *g[_STATE:_SESSIONS], sessions,
                               *g[_TRANSACTION_AGE:]))
    return added_up(folded)


def added_up(groups: Iterable[Sequence[Any]]) -> list[ActivityGroup]:
    """Groups (or rows, or tuples in ActivityGroup's order) of the same labels added up into
    one, in the order their labels first come."""
    first: _Listed = {}
    totals: dict[tuple[Any, ...], list[Any]] = {}  # labels seen more than once: running sums
    for g in groups:
        labels = g[:_SESSIONS]
        if labels not in first:
            first[labels] = g
            continue
        total = totals.get(labels)
        if total is None:
            one = first[labels]
            total = totals[labels] = [one[_SESSIONS], one[_TRANSACTION_AGE], one[_STATE_AGE]]
        total[0] += g[_SESSIONS]
        total[1] = _oldest(total[1], g[_TRANSACTION_AGE])
        total[2] = _oldest(total[2], g[_STATE_AGE])
    for labels, total in totals.items():
        first[labels] = (*labels, *total)
    return list(map(ActivityGroup._make, map(_GROUP_COLUMNS, first.values())))


def session_weights(value_of: Callable[[ActivityGroup], str],
                    groups: Sequence[ActivityGroup]) -> Counter[str]:
    """Each value's sessions: every group counted once by a Counter, in C, then the groups of
    more than one session add the rest (on a busy server most groups are one session each)."""
    weights = Counter(map(value_of, groups))
    for g in compress(groups, map(_MORE_THAN_ONE, map(_SESSIONS_OF, groups))):
        weights[value_of(g)] += g.sessions - 1
    return weights


def _added(a: Sequence[Any], b: Sequence[Any]) -> tuple[Any, ...]:
    """Two groups of the same labels (rows, or what was added up before) as one: sessions add
    up, the oldest ages stay."""
    return (*a[:_SESSIONS], a[_SESSIONS] + b[_SESSIONS],
            _oldest(a[_TRANSACTION_AGE], b[_TRANSACTION_AGE]),
            _oldest(a[_STATE_AGE], b[_STATE_AGE]))


def _oldest(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)
