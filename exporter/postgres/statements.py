"""The slowest statements, from pg_stat_statements when it is installed in the watched database.

pg_stat_statements holds up to pg_stat_statements.max entries (5,000 by default): it is read at
most every STATEMENTS_EVERY_SECONDS, in two steps. The ranking reads the counters only
(pg_stat_statements(false): no query text), summed per queryid over roles and nesting levels,
and keeps the top N by total execution time. The query texts live in a file PostgreSQL reads
whole for any call that shows them, so they are read only for queryids that entered the top N
since the last read (a read of the texts that fails leaves them unknown, asked again at the
next read: the ranking stands), and fingerprinted as they arrive: utility statements such as
`ALTER ROLE ... PASSWORD '...'` keep their literals in pg_stat_statements, and no raw text is
ever kept, exported or logged.

pg_monitor (pg_read_all_stats) sees every role's queryids and texts; without it, other roles'
rows have no queryid and are left out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import structlog

from exporter.incidents.fingerprint import fingerprint
from exporter.postgres.snapshot import StatementStats, TopStatements
from exporter.source import Snapshot

if TYPE_CHECKING:
    import asyncpg

log = structlog.get_logger("exporter.postgres")

STATEMENTS_EVERY_SECONDS = 60.0

# Where the extension is installed in this database, and its version (read with the context).
EXTENSION_SQL = """
SELECT json_build_object('version', extversion, 'schema', extnamespace::regnamespace::text)
FROM pg_extension WHERE extname = 'pg_stat_statements'
"""

_THIS_DATABASE = "(SELECT oid FROM pg_database WHERE datname = current_database())"

# {schema}: the extension's schema, as regnamespace quotes it; {total}: the column of its version
TOP_SQL = f"""
SELECT queryid, sum(calls)::int8 AS calls, (sum({{total}}) / 1000)::float8 AS seconds,
       sum(rows)::int8 AS rows
FROM {{schema}}.pg_stat_statements(false)
WHERE dbid = {_THIS_DATABASE} AND queryid IS NOT NULL
GROUP BY queryid
ORDER BY sum({{total}}) DESC, queryid
LIMIT $1
"""

TEXTS_SQL = f"""
SELECT DISTINCT ON (queryid) queryid, query
FROM {{schema}}.pg_stat_statements(true)
WHERE dbid = {_THIS_DATABASE} AND queryid = ANY($1::int8[])
ORDER BY queryid
"""


def total_column(version: str) -> str:
    """total_exec_time from 1.8 (PostgreSQL 13) on, total_time before."""
    major, _, minor = version.partition(".")
    try:
        return "total_exec_time" if (int(major), int(minor or 0)) >= (1, 8) else "total_time"
    except ValueError:
        return "total_exec_time"


class StatementsReader:
    """Reads the top N at most once a minute and keeps the fingerprints of those it shows."""

    def __init__(self, top_n: int) -> None:
        self._top_n = top_n
        self._last: TopStatements | None = None
        self._fingerprints: dict[int, str] = {}  # only the current top N's

    async def read(self, conn: asyncpg.Connection, extension: Mapping[str, str] | None,
                   now: float) -> TopStatements:
        if self._last is not None and now - self._last.checked_at < STATEMENTS_EVERY_SECONDS:
            return self._last
        self._last = await self._read(conn, extension, now)
        return self._last

    async def _read(self, conn: asyncpg.Connection, extension: Mapping[str, str] | None,
                    now: float) -> TopStatements:
        import asyncpg  # the source has imported it already

        if extension is None:
            self._fingerprints = {}
            return TopStatements(now, "not installed")
        schema, total = extension["schema"], total_column(extension["version"])
        try:
            rows = await conn.fetch(TOP_SQL.format(schema=schema, total=total), self._top_n)
        except asyncpg.ObjectNotInPrerequisiteStateError:
            # created in the database, but not in shared_preload_libraries
            return TopStatements(now, "not loaded")
        except asyncpg.PostgresError as exc:
            # a statement timeout, a privilege: the rest of the poll goes on without it
            return TopStatements(now, f"unreadable ({exc.sqlstate})")
        new = [r["queryid"] for r in rows if r["queryid"] not in self._fingerprints]
        texts = await _texts(conn, schema, new) if new else {}
        fingerprints = {}
        for r in rows:
            queryid = r["queryid"]
            if queryid in self._fingerprints:
                fingerprints[queryid] = self._fingerprints[queryid]
            elif texts is not None:  # fingerprinted as read: raw text never reaches a snapshot
                text = texts.get(queryid)
                fingerprints[queryid] = fingerprint(text) if text else ""
            # else: its text unknown this time, asked again at the next read
        self._fingerprints = fingerprints
        return TopStatements(now, "read", tuple(
            StatementStats(r["queryid"], r["calls"], r["seconds"], r["rows"],
                           fingerprints.get(r["queryid"], "")) for r in rows))


async def _texts(conn: asyncpg.Connection, schema: str, queryids: list[int]
                 ) -> dict[int, str] | None:
    """The texts of these queryids; None when they cannot be read. pg_stat_statements(true)
    loads the whole texts file and puts every entry's text in a tuplestore before any WHERE:
    megabytes of texts go to a temporary file, which fails under temp_file_limit, and a huge
    file can outlast the statement timeout. The ranking stands without them."""
    import asyncpg  # the source has imported it already

    try:
        rows = await conn.fetch(TEXTS_SQL.format(schema=schema), queryids)
    except asyncpg.PostgresError as exc:
        log.warning("statement texts unreadable", sqlstate=exc.sqlstate,
                    error=type(exc).__name__, statements=len(queryids))
        return None
    return {r["queryid"]: r["query"] for r in rows}


def statements_report(snapshots: Sequence[Snapshot]) -> dict[str, Any]:
    """The body of /statements: per PostgreSQL target, its top statements (fingerprints only)."""
    from exporter.postgres.snapshot import PostgresSnapshot

    targets = []
    for snap in snapshots:
        if not isinstance(snap, PostgresSnapshot) or snap.top_statements is None:
            continue
        top = snap.top_statements
        targets.append({
            "target": snap.target, "database": snap.database, "status": top.status,
            "read_at": top.checked_at,
            "statements": [{"queryid": str(s.queryid), "fingerprint": s.fingerprint,
                            "calls": s.calls, "total_seconds": round(s.seconds, 6),
                            "mean_seconds": round(s.seconds / s.calls, 6) if s.calls else 0.0,
                            "rows": s.rows} for s in top.statements]})
    return {"targets": targets}


def statements_text(report: Mapping[str, Any]) -> str:
    """The doctor's verbose listing of the same report."""
    lines = []
    for t in report["targets"]:
        lines.append(f"Slowest statements of {t['target']} ({t['database']}, pg_stat_statements: "
                     f"{t['status']}):")
        for i, s in enumerate(t["statements"], start=1):
            lines.append(f"  {i}. {s['total_seconds']:.3f}s in {s['calls']} call(s), mean "
                         f"{s['mean_seconds'] * 1000:.2f} ms, {s['rows']} rows, queryid "
                         f"{s['queryid']}: {s['fingerprint'] or '(text unknown)'}")
        if not t["statements"]:
            lines.append("  (none)")
    return "\n".join(lines) + "\n" if lines else ""
