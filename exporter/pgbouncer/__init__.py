"""PgBouncer: the admin console's SHOW commands, through psycopg (simple query protocol)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

# PostgreSQL's package first, whole: PgBouncer's checks join PostgreSQL's snapshots, and
# PostgreSQL's checks (through Prefect's package, whose checks read PgBouncer's) lead back here;
# initialised in this order every import finds what it needs, whichever package comes first.
import exporter.postgres  # noqa: F401  # isort: skip
from exporter.kind import SourceKind
from exporter.pgbouncer.checks import CHECKS, RULES
from exporter.pgbouncer.config import CONFIG
from exporter.pgbouncer.incidents import pool_waiting
from exporter.pgbouncer.metrics import SPECS, UP, pgbouncer_families, pgbouncer_joined
from exporter.pgbouncer.snapshot import PgBouncerSnapshot

if TYPE_CHECKING:
    from exporter.config import Config
    from exporter.source import Source


def _sources(config: Config) -> Sequence[Source]:
    if not config.pgbouncer_targets:
        return []  # and psycopg is never imported
    from exporter.pgbouncer.source import PgBouncerSource  # psycopg only when configured

    return [PgBouncerSource(t, connect_timeout=config.poll_timeout_seconds)
            for t in config.pgbouncer_targets]


KIND = SourceKind(name="pgbouncer", snapshot_type=PgBouncerSnapshot, up=UP, specs=SPECS,
                  families=pgbouncer_families, checks=CHECKS, rules=RULES, sources=_sources,
                  config=CONFIG,
                  incidents=pool_waiting, joined=pgbouncer_joined)
