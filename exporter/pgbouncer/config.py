"""The exporter's settings for PgBouncer targets: the DSNs of their admin consoles."""

from __future__ import annotations

from typing import Any

from exporter.dsn import DSNError, Target
from exporter.settingspec import ENV_PREFIX, Given, KindConfig, Setting, dsn_targets


def _driver_reads(target: Target, what: str) -> None:
    if target.params.get("target_session_attrs", "any") != "any":
        # libpq checks a session with SHOW transaction_read_only, which PgBouncer's admin
        # console refuses ("invalid command"): every connection would fail
        raise DSNError(f"{what}: target {target.name!r}: "
                       "target_session_attrs must be any (PgBouncer's admin console cannot "
                       "answer the check the others make)")


def _targets(given: Given) -> dict[str, Any]:
    what = given.origins.get("pgbouncer_dsn", "") or f"{ENV_PREFIX}PGBOUNCER_DSN"
    return {"pgbouncer_targets": dsn_targets(given.raw.get("pgbouncer_dsn", ""), what,
                                             _driver_reads)}


CONFIG = KindConfig(
    target_settings=(
        Setting("pgbouncer_dsn", str, "PgBouncer admin consoles to watch (database pgbouncer, a "
                "stats_users or admin_users user); several separated by ';', each optionally "
                "named as name=postgresql://...", "DSN", secret=True),
    ),
    targets=_targets)
