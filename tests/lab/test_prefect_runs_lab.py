"""Runs that never finish (issue #15), proven with a real process worker running real flows.

One Prefect 3.8.8 server of this module's own (its counts are exact: other tests create runs on
the session server), one work pool with three queues:

- `default`, polled by the surviving worker: a flow that completes (taking and returning a slot
  of a global limit), one that raises (FAILED), one whose process exits hard (CRASHED), one that
  takes slots of another global limit without a lease and exits hard (CRASHED, the slots leaked),
  and one that hangs (RUNNING, heartbeating);
- `doomed`, polled by a second worker that is SIGKILLed with its flow-run process once the run
  there sent a heartbeat: that run stays RUNNING with nothing behind it, a zombie;
- `idle`, polled by nobody, holding no deployment (an unused queue: no finding).

Flow heartbeats every 30 s (Prefect's minimum), the exporter's timeout 45 s: the zombie is
counted about 45 s after its last heartbeat, while the hanging run, heartbeating, never is. The
tests read one scenario set up once; the zombie's, which has to wait, comes last so that the
others run while it ripens (about 100 s for the module).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from exporter.finding import Finding, age
from lab.postgres import LabPostgres
from lab.prefect import LabPrefect
from lab.prefect_api import PrefectAPI
from lab.worker import LabWorker, deploy, running
from tests.helpers import Scrape, StartExporter, eventually, scrape, wait_for

pytestmark = pytest.mark.lab

DATABASE = "prefect_runs"
POOL = "runs-lab"
HEARTBEAT_SECONDS = 30  # the flows' heartbeat: Prefect refuses less
HEARTBEAT_TIMEOUT = 45  # the exporter's: a heartbeat, its persistence, a poll, and room
STUCK_AFTER = 10
LEAK_AFTER = 12  # concurrency_slots_leak_seconds: longer than a poll may take
QUEUE_TIMEOUT = 15  # the server's work_queue_last_polled_timeout_seconds
HANG_SECONDS = 600  # a hanging run orphaned by a killed test run ends by itself
LEAKY, RELEASED = "runs-lab-leaky", "runs-lab-released"
LEAKED_SLOTS = 3
# slower than PREFECT_POLL: room for a poll while flow-run processes start on a 2-core machine
POLL = {"poll_interval_seconds": "4", "poll_timeout_seconds": "4"}

SERVER_ENV = {
    # the foreman marks queues NOT_READY (default: after 60 s, checked every 15 s)
    "PREFECT_SERVER_SERVICES_FOREMAN_LOOP_SECONDS": "2",
    "PREFECT_SERVER_SERVICES_FOREMAN_WORK_QUEUE_LAST_POLLED_TIMEOUT_SECONDS": str(QUEUE_TIMEOUT),
    "PREFECT_SERVER_SERVICES_FOREMAN_DEPLOYMENT_LAST_POLLED_TIMEOUT_SECONDS": str(QUEUE_TIMEOUT),
    # heartbeats are in the database within a second (default: up to 5 s)
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL": "1",
}


@dataclass(frozen=True)
class Scenario:
    flow: str  # a function of lab/flows/scenarios.py
    queue: str
    parameters: dict[str, Any]
    state_type: str  # where Prefect must have it once it has run


SCENARIOS = {
    "completes": Scenario("completes", "default", {"limit": RELEASED}, "COMPLETED"),
    "fails": Scenario("fails", "default", {}, "FAILED"),
    "crashes": Scenario("crashes", "default", {}, "CRASHED"),
    "leaks": Scenario("leaks", "default", {"limit": LEAKY, "slots": LEAKED_SLOTS}, "CRASHED"),
    "hangs": Scenario("hangs", "default", {"seconds": HANG_SECONDS}, "RUNNING"),
    "zombie": Scenario("hangs", "doomed", {"seconds": HANG_SECONDS}, "RUNNING"),
}
ENDED = {"COMPLETED": 1, "FAILED": 1, "CRASHED": 2, "CANCELLED": 0}


@dataclass(frozen=True)
class RunsLab:
    api_url: str
    runs: dict[str, str]  # scenario -> flow run id
    killed_run_pid: int  # the zombie's flow-run process, SIGKILLed with its worker


async def _set_up(api_url: str) -> dict[str, str]:
    api = PrefectAPI(api_url)
    try:
        await api.work_pool(POOL)
        for queue in ("doomed", "idle"):
            await api.work_queue(POOL, queue)
        await api.global_concurrency_limit(LEAKY, LEAKED_SLOTS)
        await api.global_concurrency_limit(RELEASED, 1)
        runs = {}
        for name, scenario in SCENARIOS.items():
            deployment = await deploy(api, POOL, scenario.flow, name=name, queue=scenario.queue)
            runs[name] = await api.run_now(deployment, scenario.parameters)
        return runs
    finally:
        await api.close()


async def _heartbeating(api: PrefectAPI, run_id: str, worker: LabWorker) -> None:
    """Until the run is RUNNING and one of its heartbeats is in the database."""
    async def beat() -> bool:
        assert worker.alive(), f"worker {worker.name} exited: {worker.tail()}"
        run = await api.flow_run(run_id)
        return run["state_type"] == "RUNNING" and bool(await api.heartbeats(run_id))

    await eventually(beat, 120, f"flow run {run_id} RUNNING and heartbeating")


async def _settled(api: PrefectAPI, runs: dict[str, str]) -> None:
    """Until every run is where its flow puts it (Prefect's own account)."""
    async def settled() -> bool:
        states = {name: (await api.flow_run(run))["state_type"] for name, run in runs.items()}
        assert states == {n: s.state_type for n, s in SCENARIOS.items()}, states
        return True

    await eventually(settled, 90, "every run in its expected state")


async def _make_zombie(api_url: str, runs: dict[str, str], doomed: LabWorker) -> int:
    """Kills the doomed worker and its flow run once that run heartbeats; the run's pid."""
    api = PrefectAPI(api_url)
    try:
        await _heartbeating(api, runs["zombie"], doomed)
        engines = doomed.flow_run_pids()
        assert len(engines) == 1, f"the doomed worker runs {engines}"
        killed = doomed.kill()
        assert engines[0] in killed and not running(engines[0])
        await _settled(api, runs)
        return engines[0]
    finally:
        await api.close()


@pytest.fixture(scope="module")
def runs_lab(lab_dir: Path, postgres: LabPostgres) -> Iterator[RunsLab]:
    """The scenario, settled: the zombie made, every other run where its flow puts it."""
    postgres.create_database(DATABASE)
    server = LabPrefect(lab_dir / "prefect-runs", postgres, database=DATABASE,
                        extra_env=SERVER_ENV)
    survivor, doomed = (LabWorker(lab_dir / f"worker-{queue}", server.api_url, POOL, name=queue,
                                  queues=(queue,), heartbeat_seconds=HEARTBEAT_SECONDS)
                        for queue in ("default", "doomed"))
    try:
        started = time.monotonic()
        server.start()
        ready = time.monotonic()
        runs = asyncio.run(_set_up(server.api_url))
        survivor.start()
        doomed.start()
        killed_run_pid = asyncio.run(_make_zombie(server.api_url, runs, doomed))
        print(f"\nruns lab: server ready in {ready - started:.0f}s, a zombie made and every "
              f"run settled {time.monotonic() - ready:.0f}s later")
        yield RunsLab(server.api_url, runs, killed_run_pid)
    finally:
        survivor.stop()
        doomed.stop()
        server.stop()


def _findings(exporter_findings: list[Finding], check: str) -> list[Finding]:
    return [f for f in exporter_findings if f.check == check]


def queue_status(s: Scrape, queue: str) -> str:
    """The status a queue of the pool has (its series at 1)."""
    return "".join(st for st in ("READY", "NOT_READY", "PAUSED") if s.find(
        "prefect_work_queue_status", work_pool=POOL, work_queue=queue, status=st) == 1)


def doctor(api_url: str, *sets: str) -> dict[str, Any]:
    """`prefect-pg-exporter doctor --format json` against the lab's server, its settings from the
    environment as the README gives them."""
    args = [a for s in sets for a in ("--set", s)]
    done = subprocess.run(
        [sys.executable, "-m", "exporter", "doctor", "--format", "json", *args],
        capture_output=True, text=True, timeout=60,
        env={"PATH": os.environ["PATH"], "PREFECT_PG_EXPORTER_POLL_TIMEOUT_SECONDS": "10",
             "PREFECT_PG_EXPORTER_PREFECT_API_URL": api_url,
             "PREFECT_PG_EXPORTER_STUCK_RUN_SECONDS": str(STUCK_AFTER),
             "PREFECT_PG_EXPORTER_HEARTBEAT_TIMEOUT_SECONDS": str(HEARTBEAT_TIMEOUT),
             "PREFECT_PG_EXPORTER_OUTCOME_WINDOW_SECONDS": "3600"})
    report: dict[str, Any] = json.loads(done.stdout or "{}")
    assert done.returncode == report.get("exit_code"), done.stdout + done.stderr
    return report


async def test_runs_end_as_their_flows_do(runs_lab: RunsLab,
                                          start_exporter: StartExporter) -> None:
    api = PrefectAPI(runs_lab.api_url)
    try:
        # Prefect's own account first: each flow did what it was written to do
        states = {name: await api.flow_run(run) for name, run in runs_lab.runs.items()}
    finally:
        await api.close()
    assert {n: r["state_type"] for n, r in states.items()} == {
        n: s.state_type for n, s in SCENARIOS.items()}
    for name, code in (("crashes", 3), ("leaks", 4)):  # the worker saw the exit codes
        assert f"status code: {code}" in states[name]["state"]["message"]

    exporter = await start_exporter(prefect_api_url=runs_lab.api_url, **POLL)
    s = await wait_for(exporter.port, lambda s: bool(s.values("prefect_flow_runs_ended")),
                       "outcomes read", timeout=30)
    assert {t: s.value("prefect_flow_runs_ended", work_pool=POOL, state_type=t)
            for t in ENDED} == ENDED
    assert s.values("prefect_flow_runs_ended", work_pool="other") == [0, 0, 0, 0]
    # the default thresholds: 4 ended runs are under the 5 a ratio needs, and nothing has been
    # unfinished for an hour
    assert not [f for f in exporter.findings
                if f.check in ("failed_runs", "crashed_runs", "stuck_runs")]
    assert s.value("prefect_flow_runs_stuck", work_pool=POOL, state_type="RUNNING") == 0
    assert s.value("prefect_flow_run_last_start_age_seconds") < 600

    # with a minimum of 4 and FAILED above 20%: 1 of 4 FAILED, 2 of 4 CRASHED (default 10%)
    report = await asyncio.to_thread(doctor, runs_lab.api_url, "ended_runs_minimum=4",
                                     "failed_runs_warning_ratio=0.2")
    by_check = {f["check"]: f for f in report["findings"]}
    evidence = ["0 CANCELLED, 1 COMPLETED, 2 CRASHED, 1 FAILED"]
    window = age(3600)
    assert by_check["failed_runs"]["title"] == (
        f"work pool {POOL}: 25% of the flow runs that ended in the last {window} FAILED")
    assert by_check["failed_runs"]["evidence"] == evidence
    assert by_check["crashed_runs"]["title"] == (
        f"work pool {POOL}: 50% of the flow runs that ended in the last {window} CRASHED")
    assert report["exit_code"] == 1


async def test_a_hanging_run_and_a_dead_one_are_stuck(runs_lab: RunsLab,
                                                     start_exporter: StartExporter) -> None:
    exporter = await start_exporter(prefect_api_url=runs_lab.api_url,
                                    stuck_run_seconds=str(STUCK_AFTER), **POLL)
    s = await wait_for(exporter.port, lambda s: s.find(
        "prefect_flow_runs_stuck", work_pool=POOL, state_type="RUNNING") == 2,
        "the hanging and the zombie run stuck RUNNING", timeout=30)
    for state_type in ("PENDING", "CANCELLING", "PAUSED"):
        assert s.value("prefect_flow_runs_stuck", work_pool=POOL, state_type=state_type) == 0
    assert s.values("prefect_flow_runs_stuck", work_pool="other") == [0, 0, 0, 0]
    assert s.value("prefect_flow_run_oldest_state_age_seconds", work_pool=POOL,
                   state_type="RUNNING") > STUCK_AFTER
    assert s.value("prefect_flow_runs_stuck_sample_complete") == 1
    assert s.value("prefect_flow_runs", state_type="RUNNING") == 2
    stuck = _findings(exporter.findings, "stuck_runs")
    assert [f.title for f in stuck] == [
        f"work pool {POOL}: 2 flow run(s) RUNNING for over {age(STUCK_AFTER)}"]


async def test_slots_taken_by_a_crashed_run_are_leaked(runs_lab: RunsLab,
                                                       start_exporter: StartExporter) -> None:
    api = PrefectAPI(runs_lab.api_url)
    try:
        leaky = await api.read_global_concurrency_limit(LEAKY)
        released = await api.read_global_concurrency_limit(RELEASED)
        leaker = await api.flow_run(runs_lab.runs["leaks"])
    finally:
        await api.close()
    # Prefect's account: the run that took the slots is over, the slots are still taken
    assert leaker["state_type"] == "CRASHED"
    assert (leaky["active_slots"], released["active_slots"]) == (LEAKED_SLOTS, 0)

    exporter = await start_exporter(prefect_api_url=runs_lab.api_url, **POLL,
                                    thresholds=[f"concurrency_slots_leak_seconds={LEAK_AFTER}"])
    full_for: list[tuple[float, bool]] = []

    def leak_found(s: Scrape) -> bool:
        saturated = s.find("prefect_concurrency_limit_saturated_seconds", limit=LEAKY)
        found = s.find("prefect_pg_exporter_finding", check="concurrency_slots_leaked") == 1
        if saturated is not None:
            full_for.append((saturated, found))
        return found

    s = await wait_for(exporter.port, leak_found, "the leak found", timeout=LEAK_AFTER + 30)
    # seen full from the first poll on, found only once full for longer than the threshold
    assert not full_for[0][1] and full_for[0][0] < LEAK_AFTER, full_for
    assert all(found == (seconds > LEAK_AFTER) for seconds, found in full_for), full_for
    values = {m: (s.value(m, limit=LEAKY), s.value(m, limit=RELEASED)) for m in (
        "prefect_concurrency_limit_slots", "prefect_concurrency_limit_active_slots",
        "prefect_concurrency_limit_holders_running")}
    # the holders of a global limit are unnamed: every PENDING/RUNNING flow run and RUNNING
    # task run could be one, here the hanging run and the zombie
    assert values == {"prefect_concurrency_limit_slots": (LEAKED_SLOTS, 1),
                      "prefect_concurrency_limit_active_slots": (LEAKED_SLOTS, 0),
                      "prefect_concurrency_limit_holders_running": (2, 2)}
    assert s.value("prefect_concurrency_limit_saturated_seconds", limit=LEAKY) > LEAK_AFTER
    assert s.value("prefect_concurrency_limit_saturated_seconds", limit=RELEASED) == 0
    [leak] = _findings(exporter.findings, "concurrency_slots_leaked")
    assert leak.title.startswith(f"concurrency limit {LEAKY} has been full for ")
    assert leak.title.endswith(" with 2 possible holder(s) running")
    assert leak.evidence == (f"{LEAKED_SLOTS} of {LEAKED_SLOTS} slots taken; PENDING/RUNNING "
                             "flow runs and RUNNING task runs, all of them: 2",)


async def test_queues_show_who_polls_them(runs_lab: RunsLab,
                                         start_exporter: StartExporter) -> None:
    exporter = await start_exporter(prefect_api_url=runs_lab.api_url, **POLL)
    # the killed worker's queue turns NOT_READY once it has not been polled for QUEUE_TIMEOUT
    s = await wait_for(exporter.port, lambda s: queue_status(s, "doomed") == "NOT_READY",
                       "the doomed queue NOT_READY", timeout=QUEUE_TIMEOUT + 30)
    assert (queue_status(s, "default"), queue_status(s, "idle")) == ("READY", "NOT_READY")
    polled = {q: s.find("prefect_work_queue_last_polled_age_seconds", work_pool=POOL,
                        work_queue=q) for q in ("default", "doomed", "idle")}
    assert polled["default"] is not None and polled["default"] < 10  # polled every 2 s
    assert polled["doomed"] is not None and polled["doomed"] > QUEUE_TIMEOUT
    assert polled["idle"] is None  # never polled
    # 5 deployments in the polled queue, the zombie's in the doomed one
    assert {st: s.value("prefect_deployments", status=st)
            for st in ("READY", "NOT_READY", "UNKNOWN")} == {"READY": 5, "NOT_READY": 1,
                                                             "UNKNOWN": 0}
    # per unpolled queue, its deployments: the doomed queue strands one, the idle one none
    assert {q: s.find("prefect_work_queue_unpolled_deployments", work_pool=POOL, work_queue=q)
            for q in ("default", "doomed", "idle")} == {"default": None, "doomed": 1, "idle": 0}
    # so only the doomed queue is a finding: an unused queue strands nothing
    (unpolled,) = _findings(exporter.findings, "work_queue_unpolled")
    assert unpolled.title == f"no worker polls work queue doomed of pool {POOL}"
    assert "the queue was last polled" in unpolled.evidence[0]
    assert unpolled.evidence[0].endswith("; 1 deployment(s) in it are NOT_READY")


async def test_a_killed_worker_leaves_a_zombie_a_hanging_run_is_not(
        runs_lab: RunsLab, start_exporter: StartExporter) -> None:
    api = PrefectAPI(runs_lab.api_url)
    try:
        last_beat = (await api.heartbeats(runs_lab.runs["zombie"]))[-1].timestamp()
        hang = await api.flow_run(runs_lab.runs["hangs"])
        hang_started = datetime.fromisoformat(hang["start_time"]).timestamp()
        exporter = await start_exporter(prefect_api_url=runs_lab.api_url, **POLL,
                                        heartbeat_timeout_seconds=str(HEARTBEAT_TIMEOUT))
        # watch until the zombie is due and the hanging run's first heartbeat is older than
        # the timeout: by then only its later ones keep it from being counted
        due = last_beat + HEARTBEAT_TIMEOUT
        watch_until = max(due, hang_started + HEARTBEAT_TIMEOUT + 5)
        seen: list[tuple[float, float]] = []
        last: list[Scrape] = []

        async def zombie_counted_past_watch() -> bool:  # or two counted: asserted below
            last[:] = [s := await scrape(exporter.port)]
            value = s.find("prefect_flow_runs_without_heartbeat", work_pool=POOL)
            if value is None:
                return False
            seen.append((time.time(), value))
            return value > 1 or (value == 1 and time.time() > watch_until)

        await eventually(zombie_counted_past_watch, (watch_until - time.time()) + 30,
                         "the zombie counted, past the watch", interval=1)
        assert seen[-1][1] <= 1, f"the heartbeating run counted as a zombie: {seen}"
        s = last[0]
        hang_beats = await api.heartbeats(runs_lab.runs["hangs"])
        zombie = await api.flow_run(runs_lab.runs["zombie"])
    finally:
        await api.close()

    assert all(v == 0 for t, v in seen if t < due - 1), (due, seen)  # nor the zombie early
    first = min(t for t, v in seen if v == 1)
    assert first < due + 15, (due, seen)  # a poll or two after it was due
    # Prefect still says both run; only their heartbeats tell them apart
    assert zombie["state_type"] == "RUNNING" and not running(runs_lab.killed_run_pid)
    assert s.value("prefect_flow_runs", state_type="RUNNING") == 2
    assert len(hang_beats) >= 2 and time.time() - hang_beats[-1].timestamp() < HEARTBEAT_TIMEOUT
    assert s.value("prefect_flow_runs_without_heartbeat", work_pool="other") == 0
    assert s.value("prefect_flow_run_heartbeats_seen") == 1
    assert s.value("prefect_pg_exporter_finding", check="zombie_runs", severity="warning") == 1
    [zombies] = _findings(exporter.findings, "zombie_runs")
    assert zombies.title == "1 RUNNING flow run(s) stopped sending heartbeats"
    assert zombies.evidence == (f"no heartbeat for over {age(HEARTBEAT_TIMEOUT)} (by work "
                                f"pool: {POOL} 1)",)
    assert not _findings(exporter.findings, "heartbeats_not_seen")
