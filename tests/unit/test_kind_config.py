"""Each source kind owns its settings (exporter/<kind>/config.py); exporter/config.py gathers
them. What the gathering relies on: keys unique across kinds, every key a kind builds into its
targets a Config field, and a kind with nothing set building no target."""

from __future__ import annotations

import dataclasses

from exporter.config import SETTINGS, Config
from exporter.kinds import KINDS
from exporter.settingspec import Given


def test_every_setting_once_each_kind_first() -> None:
    keys = [s.key for s in SETTINGS]
    assert len(keys) == len(set(keys))
    # where each kind's targets are: the first settings, in the kinds' order
    firsts = [kind.config.target_settings[0].key for kind in KINDS]
    assert firsts == ["postgres_dsn", "pgbouncer_dsn", "prefect_api_url", "redis_url"]
    # all of every kind's target settings first (--help's order), the kinds' other settings next
    targets = [s.key for kind in KINDS for s in kind.config.target_settings]
    others = [s.key for kind in KINDS for s in kind.config.settings]
    assert keys[:len(targets) + len(others)] == targets + others


def test_each_kind_builds_config_fields_and_nothing_when_unset() -> None:
    fields = {f.name for f in dataclasses.fields(Config)}
    built: list[str] = []
    for kind in KINDS:
        targets = kind.config.targets(Given({}, {}, {}, {}))
        assert set(targets) <= fields, kind.name
        assert all(value == () for value in targets.values()), kind.name
        built += targets
    assert built == ["postgres_targets", "pgbouncer_targets", "prefect_targets",
                     "redis_targets"]


def test_a_kind_takes_its_connection_settings_out_of_the_values() -> None:
    """Prefect's parsed URL becomes targets and leaves the values (which become Config fields
    as they are: a key left behind would be an unknown Config field)."""
    (prefect,) = [k for k in KINDS if k.name == "prefect"]
    values = {"prefect_api_url": (("p", "http://p:4200/api"),), "stuck_run_seconds": 60.0}
    targets = prefect.config.targets(Given({}, values, {}, {}))
    assert [t.api_url for t in targets["prefect_targets"]] == ["http://p:4200/api"]
    assert values == {"stuck_run_seconds": 60.0}
