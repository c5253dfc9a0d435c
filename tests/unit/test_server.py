"""The HTTP server's own decisions, without a network: content negotiation."""

from __future__ import annotations

import pytest

from exporter.server import accepts_gzip


@pytest.mark.parametrize(("header", "expected"), [
    ("gzip", True),
    ("gzip, deflate, br", True),
    ("GZIP;q=0.5", True),
    ("deflate, gzip;q=1.0, *;q=0.5", True),
    ("*", True),
    ("", False),
    ("identity", False),
    ("gzip;q=0", False),  # refused explicitly
    ("gzip;q=0.0, identity", False),
    ("*;q=0", False),
    ("x-gzip", False),  # not a substring match
    ("br, *;q=0.1", True),
    ("gzip;q=0, *;q=1", False),  # named beats the wildcard
    ("gzip;q=abc", False),
])
def test_gzip_is_chosen_by_weight(header: str, expected: bool) -> None:
    assert accepts_gzip(header) is expected
