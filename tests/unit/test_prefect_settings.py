"""GET /admin/settings in its four shapes, from real answers (tests/unit/data/prefect_settings/,
trimmed; re-record with `python -m lab.record_settings`), read into the same canonical paths.

The recording servers ran with the lab's settings: late runs after 5 s, asyncpg statement caches
0, application name prefect-server, each release's default pool sizes. Releases before 3.0.11 read
other variable names for the late runs (PREFECT_API_SERVICES_*): theirs show the defaults.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from exporter.prefect.settings import parse_settings, settings_shape

DATA = Path(__file__).parent / "data" / "prefect_settings"
POOL = "server.database.sqlalchemy."
CACHES = "server.database.sqlalchemy.connect_args."
SCHEDULER = "server.services.scheduler."
LATE = "server.services.late_runs."

# Every release's scheduler defaults: 100 days and 1 hour whether written in seconds (2.x) or
# ISO 8601 (3.x).
SCHEDULER_DEFAULTS = {SCHEDULER + "enabled": 1.0, SCHEDULER + "loop_seconds": 60.0,
                      SCHEDULER + "max_runs": 100.0, SCHEDULER + "min_runs": 3.0,
                      SCHEDULER + "max_scheduled_time": 8_640_000.0,
                      SCHEDULER + "min_scheduled_time": 3600.0}
LAB_LATE = {LATE + "enabled": 1.0, LATE + "loop_seconds": 1.0, LATE + "after_seconds": 5.0}
DEFAULT_LATE = {LATE + "enabled": 1.0, LATE + "loop_seconds": 5.0, LATE + "after_seconds": 15.0}
POOL_DEFAULTS = {POOL + "pool_size": 5.0, POOL + "max_overflow": 10.0,
                 POOL + "pool_timeout": 30.0, POOL + "pool_recycle": 3600.0}
CACHES_OFF = {CACHES + "statement_cache_size": 0.0,
              CACHES + "prepared_statement_cache_size": 0.0}
APP = {CACHES + "application_name": "prefect-server"}

CASES = {
    # pool sizes null (SQLAlchemy's defaults apply): nothing to read
    "2.20.27": ("2.x", {**SCHEDULER_DEFAULTS, **LAB_LATE}, {}),
    "3.0.10": ("3.0-flat", {**SCHEDULER_DEFAULTS, **DEFAULT_LATE}, {}),
    "3.1.12": ("nested", {**SCHEDULER_DEFAULTS, **LAB_LATE}, {}),
    # 3.1.13: the sqlalchemy group, default pool sizes, the application name
    "3.1.15": ("nested", {**SCHEDULER_DEFAULTS, **LAB_LATE, **POOL_DEFAULTS}, APP),
    # 3.2.7: the statement caches
    "3.4.25": ("nested", {**SCHEDULER_DEFAULTS, **LAB_LATE, **POOL_DEFAULTS, **CACHES_OFF}, APP),
    "3.8.8": ("nested", {**SCHEDULER_DEFAULTS, **LAB_LATE, **POOL_DEFAULTS, **CACHES_OFF}, APP),
    "3.9.1": ("nested", {**SCHEDULER_DEFAULTS, **LAB_LATE, **POOL_DEFAULTS, **CACHES_OFF}, APP),
}


def recorded(version: str) -> Any:
    return json.loads((DATA / f"{version}.json").read_text())


def test_every_recording_has_a_case() -> None:
    assert sorted(p.stem for p in DATA.glob("*.json")) == sorted(CASES)


@pytest.mark.parametrize("version", sorted(CASES))
def test_each_shape_reads_into_the_canonical_paths(version: str) -> None:
    shape, numbers, texts = CASES[version]
    data = recorded(version)
    assert settings_shape(data) == shape
    assert parse_settings(data) == (numbers, texts)


@pytest.mark.parametrize(("version", "raw_key"), [
    ("2.20.27", "PREFECT_SQLALCHEMY_POOL_SIZE"), ("3.0.10", "sqlalchemy_pool_size")])
def test_flat_shapes_read_a_pool_size_that_was_set(version: str, raw_key: str) -> None:
    data = {**recorded(version), raw_key: 7, raw_key.replace("POOL_SIZE", "MAX_OVERFLOW")
            .replace("pool_size", "max_overflow"): 3}
    numbers, _ = parse_settings(data)
    assert numbers[POOL + "pool_size"] == 7 and numbers[POOL + "max_overflow"] == 3


def test_legacy_nested_pool_sizes_when_set() -> None:
    data = recorded("3.1.12")
    data["server"]["database"] |= {"sqlalchemy_pool_size": 12, "sqlalchemy_max_overflow": 0}
    numbers, _ = parse_settings(data)
    assert numbers[POOL + "pool_size"] == 12 and numbers[POOL + "max_overflow"] == 0


def test_docket_url_and_redacted_values_are_never_kept() -> None:
    data = recorded("3.9.1")
    data["server"]["docket"]["url"] = "redis://:redis-s3cret@redis:6379/0"
    numbers, texts = parse_settings(data)
    assert "redis-s3cret" not in repr((numbers, texts))
    assert not any("docket" in k or "connection_url" in k for k in (*numbers, *texts))


@pytest.mark.parametrize("answer", [None, [], "nope", {}, {"detail": "Not Found"}])
def test_not_settings(answer: Any) -> None:
    assert parse_settings(answer) == ({}, {})
