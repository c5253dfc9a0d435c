"""Log formats: logfmt, the exporter toolkit's, beside JSON and console."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import structlog

from exporter.logs import configure


@pytest.fixture(autouse=True)
def _restore_structlog() -> Iterator[None]:
    yield
    structlog.reset_defaults()


def test_logfmt(capsys: pytest.CaptureFixture[str]) -> None:
    configure("info", "logfmt")
    structlog.get_logger("exporter").info("source poll failed", target="db:5432/prefect",
                                          reason="connect")
    structlog.get_logger("exporter").debug("not at info")
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("timestamp=")
    assert ' level=info event="source poll failed" ' in line
    assert " target=db:5432/prefect" in line and line.count(" reason=connect") == 1


def test_json_stays_json(capsys: pytest.CaptureFixture[str]) -> None:
    configure("warning", "json")
    structlog.get_logger("exporter").warning("stale", target="t")
    record = json.loads(capsys.readouterr().err)
    assert (record["event"], record["level"], record["target"]) == ("stale", "warning", "t")
