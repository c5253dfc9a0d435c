"""PostgreSQL: pg_stat_activity, locks, settings and hot-table vacuum state, through asyncpg."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from exporter.kind import SourceKind
from exporter.postgres.checks import CHECKS, RULES
from exporter.postgres.config import CONFIG
from exporter.postgres.incidents import postgres_incidents
from exporter.postgres.metrics import SPECS, UP, postgres_families
from exporter.postgres.snapshot import PostgresSnapshot

if TYPE_CHECKING:
    from exporter.config import Config
    from exporter.source import Source


def _sources(config: Config) -> Sequence[Source]:
    if not config.postgres_targets:
        return []  # and asyncpg is never imported
    from exporter.postgres.source import PostgresSource  # asyncpg only when configured

    return [PostgresSource(t, statement_timeout_ms=config.statement_timeout_ms,
                           connect_timeout=config.poll_timeout_seconds,
                           top_transactions=config.top_transactions,
                           hot_tables=config.hot_tables,
                           statements=not config.no_statements,
                           top_statements=config.top_statements,
                           sizes_every_seconds=config.database_size_interval_seconds,
                           thresholds=config.thresholds,
                           label_top_n=config.label_top_n)
            for t in config.postgres_targets]


KIND = SourceKind(name="postgres", snapshot_type=PostgresSnapshot, up=UP, specs=SPECS,
                  families=postgres_families, checks=CHECKS, rules=RULES, sources=_sources,
                  config=CONFIG,
                  incidents=postgres_incidents)
