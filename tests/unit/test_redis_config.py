"""The Redis settings: the URL forms, names, the _FILE variant, and no password ever shown."""

from __future__ import annotations

from pathlib import Path

import pytest

from exporter.config import ConfigError, describe, load

ENV = "PREFECT_PG_EXPORTER_REDIS_URL"


def test_named_targets_tls_user_and_database() -> None:
    config = load({}, {ENV: "messaging=redis://:s3cret@redis:6379/0;"
                            "docket=rediss://exporter:p%40ss@redis-2:6380/1"})
    messaging, docket = config.redis_targets
    assert (messaging.name, messaging.host, messaging.port, messaging.db) == (
        "messaging", "redis", 6379, 0)
    assert (docket.username, docket.password, docket.db) == ("exporter", "p@ss", 1)
    assert config.sources == ("redis",)
    assert config.redis_consumer_idle_seconds == 60.0
    assert "s3cret" not in repr(config) and "p@ss" not in repr(config)
    assert describe(config)["redis_targets"] == ["messaging", "docket"]
    assert docket.redacted() == "redis-2:6380/1 user=exporter"


def test_an_unnamed_target_is_named_after_its_address() -> None:
    (target,) = load({}, {ENV: "redis://:pw@10.0.0.7/2"}).redis_targets
    assert target.name == "10.0.0.7:6379/2"


def test_from_a_file_and_the_idle_limit(tmp_path: Path) -> None:
    secret = tmp_path / "redis-url"
    secret.write_text("redis://:from-file@r:6379/1\n")
    config = load({}, {ENV + "_FILE": str(secret),
                       "PREFECT_PG_EXPORTER_REDIS_CONSUMER_IDLE_SECONDS": "15"})
    assert config.redis_targets[0].password == "from-file"
    assert config.redis_consumer_idle_seconds == 15.0


@pytest.mark.parametrize("url, message", [
    ("http://:hunter2@r:6379", "must be redis://"),
    ("redis://:hunter2@r:6379/zero", "the database must be a number"),
    ("redis://:hunter2@r:99999/0", "not a Redis URL"),
    ("a=redis://:hunter2@r;a=redis://:hunter2@s", "target names must be unique"),
])
def test_bad_urls_are_refused_in_one_line_without_the_password(url: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load({}, {ENV: url})
    assert message in str(err.value) and "hunter2" not in str(err.value)
    assert "\n" not in str(err.value)


def test_the_sentinel_form_prefect_redis_accepts() -> None:
    (target,) = load({}, {ENV: "ha=redis+sentinel://exporter:s3cret@s-a:26380,s-b/mymaster/1"
                               "?sentinel_password=d43mon"}).redis_targets
    assert target.sentinels == (("s-a", 26380), ("s-b", 26379))
    assert (target.service, target.db, target.username, target.password) == (
        "mymaster", 1, "exporter", "s3cret")
    assert target.sentinel_password == "d43mon" and not target.tls
    assert target.redacted() == "sentinel s-a:26380,s-b:26379 service mymaster/1 user=exporter"
    assert {"s3cret", "d43mon"} <= set(target.secrets)
    (unnamed,) = load({}, {ENV: "rediss+sentinel://:pw@s1/prefect"}).redis_targets
    assert (unnamed.name, unnamed.tls) == ("prefect/0", True)


@pytest.mark.parametrize("url", ["redis+sentinel://:hunter2@s1/",
                                 "redis+sentinel://:hunter2@s1:port/m",
                                 "redis+sentinel://:hunter2@s1/m/one"])
def test_bad_sentinel_urls_are_refused(url: str) -> None:
    with pytest.raises(ConfigError, match="a Sentinel URL is") as err:
        load({}, {ENV: url})
    assert "hunter2" not in str(err.value)
