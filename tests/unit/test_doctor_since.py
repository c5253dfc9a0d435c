"""`doctor --since`: the recent incidents of the running exporter beside the present, and one
line when no exporter answers."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import bcrypt
import pytest

from exporter.incidents.remote import parse_since
from lab.common import free_port
from tests.helpers import StartExporter
from tests.unit.test_incidents import HOLDER_SQL, chain

UNREACHABLE = "postgresql://x@127.0.0.1:1/db"


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("30m", 1800), ("30min", 1800),
                                               ("1h", 3600), ("2d", 172800), ("1h30m", 5400),
                                               ("45", 45), ("1.5h", 5400)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_since(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "1w", "-1h", "0", "1h soon", "h"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="--since"):
        parse_since(text)


def doctor(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "exporter", "doctor", *args], capture_output=True, text=True,
        timeout=60, env={"PATH": os.environ["PATH"],
                         "PREFECT_PG_EXPORTER_POSTGRES_DSN": UNREACHABLE,
                         "PREFECT_PG_EXPORTER_POLL_TIMEOUT_SECONDS": "2", **env})


def test_no_exporter_is_one_line_and_the_present_is_still_printed() -> None:
    done = doctor("--since", "1h",
                  PREFECT_PG_EXPORTER_LISTEN_ADDRESS=f"127.0.0.1:{free_port()}")
    assert done.returncode == 1, done.stderr  # the present: a target it cannot read
    assert "[WARNING] cannot read postgres" in done.stdout
    lines = [line for line in done.stdout.splitlines() if "Recent incidents" in line]
    assert len(lines) == 1 and "no exporter answers at http://127.0.0.1:" in lines[0]
    assert lines[0].endswith("the present only.")
    bad = doctor("--since", "yesterday")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--since" in bad.stderr


async def test_the_running_exporters_incidents_beside_the_present(
        start_exporter: StartExporter, tmp_path: Path) -> None:
    hashed = bcrypt.hashpw(b"doctor-pw", bcrypt.gensalt(4)).decode()
    web = tmp_path / "web.yml"
    web.write_text(f"basic_auth_users:\n  oncall: '{hashed}'\n")
    exporter = await start_exporter(postgres_dsn=UNREACHABLE, web_config_file=str(web))
    now = time.time()
    exporter.incidents.after_poll([chain(now - 7200)], now=now - 7200)  # ended long ago
    exporter.incidents.after_poll([chain(now - 60, target="b")], now=now - 60)  # ongoing
    env = {"PREFECT_PG_EXPORTER_LISTEN_ADDRESS": f"127.0.0.1:{exporter.port}",
           "PREFECT_PG_EXPORTER_WEB_CONFIG_FILE": str(web)}
    done = await asyncio.to_thread(doctor, "--since", "1h", **env)
    assert "asks for credentials" in done.stdout and "~/.netrc" in done.stdout
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login oncall password doctor-pw\n")
    netrc.chmod(0o600)
    done = await asyncio.to_thread(doctor, "--since", "1h", "--format", "json",
                                   NETRC=str(netrc), **env)
    report = json.loads(done.stdout)
    assert done.returncode == report["exit_code"] == 1  # the present decides
    # the one of 2 h ago is left out (the running poller may have ended "b" meanwhile: its
    # target is not one the exporter reads)
    assert [i["target"] for i in report["incidents"]] == ["b"]
    assert report["incidents"][0]["evidence"]["statement"] == HOLDER_SQL
    done = await asyncio.to_thread(doctor, "--since", "3h", NETRC=str(netrc), **env)
    assert "Recent incidents (last 3.0h, from the exporter at http://127.0.0.1:" in done.stdout
    assert done.stdout.count("lock_chain") == 2 and "when: " in done.stdout
