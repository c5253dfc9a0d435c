"""Redis: what Prefect in HA keeps there (prefect-redis messaging, Docket), through redis-py's
asyncio client, read-only commands only."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from exporter.kind import Down, SourceKind
from exporter.redis.checks import CHECKS, RULES
from exporter.redis.config import CONFIG
from exporter.redis.incidents import redis_incidents
from exporter.redis.metrics import SPECS, UP, redis_families
from exporter.redis.snapshot import RedisSnapshot

if TYPE_CHECKING:
    from exporter.config import Config
    from exporter.source import Source


def _sources(config: Config) -> Sequence[Source]:
    if not config.redis_targets:
        return []  # and redis-py is never imported
    from exporter.redis.source import RedisSource  # redis-py only when configured

    return [RedisSource(t, timeout=config.poll_timeout_seconds,
                        consumer_idle_seconds=config.redis_consumer_idle_seconds)
            for t in config.redis_targets]


# Unreachable, a Redis stops what Prefect keeps there: critical, not a mere source_down.
DOWN = Down("critical", "Prefect on Redis stops with it: events are neither published nor "
            "persisted, automations and Docket's background services (scheduling, Late "
            "marking) stop, while the API replicas may still answer their health checks. "
            "Bring Redis back, then restart the services process (prefect #22436, #19080).")

KIND = SourceKind(name="redis", snapshot_type=RedisSnapshot, up=UP, specs=SPECS,
                  families=redis_families, checks=CHECKS, rules=RULES, sources=_sources,
                  config=CONFIG,
                  incidents=redis_incidents, down=DOWN)
