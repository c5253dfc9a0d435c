"""The shipped systemd unit (deploy/systemd): what docs/deploy.md shows, accepted by systemd,
and with a file descriptor limit the exporter's connection limit fits under."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from exporter import webguard

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "deploy" / "systemd" / "prefect-pg-exporter.service"


def _service() -> configparser.SectionProxy:
    parser = configparser.ConfigParser(strict=True, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    return parser["Service"]


def test_the_unit_bounds_file_descriptors() -> None:
    """Without a limit a flood of sockets took every descriptor the exporter had."""
    limit = int(_service()["LimitNOFILE"])
    assert 256 <= limit <= 65536
    # the connection limit leaves the exporter its reserve of descriptors
    assert webguard.max_connections(limit) <= limit - webguard.RESERVED_FDS


def test_the_unit_is_the_one_the_deploy_doc_shows() -> None:
    assert UNIT.read_text() in (ROOT / "docs" / "deploy.md").read_text()


def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    # the same unit with an ExecStart that exists here, and its EnvironmentFile not required
    text = UNIT.read_text().replace("/opt/prefect-pg-exporter/bin/prefect-pg-exporter",
                                    sys.executable).replace("EnvironmentFile=/",
                                                            "EnvironmentFile=-/")
    unit = tmp_path / UNIT.name
    unit.write_text(text)
    done = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True,
                          timeout=60)
    problems = [line for line in (done.stdout + done.stderr).splitlines()
                if UNIT.name in line]
    assert problems == [], done.stdout + done.stderr
