"""Issue #28 without a server: the probe is timed outside the cap on requests in flight; a poll
that times out after it still publishes it (and nothing else of the poll); the pool-saturation
finding and where it stands in the report. tests/lab/test_prefect_pool_lab.py proves the same
against a real Prefect server whose pool is cut.

The in-memory Prefect below hangs on every endpoint but /health and /ready: a fault a real
server cannot be made to show on exactly those requests, on demand."""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from pathlib import Path

import httpx

from exporter.collector import ExporterCollector
from exporter.diagnosis import ROOT_CAUSES, SYMPTOMS, diagnose
from exporter.finding import render_text
from exporter.metricspec import MetricOptions
from exporter.pages import landing_page
from exporter.pgbouncer.snapshot import Pool
from exporter.poller import Poller, SourceState, failures, fresh_snapshots
from exporter.postgres.snapshot import BlockedSession
from exporter.prefect.client import PrefectClient
from exporter.prefect.config import PrefectAuth
from exporter.prefect.snapshot import PoolCounts, PrefectProbeSnapshot, PrefectSnapshot, WorkPool
from exporter.prefect.source import PrefectSource
from tests.factories import (
    NamedSource,
    group,
    healthy_pg,
    pgbouncer_snapshot,
    prefect_probe,
    prefect_snapshot,
    probe,
    session,
)
from tests.helpers import render

ROOT = Path(__file__).resolve().parents[2]
SATURATED = probe(ready_seconds=1.4, health_seconds=0.006)


class HangingPrefect:
    """Answers /health and /ready at once; every other request waits until released."""

    def __init__(self) -> None:
        self.released = asyncio.Event()
        self.calls: Counter[str] = Counter()

    async def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path.removeprefix("/api/")
        self.calls[path] += 1
        if path in ("health", "ready"):
            return httpx.Response(200, json=True)
        if path == "csrf-token":
            return httpx.Response(422, json={"detail": "CSRF protection is disabled."})
        await self.released.wait()
        return httpx.Response(200, json=0 if path.endswith("count") else [])


async def test_the_probe_does_not_queue_behind_the_capped_requests() -> None:
    server = HangingPrefect()
    client = PrefectClient("http://prefect:4200/api", auth=PrefectAuth(), timeout=5,
                           max_concurrency=1, transport=httpx.MockTransport(server.handle))
    try:
        held = asyncio.create_task(client.count("flow_runs", {}))  # takes the only slot
        while not server.calls["flow_runs/count"]:
            await asyncio.sleep(0.01)
        ok, seconds = await asyncio.wait_for(client.probe("ready", 2.0), 1.0)
        assert ok and seconds < 1.0
        assert client.requests["/ready"].count == 1
        server.released.set()
        assert await held == 0
    finally:
        await client.close()


async def test_a_poll_timing_out_after_the_probe_publishes_the_probe_only() -> None:
    server = HangingPrefect()
    source = PrefectSource("prefect", "http://prefect:4200/api", auth=PrefectAuth(), timeout=0.6)
    source._api._transport = httpx.MockTransport(server.handle)
    poller = Poller([source], interval=10.0, timeout=0.6)
    (state,) = poller.states
    # the last full poll, before the server got slow: Late runs in a pool nobody serves
    state.snapshot = prefect_snapshot(taken_at=0.0, pools=(
        WorkPool("a", "process", "READY", False, None, 1, 0, None),),
        pool_counts={"a": PoolCounts(5, 5, 0, 0, 1.0)})
    try:
        await poller.poll_once(state)
    finally:
        server.released.set()
        await poller.stop()
    assert not state.up and state.errors["timeout"] == 1
    snap = state.snapshot
    assert isinstance(snap, PrefectProbeSnapshot) and not isinstance(snap, PrefectSnapshot)
    assert snap.probe is not None and snap.probe.ready_ok and snap.probe.health_ok
    assert state.shown == "only what the failed poll read"
    # exported: the probe, and nothing the failed poll could not read (the old Late runs)
    shown = fresh_snapshots(poller.states, snap.taken_at, 45.0)
    assert shown == [snap]
    collector = ExporterCollector(poller.states, MetricOptions(label_top_n=20))
    collector.update(shown, diagnose(shown, failures(poller.states)))
    scrape = render(collector.collect())
    assert scrape.value("prefect_api_ready_duration_seconds") < 0.3
    assert scrape.find("prefect_late_runs", work_pool="a") is None
    assert scrape.value("prefect_api_up") == 0
    assert {f.check for f in diagnose(shown, failures(poller.states))} == {"source_down"}


