"""The exporter's settings for PostgreSQL targets: their DSNs."""

from __future__ import annotations

from typing import Any

from exporter.dsn import DSNError, Target
from exporter.settingspec import ENV_PREFIX, Given, KindConfig, Setting, dsn_targets


def _driver_reads(target: Target, what: str) -> None:
    try:
        target.asyncpg_dsn()  # asyncpg reads fewer keywords than libpq
    except DSNError as exc:
        raise DSNError(f"{what}: {exc}") from None


def _targets(given: Given) -> dict[str, Any]:
    what = given.origins.get("postgres_dsn", "") or f"{ENV_PREFIX}POSTGRES_DSN"
    return {"postgres_targets": dsn_targets(given.raw.get("postgres_dsn", ""), what,
                                            _driver_reads)}


CONFIG = KindConfig(
    target_settings=(
        Setting("postgres_dsn", str, "PostgreSQL to watch: libpq URI or key/value DSN; several "
                "separated by ';', each optionally named as name=postgresql://...", "DSN",
                secret=True),
    ),
    targets=_targets)
