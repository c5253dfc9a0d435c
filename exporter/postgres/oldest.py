"""How far back each of Prefect's big tables goes: the retention backlog (#25).

One timestamp column per table, chosen because Prefect indexes it on every release from 2.20 to
3.9 (its models and migrations), so `min(column)` is an index endpoint lookup, not a scan,
at any table size (tests/lab/test_bigdb_lab.py proves the plan at a million rows):

| table | column | index | what deletes old rows |
|---|---|---|---|
| flow_run | end_time | ix_flow_run__end_time_desc | db_vacuum (flow_runs): end_time < cutoff |
| task_run | end_time | ix_task_run__end_time_desc | with their flow run (ON DELETE CASCADE) |
| log | timestamp | ix_log__timestamp | db_vacuum, by their flow run |
| artifact | updated | ix_artifact__updated | db_vacuum, by their flow run |
| events | occurred | ix_events__occurred | event persister (< 3.6.21), db_vacuum |
| event_resources | updated | ix_event_resources__updated | idem; never on 2.x |

(event_resources.occurred is what db_vacuum deletes by, but it has an index of its own only
from 3.8; `updated`, the row's insertion time, is indexed everywhere.)

pg_monitor cannot SELECT Prefect's tables, and the Prefect API cannot answer this: it sorts
flow runs and task runs by end_time descending only, artifacts by created or updated descending
only, and has no endpoint for event_resources (3.9's schemas/sorting.py); the oldest event is
read through it already (prefect_events_oldest_age_seconds), near the retention cut-off only.
So reading them is opt-in, one column per table and nothing else:
`GRANT SELECT (end_time) ON flow_run TO <role>` and so on (the doctor prints the statements).
The context statement says which columns the role may read; the ages are read
at most every OLDEST_EVERY_SECONDS, in one statement, and only for those.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from exporter.postgres.snapshot import OldestRow

if TYPE_CHECKING:
    import asyncpg

OLDEST_EVERY_SECONDS = 60.0

OLDEST_COLUMNS: tuple[tuple[str, str], ...] = (
    ("flow_run", "end_time"), ("task_run", "end_time"), ("log", "timestamp"),
    ("artifact", "updated"), ("events", "occurred"), ("event_resources", "updated"))

# For the context statement: each table of OLDEST_COLUMNS visible on the search path (where
# Prefect's are), with whether this role may read that column. The catalogs need no privilege.
_PAIRS = ", ".join(f"('{t}', '{c}')" for t, c in OLDEST_COLUMNS)
COLUMNS_SQL = f"""
SELECT n.nspname AS "schema", c.relname AS "table", a.attname AS "column",
       has_column_privilege(c.oid, a.attnum, 'SELECT') AS readable
FROM (VALUES {_PAIRS}) AS o(tbl, col)
JOIN pg_class c ON c.relname = o.tbl AND c.relkind IN ('r', 'p') AND pg_table_is_visible(c.oid)
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = o.col AND NOT a.attisdropped
ORDER BY 2
"""


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def ages_sql(rows: Sequence[OldestRow]) -> str:
    """One statement for every readable column: each branch is min() over its index."""
    return "\nUNION ALL\n".join(
        f"SELECT {i} AS i, date_part('epoch', now() - min({_quoted(r.column)})) AS age "
        f"FROM {_quoted(r.schema)}.{_quoted(r.table)}"
        for i, r in enumerate(rows))


class OldestRowsReader:
    """The ages of the readable columns, read at most once a minute."""

    def __init__(self) -> None:
        self._checked_at = float("-inf")
        self._ages: dict[tuple[str, str], float | None] = {}

    async def read(self, conn: asyncpg.Connection, present: Sequence[OldestRow],
                   now: float) -> tuple[OldestRow, ...]:
        readable = [r for r in present if r.readable]
        known = all((r.schema, r.table) in self._ages for r in readable)
        if readable and (now - self._checked_at >= OLDEST_EVERY_SECONDS or not known):
            import asyncpg  # the source has imported it already

            self._checked_at = now
            try:
                rows = await conn.fetch(ages_sql(readable))
            except asyncpg.PostgresError:
                # a migration's ACCESS EXCLUSIVE lock past the exporter's lock_timeout, a grant
                # revoked since the context was read: no ages until the next read, and the
                # rest of the poll goes on
                rows = []
            self._ages = {(readable[r["i"]].schema, readable[r["i"]].table): r["age"]
                          for r in rows}
        return tuple(r._replace(age_seconds=self._ages.get((r.schema, r.table)))
                     if r.readable else r for r in present)