def test_landing_page_says_what_a_failed_poll_left() -> None:
    states = [SourceState(NamedSource(kind, kind)) for kind in ("postgres", "prefect", "pgbouncer")]
    states[0].snapshot, states[0].up, states[0].polls = healthy_pg(), True, 3
    states[1].snapshot, states[1].polls = prefect_probe(), 3  # its last poll timed out
    states[1].last_error = "poll took longer than 5s"
    states[2].polls = 3  # down: nothing of it
    page = landing_page(states, now=10_000.0)
    rows = re.findall(r"<tr><td>(\w+)</td>.*?</tr>", page)
    assert rows == ["postgres", "prefect", "pgbouncer"]
    assert "<td>all of the last poll</td>" in page
    assert "<td>only what the failed poll read</td><td>poll took longer than 5s</td>" in page
    assert "<td>nothing</td>" in page


def test_prefect_api_pool_saturated_when_nothing_else_explains_it() -> None:
    found = diagnose([healthy_pg(), pgbouncer_snapshot(), prefect_snapshot(probe=SATURATED)])
    (first,) = [f for f in found if f.check == "prefect_api_pool_saturated"]
    assert first.title == ("Prefect's own database pool is saturated: /api/ready 1.4 s vs "
                           "/api/health 6 ms")
    assert "PgBouncer's pools (pgb) have no waiting clients" in first.evidence[1]
    assert "PostgreSQL (db) has no lock waits" in first.evidence[1]
    assert "PREFECT_SERVER_DATABASE_SQLALCHEMY_POOL_SIZE" in first.action
    assert "pool_size 5, max_overflow 10" in first.evidence[0]
    # a failed poll's probe is judged too, without the settings it did not read
    (partial,) = diagnose([prefect_probe(ready_seconds=1.4, health_seconds=0.006)])
    assert partial.check == "prefect_api_pool_saturated"
    assert "not readable in this poll" in partial.evidence[0]


def test_api_waits_on_database_when_pgbouncer_or_postgres_explain_it() -> None:
    waiting = pgbouncer_snapshot((Pool("prefect", "prefect", "transaction",
                                       {"cl_active": 5, "cl_waiting": 12, "sv_active": 5},
                                       2.5),))
    locked = healthy_pg(blocked=(BlockedSession(10, (1,), 30.0),), blockers=(session(1),))
    idle = healthy_pg(activity=(group(state="idle in transaction",
                                      max_transaction_age=400.0),))
    for other, says in ((waiting, "PgBouncer pgb: 12 client(s) wait in pool prefect/prefect"),
                        (locked, "PostgreSQL db: 1 session(s) wait on locks"),
                        (idle, "PostgreSQL db: 1 session(s) idle in transaction for over")):
        found = diagnose([other, prefect_snapshot(probe=SATURATED)])
        checks = {f.check for f in found}
        assert "prefect_api_pool_saturated" not in checks
        (explained,) = [f for f in found if f.check == "api_waits_on_database"]
        assert explained.severity == "info" and explained.evidence[0].startswith(says)


def test_health_as_slow_as_ready_is_not_the_pool() -> None:
    found = diagnose([prefect_snapshot(probe=probe(ready_seconds=0.9, health_seconds=0.5))])
    assert found == []


def test_root_causes_come_before_their_symptoms() -> None:
    """A storm of runs behind a saturated pool: the pool first, then Late runs and the
    unserved pool; a critical PgBouncer wait behind an idle holder: the holder first."""
    pools = (WorkPool("a", "process", "READY", False, None, 1, 1, 9_990.0),
             WorkPool("b", "process", "READY", False, None, 1, 0, None))
    counts = {"a": PoolCounts(40, 30, 0, 4, 9_000.0), "b": PoolCounts(5, 5, 0, 0, 9_000.0)}
    storm = prefect_snapshot(pools=pools, pool_counts=counts, probe=SATURATED,
                             totals=PoolCounts(45, 35, 0, 4, 9_000.0))
    found = diagnose([healthy_pg(), storm])
    assert found[0].check == "prefect_api_pool_saturated"
    assert {"late_runs", "work_pool_unserved"} <= {f.check for f in found[1:]}
    assert render_text(found).startswith(
        "1. [WARNING] Prefect's own database pool is saturated")

    held = healthy_pg(activity=(group(sessions=10),), blocked=(BlockedSession(10, (1,), 30.0),),
                      blockers=(session(1),))
    waiting = pgbouncer_snapshot((Pool("prefect", "prefect", "transaction",
                                       {"cl_active": 5, "cl_waiting": 12, "sv_active": 5},
                                       9.0),))
    order = [(f.check, f.severity) for f in diagnose([held, waiting])]
    assert order.index(("lock_chain", "warning")) < order.index(
        ("pgbouncer_pool_waiting", "critical"))


def test_the_causal_order_names_real_checks() -> None:
    emitted = set()
    for path in (ROOT / "exporter").rglob("*.py"):
        emitted |= set(re.findall(r'"([a-z_]+)"', path.read_text()))
    assert (ROOT_CAUSES | SYMPTOMS) - emitted == set()
