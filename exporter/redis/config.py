"""The exporter's settings for Redis targets: their URLs and when a stream consumer stops
counting as active."""

from __future__ import annotations

from typing import Any

from exporter.redis.target import RedisURLError, parse_redis_targets
from exporter.settingspec import (
    ENV_PREFIX,
    ConfigError,
    Given,
    KindConfig,
    Setting,
    positive_float,
)


def _targets(given: Given) -> dict[str, Any]:
    value = given.raw.get("redis_url", "")
    try:
        targets = (parse_redis_targets(value, f"{ENV_PREFIX}REDIS_URL")
                   if value.strip() else ())
    except RedisURLError as exc:
        raise ConfigError(str(exc)) from None
    return {"redis_targets": targets}


CONFIG = KindConfig(
    target_settings=(
        Setting("redis_url", str, "Redis to watch (Prefect's messaging, Docket): redis://[user:"
                "password@]host:port/db, rediss://... or redis+sentinel://host:26379/service/"
                "db; several separated by ';', each optionally named as name=redis://...",
                "URL", secret=True),
        Setting("redis_consumer_idle_seconds", positive_float, "a stream consumer idle longer "
                "than this no longer counts as active", "SECONDS"),
    ),
    targets=_targets)
