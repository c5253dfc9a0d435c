"""Incidents across restarts of the exporter's process (PREFECT_PG_EXPORTER_STATE_DIR), against
the real lab PostgreSQL: a lock chain going on while the exporter restarts keeps its id and its
start, one that ended before is still listed (/incidents, /, `doctor --since`), one that ends
while the exporter is down (killed) is ended where it was last seen, and ids never repeat."""

from __future__ import annotations

import asyncio
import json
import os
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
from lab.common import free_port
from lab.postgres import LabPostgres
from tests.helpers import eventually

pytestmark = pytest.mark.lab

TABLE = "scratch.restart_rows"
INTERVAL = "1"  # the coalescing window is four of them: 4 s (1 s is the floor)


class ExporterProcess:
    """`python -m exporter` on a port of its own, started and stopped (or killed) at will."""

    def __init__(self, env: dict[str, str]) -> None:
        self.port = free_port()
        self.env = {"PATH": os.environ["PATH"],
                    "PREFECT_PG_EXPORTER_LISTEN_ADDRESS": f"127.0.0.1:{self.port}",
                    "PREFECT_PG_EXPORTER_POLL_INTERVAL_SECONDS": INTERVAL,
                    "PREFECT_PG_EXPORTER_POLL_TIMEOUT_SECONDS": INTERVAL,
                    "PREFECT_PG_EXPORTER_LOG_FORMAT": "json", **env}
        self.proc: subprocess.Popen[str] | None = None
        self.logs = ""

    async def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "exporter"], text=True,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     env=self.env)

        async def ready() -> bool:  # ready: every source polled once, its incidents judged
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"the exporter exited {self.proc.returncode}: "
                                   f"{self.proc.communicate()[1][-2000:]}")
            try:
                return (await self.get("/readyz")).status_code == 200
            except httpx.TransportError:
                return False

        await eventually(ready, 30, "the exporter ready")

    async def stop(self, sig: int = signal.SIGTERM) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        _, stderr = await asyncio.to_thread(self.proc.communicate, timeout=15)
        self.logs += stderr
        if sig == signal.SIGTERM:
            assert self.proc.returncode == 0, stderr
        self.proc = None

    async def get(self, path: str) -> httpx.Response:
        async with httpx.AsyncClient() as client:
            return await client.get(f"http://127.0.0.1:{self.port}{path}", timeout=5)

    async def incidents(self) -> list[dict[str, Any]]:
        response = await self.get("/incidents")
        response.raise_for_status()
        return list(response.json()["incidents"])

    async def incident(self, match: Callable[[dict[str, Any]], bool], what: str
                       ) -> dict[str, Any]:
        """The one incident that matches, once it does."""
        found: list[dict[str, Any]] = []

        async def there() -> bool:
            found[:] = [i for i in await self.incidents() if match(i)]
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
    exporter = ExporterProcess({"PREFECT_PG_EXPORTER_POSTGRES_DSN": postgres.monitor_dsn(),
                                "PREFECT_PG_EXPORTER_STATE_DIR": str(tmp_path / "state")})
    await exporter.start()
    try:
        # one incident that begins and ends before the restart
        async with incidents.lock_chain(postgres, table=TABLE, app="before") as chain:
            await exporter.incident(of_holder(chain.holder_pid, "active"), "the first begun")
        ended = await exporter.incident(of_holder(chain.holder_pid, "ended"),
                                        "the first ended")
        assert ended["end_reason"] == "resolved"

        # one going on across a restart: the same id, the same start, no second incident
        async with incidents.lock_chain(postgres, table=TABLE, app="across") as chain:
            ongoing = await exporter.incident(of_holder(chain.holder_pid, "active"),
                                              "the second begun")
            assert ongoing["id"] > ended["id"]
            await exporter.stop()
            restarted_at = time.time()
            await exporter.start()
            resumed = await exporter.incident(
                lambda i: (of_holder(chain.holder_pid, "active")(i)
                           and seconds(i["last_seen_at"]) >= int(restarted_at)),
                "the second seen again after the restart")
            assert (resumed["id"], resumed["began_at"]) == (ongoing["id"], ongoing["began_at"])
            assert seconds(resumed["began_at"]) < restarted_at
            chains = [i for i in await exporter.incidents() if i["kind"] == "lock_chain"]
            assert [i["id"] for i in chains] == [ongoing["id"], ended["id"]]
            assert chains[1] == ended  # the ended one, as it was
            # on the landing page and in doctor --since, from the new process
            page = (await exporter.get("/")).text
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
            await exporter.stop(signal.SIGKILL)
            killed_at = time.time()
        await exporter.start()
        gone = await exporter.incident(lambda i: i["id"] == ongoing["id"], "the second")
        assert gone["status"] == "ended" and gone["end_reason"] == "not seen after restart"
        assert gone["began_at"] == ongoing["began_at"]
        # ended where it was last seen, before the kill: not stretched over the downtime
        assert seconds(resumed["last_seen_at"]) <= seconds(gone["ended_at"]) <= killed_at

        # a new incident: an id never used before
        async with incidents.lock_chain(postgres, table=TABLE, app="after") as chain:
            new = await exporter.incident(of_holder(chain.holder_pid, "active"), "the third")
        assert new["id"] > ongoing["id"]
    finally:
        if exporter.proc is not None:
            await exporter.stop()
    assert '"incidents restored"' in exporter.logs
    assert "incident store" not in exporter.logs  # no warning: the store was usable
