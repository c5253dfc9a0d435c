"""Bounded label values for labels whose values come from outside (the database, the API).

A thousand distinct application names must not become a thousand series: the top N values by
weight keep their names and the rest fold into OTHER.
"""

from __future__ import annotations

import heapq
import operator
from collections.abc import Hashable, Iterable, Mapping
from collections.abc import Set as AbstractSet
from typing import TypeVar

K = TypeVar("K", bound=Hashable)
S = TypeVar("S", str, tuple[str, str])

OTHER = "other"
# A value already folded by the source (exporter/postgres/source.py folds idle sessions in SQL):
# never kept, never ranked, always OTHER. PostgreSQL text cannot hold a NUL, so no value read
# from it is this.
FOLDED = "\x00folded"
MAX_LABEL_LENGTH = 128


def clean(value: str) -> str:
    """A label value that stays readable and encodable: bounded length, and characters that
    cannot be UTF-8 (undecodable bytes smuggled in as surrogates) replaced. Escaping quotes,
    backslashes and newlines is the exposition format's job; prometheus_client does it."""
    if len(value) > MAX_LABEL_LENGTH:
        value = value[: MAX_LABEL_LENGTH - 1] + "…"
    if not value.isascii():
        value = value.encode("utf-8", "replace").decode("utf-8")
    return value


def needs_cleaning(values: Iterable[str] | AbstractSet[str]) -> bool:
    """Whether clean() changes any of the values (tested with C loops: there may be
    thousands)."""
    values = values if isinstance(values, AbstractSet) else list(values)
    return not all(map(str.isascii, values)) or max(map(len, values), default=0) > MAX_LABEL_LENGTH


def keep_top(weights: Mapping[S, int], top_n: int) -> frozenset[S]:
    """The top_n values by weight (ties broken by name, so the choice is stable)."""
    if len(weights) <= top_n:  # the common case: nothing to fold, nothing to sort
        return frozenset(weights)
    # (-weight, value) pairs built and compared in C: no Python key call per value (thousands
    # of application names, each its own value, are ranked on every poll)
    ranked = heapq.nsmallest(top_n, zip(map(operator.neg, weights.values()), weights,
                                        strict=True))
    return frozenset(value for _, value in ranked)


class Folder(dict[str, str]):
    """Maps a label's raw values to what is exported: kept values cleaned (once each), the
    rest OTHER. Built once per label per snapshot. A dict, so that `folder[value]` costs one
    lookup where thousands of rows are folded; `folder(value)` is the same."""

    def __init__(self, weights: Mapping[str, int] | AbstractSet[str], top_n: int) -> None:
        """weights: each value's weight; or only the values, when there are no more than
        top_n of them and none is folded."""
        if FOLDED in weights:  # what the source folded stays folded, and takes no place
            weights = ({v: w for v, w in weights.items() if v != FOLDED}
                       if isinstance(weights, Mapping) else weights - {FOLDED})
        if isinstance(weights, Mapping):
            kept: Iterable[str] = keep_top(weights, top_n)
        elif len(weights) <= top_n:
            kept = weights
        else:
            raise ValueError(f"{len(weights)} values without weights cannot fold to {top_n}")
        if not needs_cleaning(kept):
            super().__init__(zip(kept, kept, strict=True))  # the usual case: C loops
        else:
            super().__init__((value, clean(value)) for value in kept)

    def __missing__(self, value: str) -> str:
        return OTHER  # not stored: the folder never grows

    def __call__(self, value: str) -> str:
        return self[value]


def bounded_sum(items: Iterable[tuple[K, int | float]]) -> dict[K, float]:
    """Sum values that fold onto the same label tuple."""
    total: dict[K, float] = {}
    for key, value in items:
        total[key] = total.get(key, 0) + value
    return total


def bounded_max(items: Iterable[tuple[K, float]]) -> dict[K, float]:
    """Keep the largest value of those that fold onto the same label tuple."""
    best: dict[K, float] = {}
    for key, value in items:
        if key not in best or value > best[key]:
            best[key] = value
    return best
