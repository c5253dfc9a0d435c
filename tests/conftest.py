"""Fixtures for every test: an in-process exporter on a free port (tests/lab/conftest.py adds
the lab's real servers)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from exporter.app import Exporter
from tests.helpers import FAST_POLL, StartExporter, load_for_test


@pytest.fixture
async def start_exporter() -> AsyncIterator[StartExporter]:
    """Start an exporter on a free port with fast polling; flags as keyword arguments."""
    started: list[Exporter] = []

    async def start(**flags: Any) -> Exporter:
        settings = {**FAST_POLL, "listen_address": "127.0.0.1:0", **flags}
        exporter = Exporter(load_for_test(settings))
        await exporter.start()
        started.append(exporter)
        return exporter

    yield start
    for exporter in started:
        await exporter.stop()
