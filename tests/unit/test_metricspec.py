"""The one way a metric spec is declared: a typo in the type, or a counter not named _total,
is refused when the module declaring it is imported, never exported as a gauge."""

from __future__ import annotations

from typing import Any

import pytest

from exporter.metricspec import Specs

_pg = Specs("postgres")


def test_a_typo_in_the_type_is_refused() -> None:
    typo: Any = "counte"  # mypy refuses the literal itself; this is what it keeps out
    with pytest.raises(ValueError, match="unknown metric type 'counte'"):
        _pg("postgres_x_total", "target", "x", typo)


def test_a_counter_is_named_total_and_only_a_counter() -> None:
    with pytest.raises(ValueError, match="_total"):
        _pg("postgres_x", "target", "x", "counter")
    with pytest.raises(ValueError, match="_total"):
        _pg("postgres_x_total", "target", "x")


def test_sample_is_a_family_with_one_row() -> None:
    family = _pg("postgres_x_total", "target db", "x", "counter").sample(["t", "d"], 3)
    assert (family.name, family.type, family.rows) == ("postgres_x", "counter",
                                                      [(("t", "d"), 3)])
    assert [s.name for s in family.samples] == ["postgres_x_total"]
