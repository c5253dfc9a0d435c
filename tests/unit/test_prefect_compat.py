"""What each Prefect release lets the exporter see, and what the doctor says where it cannot:
the capability table at its boundaries, the blind-spot findings on snapshots read from the
recorded settings of real servers, and docs/compatibility.md held to the table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from exporter.diagnosis import diagnose
from exporter.finding import Finding, exit_code
from exporter.pgbouncer.snapshot import Pool
from exporter.prefect.compat import BLIND_SPOT, STATEMENT_CACHE, has, parse_version
from exporter.prefect.settings import parse_settings
from exporter.prefect.snapshot import PrefectSnapshot
from exporter.source import Snapshot
from tests.factories import pgbouncer_snapshot, prefect_snapshot

SETTINGS = Path(__file__).parent / "data" / "prefect_settings"
ROOT = Path(__file__).parent.parent.parent
TRANSACTION = Pool("prefect", "prefect", "transaction", {"cl_active": 1}, 0.0)
SESSION = Pool("prefect", "prefect", "session", {"cl_active": 1}, 0.0)


def recorded(version: str, **overrides: float) -> PrefectSnapshot:
    """A snapshot with the settings a real server of that release answered."""
    numbers, texts = parse_settings(json.loads((SETTINGS / f"{version}.json").read_text()))
    return prefect_snapshot(version=version, settings={**numbers, **overrides},
                            text_settings=texts)


def blind_spots(*snapshots: Snapshot) -> list[Finding]:
    return [f for f in diagnose(snapshots)
            if f.check in (BLIND_SPOT.id, STATEMENT_CACHE.id)]


@pytest.mark.parametrize(("text", "version"), [
    ("3.4.25", (3, 4, 25)), ("2.20.27", (2, 20, 27)), ("3.4.6.dev2", (3, 4, 6)),
    ("3.10", (3, 10, 0)), ("", None), ("unknown", None)])
def test_parse_version(text: str, version: tuple[int, int, int] | None) -> None:
    assert parse_version(text) == version


@pytest.mark.parametrize(("capability", "before", "since"), [
    ("pool_sizes", "3.1.12", "3.1.13"), ("application_name", "3.1.12", "3.1.13"),
    ("statement_caches", "3.2.6", "3.2.7"), ("listen_services", "3.4.5", "3.4.6"),
    ("csrf", "2.16.4", "2.16.5")])
def test_capability_boundaries(capability: str, before: str, since: str) -> None:
    assert (has(before, capability), has(since, capability)) == (False, True)
    assert has("", capability) is None


def test_2x_says_everything_it_cannot_know_and_never_fine() -> None:
    found = blind_spots(recorded("2.20.27"))
    assert [(f.check, f.severity) for f in found] == [(BLIND_SPOT.id, "info")] * 4
    caches, pools, listen, outcomes = found
    assert "cannot read whether asyncpg's statement caches are off" in caches.title
    assert "off PgBouncer transaction pooling" in caches.action
    assert pools.title == "Prefect 2.20.27 reports pool_size and max_overflow as null"
    assert "pool_size 5, max_overflow 10" in pools.evidence[0]
    assert "PREFECT_SQLALCHEMY_POOL_SIZE and PREFECT_SQLALCHEMY_MAX_OVERFLOW" in pools.action
    assert "duplicated background services cannot be detected" in listen.title
    assert "PREFECT_API_SERVICES_<SERVICE>_ENABLED=false" in listen.action
    assert outcomes.title == "Prefect 2.20.27: runs that failed or crashed cannot be counted"
    assert "3.0.4+" in outcomes.action
    assert exit_code(found) == 0  # info: a cron'd doctor does not fail for the release


def test_a_pool_size_that_was_set_is_not_a_blind_spot() -> None:
    snap = recorded("2.20.27", **{"server.database.sqlalchemy.pool_size": 4.0})
    (pools,) = [f for f in blind_spots(snap) if "null" in f.title]
    assert pools.title == "Prefect 2.20.27 reports max_overflow as null"


def test_31_before_the_statement_caches_and_the_listen() -> None:
    found = blind_spots(recorded("3.1.15"))
    assert "every other API replica with --no-services" in found[-1].action
    titles = [f.title for f in found]
    assert titles == [
        "Prefect 3.1.15: cannot read whether asyncpg's statement caches are off",
        "Prefect 3.1.15: duplicated background services cannot be detected"]
    # 3.0.11-3.1.12 still report null pool sizes; the advice names 3.x variables
    (pools,) = [f for f in blind_spots(recorded("3.1.12")) if "null" in f.title]
    assert "PREFECT_SERVER_DATABASE_SQLALCHEMY_POOL_SIZE" in pools.action
    # 3.0.0-3.0.10 read only the flat names
    (pools,) = [f for f in blind_spots(recorded("3.0.10")) if "null" in f.title]
    assert "PREFECT_SQLALCHEMY_POOL_SIZE and PREFECT_SQLALCHEMY_MAX_OVERFLOW" in pools.action


@pytest.mark.parametrize("version", ["3.4.25", "3.8.8", "3.9.1"])
def test_recent_releases_have_no_blind_spot(version: str) -> None:
    assert blind_spots(recorded(version), pgbouncer_snapshot((SESSION,))) == []


def test_transaction_pooling_in_front_of_a_release_without_the_cache_settings() -> None:
    found = blind_spots(recorded("3.1.15"), pgbouncer_snapshot((TRANSACTION,)))
    warnings = [f for f in found if f.severity == "warning"]
    # one finding, with advice that works on that release (the settings one is silent)
    assert [f.check for f in warnings] == ["statement_cache_with_transaction_pooling"]
    assert "cannot turn asyncpg's statement caches off" in warnings[0].title
    assert "session-pooling route" in warnings[0].action
    assert not any("cannot read whether" in f.title for f in found)
    # a release with the settings and caches left on: the settings-based finding, as before
    (on,) = blind_spots(recorded("3.4.25", **{
        "server.database.sqlalchemy.connect_args.statement_cache_size": 100.0}),
        pgbouncer_snapshot((TRANSACTION,)))
    assert "Prefect's asyncpg statement caches are on" in on.title


def test_unknown_versions() -> None:
    assert blind_spots(prefect_snapshot(version="", settings={})) == []  # Prefect Cloud
    (unknown,) = blind_spots(prefect_snapshot(version="nightly"))
    assert unknown.title == "cannot tell which Prefect this is (version 'nightly')"


def test_the_compatibility_page_is_rendered_from_the_table() -> None:
    from lab.compatibility import page

    assert (ROOT / "docs" / "compatibility.md").read_text() == page(), \
        "regenerate: python -m lab.compatibility > docs/compatibility.md"
