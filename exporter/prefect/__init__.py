"""Prefect API: scheduling, work pools and workers, server settings, through httpx."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from exporter.kind import SourceKind
from exporter.prefect.chain import unreadable_blocked
from exporter.prefect.checks import CHECKS, RULES
from exporter.prefect.config import CONFIG
from exporter.prefect.incidents import prefect_incidents
from exporter.prefect.metrics import API_UP, SPECS, prefect_families, prefect_verdicts
from exporter.prefect.snapshot import PrefectProbeSnapshot

if TYPE_CHECKING:
    from exporter.config import Config
    from exporter.source import Source


def _log_settings(config: Config) -> None:
    """Which credential is sent and which custom headers are dropped: names of settings, never
    their values. The same for every target."""
    import structlog

    log = structlog.get_logger("exporter")
    target = config.prefect_targets[0]
    if target.auth.unused:
        log.info("prefect credentials: both set, sending the auth string as Prefect's client "
                 "does (3.4.1+)", using=target.auth.origin, ignored=target.auth.unused)
    if target.ignored_headers:
        log.warning("prefect custom headers ignored: the exporter sets them itself",
                    headers=list(target.ignored_headers), setting="PREFECT_CLIENT_CUSTOM_HEADERS")


def _sources(config: Config) -> Sequence[Source]:
    if not config.prefect_targets:
        return []  # and httpx is never imported
    from exporter.prefect.source import PrefectSource  # httpx only when configured

    _log_settings(config)
    return [PrefectSource(t.name, t.api_url, auth=t.auth, timeout=config.poll_timeout_seconds,
                          headers=t.headers, verify=t.verify,
                          horizon_seconds=config.prefect_upcoming_horizon_seconds,
                          max_pools=config.label_top_n,
                          max_concurrency=config.prefect_max_concurrent_requests,
                          stuck_after=config.stuck_run_seconds,
                          heartbeat_timeout=config.heartbeat_timeout_seconds,
                          outcome_window=config.outcome_window_seconds)
            for t in config.prefect_targets]


KIND = SourceKind(name="prefect", snapshot_type=PrefectProbeSnapshot, up=API_UP, specs=SPECS,
                  families=prefect_families, checks=CHECKS, rules=RULES, sources=_sources,
                  config=CONFIG, incidents=prefect_incidents,
                  unreadable=unreadable_blocked, verdicts=prefect_verdicts)
