"""Incidents across restarts of the exporter's process (PREFECT_PG_EXPORTER_STATE_DIR), against
the real lab PostgreSQL: a lock chain going on while the exporter restarts keeps its id and its
start, one that ended before is still listed (/incidents, /, `doctor --since`), one that ends
while the exporter is down (killed) is ended where it was last seen, and ids never repeat."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from lab import incidents
from lab.postgres import LabPostgres
from tests.exporter_process import ExporterProcess
from tests.helpers import eventually

pytestmark = pytest.mark.lab

TABLE = "scratch.restart_rows"
INTERVAL = "1"  # the coalescing window is four of them: 4 s (1 s is the floor)


def _exporter(env: dict[str, str], tmp_path: Path) -> ExporterProcess:
    return ExporterProcess(tmp_path, {"PREFECT_PG_EXPORTER_POLL_INTERVAL_SECONDS": INTERVAL,
                                      "PREFECT_PG_EXPORTER_POLL_TIMEOUT_SECONDS": INTERVAL,
                                      **env})


async def start(exporter: ExporterProcess) -> None:
    """Ready: every source polled once, its incidents judged."""
    await asyncio.to_thread(exporter.start, "/readyz")


async def stop(exporter: ExporterProcess, sig: int = signal.SIGTERM) -> None:
    status = await asyncio.to_thread(exporter.stop, sig)
    if sig == signal.SIGTERM:
        assert status == 0, exporter.log()


async def get(exporter: ExporterProcess, path: str) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.get(f"{exporter.url}{path}", timeout=5)


async def listed(exporter: ExporterProcess) -> list[dict[str, Any]]:
    response = await get(exporter, "/incidents")
    response.raise_for_status()
    return list(response.json()["incidents"])


async def incident(exporter: ExporterProcess, match: Callable[[dict[str, Any]], bool],
                   what: str) -> dict[str, Any]:
    """The one incident that matches, once it does."""
    found: list[dict[str, Any]] = []

    async def there() -> bool:
        found[:] = [i for i in await listed(exporter) if match(i)]
        return len(found) == 1

    await eventually(there, 30, what)
    return found[0]


def of_holder(pid: int, status: str) -> Callable[[dict[str, Any]], bool]:
    return lambda i: (i["kind"] == "lock_chain" and i["evidence"].get("pid") == pid
                      and i["status"] == status)


def seconds(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


async def test_incidents_survive_restarts_of_the_exporter_process(
        postgres: LabPostgres, tmp_path: Path) -> None:
    exporter = _exporter({"PREFECT_PG_EXPORTER_POSTGRES_DSN": postgres.monitor_dsn(),
                          "PREFECT_PG_EXPORTER_STATE_DIR": str(tmp_path / "state")}, tmp_path)
    await start(exporter)
    try:
        # one incident that begins and ends before the restart
        async with incidents.lock_chain(postgres, table=TABLE, app="before") as chain:
            await incident(exporter, of_holder(chain.holder_pid, "active"), "the first begun")
        ended = await incident(exporter, of_holder(chain.holder_pid, "ended"),
                                        "the first ended")
        assert ended["end_reason"] == "resolved"

        # one going on across a restart: the same id, the same start, no second incident
        async with incidents.lock_chain(postgres, table=TABLE, app="across") as chain:
            ongoing = await incident(exporter, of_holder(chain.holder_pid, "active"),
                                              "the second begun")
            assert ongoing["id"] > ended["id"]
            await stop(exporter)
            restarted_at = time.time()
            await start(exporter)
            resumed = await incident(exporter,
                lambda i: (of_holder(chain.holder_pid, "active")(i)
                           and seconds(i["last_seen_at"]) >= int(restarted_at)),
                "the second seen again after the restart")
            assert (resumed["id"], resumed["began_at"]) == (ongoing["id"], ongoing["began_at"])
            assert seconds(resumed["began_at"]) < restarted_at
            chains = [i for i in await listed(exporter) if i["kind"] == "lock_chain"]
            assert [i["id"] for i in chains] == [ongoing["id"], ended["id"]]
            assert chains[1] == ended  # the ended one, as it was
            # on the landing page and in doctor --since, from the new process
            page = (await get(exporter, "/")).text
            assert ended["title"] in page and ongoing["title"] in page
            doctor = await asyncio.to_thread(
                subprocess.run, [sys.executable, "-m", "exporter", "doctor", "--since", "1h",
                                 "--format", "json"],
                capture_output=True, text=True, timeout=60, env=exporter.env)
            recent = [i for i in json.loads(doctor.stdout)["incidents"]
                      if i["kind"] == "lock_chain"]
            assert [(i["id"], i["began_at"]) for i in recent] == [
                (ongoing["id"], ongoing["began_at"]), (ended["id"], ended["began_at"])]

            # killed (no clean stop) while it goes on; it ends while the exporter is down
            await stop(exporter, signal.SIGKILL)
            killed_at = time.time()
        await start(exporter)
        gone = await incident(exporter, lambda i: i["id"] == ongoing["id"], "the second")
        assert gone["status"] == "ended" and gone["end_reason"] == "not seen after restart"
        assert gone["began_at"] == ongoing["began_at"]
        # ended where it was last seen, before the kill: not stretched over the downtime
        assert seconds(resumed["last_seen_at"]) <= seconds(gone["ended_at"]) <= killed_at

        # a new incident: an id never used before
        async with incidents.lock_chain(postgres, table=TABLE, app="after") as chain:
            new = await incident(exporter, of_holder(chain.holder_pid, "active"), "the third")
        assert new["id"] > ongoing["id"]
    finally:
        if exporter.proc is not None:
            await stop(exporter)
    assert '"incidents restored"' in exporter.log()
    assert "incident store" not in exporter.log()  # no warning: the store was usable
